"""The user server's side of the JupyterLab panel: thin handlers that forward the panel's calls to
the mlp service with the server's own hub token, so the browser never holds a service token.

Routes (under the server's base URL):

  GET  mlp/panel/config          what the panel needs to start: the service URL, the user
  *    mlp/panel/api/<path>      GET/POST/PUT/DELETE forwarded to <service>/api/v1/<path>

The service's answers (status, JSON body, error bodies `{"error", "message", "field"}`) come
back unchanged; log following (`jobs/<id>/logs?follow=true`, server-sent events) is streamed.
When the service cannot be reached the panel gets 502 `{"error": "unreachable", ...}` naming the
URL and the cause; when the server has no service URL or token, 503 `{"error": "not_configured"}`.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import httpclient, web
from traitlets import Float, Unicode, default
from traitlets.config import Configurable

__all__ = ["MLPPanelConfig", "_jupyter_server_extension_points", "_load_jupyter_server_extension"]

FORWARDED_METHODS = ("GET", "POST", "PUT", "DELETE")


class MLPPanelConfig(Configurable):
    """Where the panel's handlers find the mlp service (`c.MLPPanelConfig.*` in the server's
    config; the platform's spawner provides both through the environment)."""

    service_url = Unicode(
        config=True,
        help="Base URL of the mlp service, e.g. http://127.0.0.1:10101/services/mlp/. "
        "Default: $MLP_URL, which the platform's spawner sets.",
    )

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("MLP_URL", "")

    token = Unicode(
        config=True,
        help="Hub API token sent to the mlp service. Default: $MLP_TOKEN, else the server's own "
        "$JUPYTERHUB_API_TOKEN (scoped to the mlp service by the hub).",
    )

    @default("token")
    def _default_token(self) -> str:
        return os.environ.get("MLP_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")

    request_timeout = Float(
        30.0,
        config=True,
        help="Seconds a forwarded call may take before the panel is told the service timed out.",
    )

    follow_timeout = Float(
        24 * 3600.0,
        config=True,
        help="Longest a followed log stream (server-sent events) stays open, in seconds.",
    )

    @property
    def api_url(self) -> str:
        return self.service_url.rstrip("/") + "/api/v1/"


def _error(status: int, error: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": error, "message": message}).encode()


class _PanelHandler(APIHandler):
    @property
    def panel(self) -> MLPPanelConfig:
        return self.settings["mlp_panel_config"]

    def not_configured(self) -> str | None:
        if not self.panel.service_url:
            return (
                "this notebook server does not know the mlp service: $MLP_URL is not set "
                "(start the server from the platform's hub, or set c.MLPPanelConfig.service_url)"
            )
        if not self.panel.token:
            return (
                "this notebook server has no token for the mlp service: $JUPYTERHUB_API_TOKEN is "
                "not set (start the server from the platform's hub, or set "
                "c.MLPPanelConfig.token)"
            )
        return None


class ConfigHandler(_PanelHandler):
    @web.authenticated
    async def get(self) -> None:
        problem = self.not_configured()
        self.finish(
            {
                "service_url": self.panel.service_url,
                "configured": problem is None,
                "problem": problem,
                "user": self.current_user.username if self.current_user else None,
            }
        )


class ForwardHandler(_PanelHandler):
    """Forwards one call to the service's REST API; its answer comes back as it is."""

    _closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    @web.authenticated
    async def get(self, path: str) -> None:
        await self.forward(path)

    @web.authenticated
    async def post(self, path: str) -> None:
        await self.forward(path)

    @web.authenticated
    async def put(self, path: str) -> None:
        await self.forward(path)

    @web.authenticated
    async def delete(self, path: str) -> None:
        await self.forward(path)

    def target(self, path: str) -> str:
        url = self.panel.api_url + quote(path, safe="/,*")
        if self.request.query:
            url += "?" + self.request.query
        return url

    def is_stream(self, path: str) -> bool:
        follow = self.get_argument("follow", "false").lower() in ("1", "true", "yes")
        return self.request.method == "GET" and path.rstrip("/").endswith("/logs") and follow

    async def forward(self, path: str) -> None:
        problem = self.not_configured()
        if problem:
            return self.answer(*_error(503, "not_configured", problem))
        method = self.request.method or "GET"
        headers = {
            "Authorization": f"token {self.panel.token}",
            "Accept": self.request.headers.get("Accept", "application/json"),
        }
        body: bytes | None = None
        if method in ("POST", "PUT"):
            body = self.request.body or b"{}"
            headers["Content-Type"] = "application/json"
        stream = self.is_stream(path)
        request = httpclient.HTTPRequest(
            self.target(path),
            method=method,
            headers=headers,
            body=body,
            allow_nonstandard_methods=True,
            connect_timeout=min(self.panel.request_timeout, 10.0),
            request_timeout=self.panel.follow_timeout if stream else self.panel.request_timeout,
            streaming_callback=self._relay if stream else None,
            header_callback=self._stream_headers if stream else None,
        )
        self._stream_started = False
        client = httpclient.AsyncHTTPClient()
        try:
            response = await client.fetch(request, raise_error=False)
        except (OSError, httpclient.HTTPClientError) as e:
            return self.unreachable(e)
        except _ClientGone:
            return None
        if response.code == 599:  # tornado's "no HTTP answer": refused, reset or timed out
            return self.unreachable(response.error)
        if stream and self._stream_started:
            if not self._closed:
                self.finish()
            return None
        content_type = response.headers.get("Content-Type", "application/json")
        body = getattr(self, "_error_body", b"") if stream else response.body
        return self.answer(response.code, body or b"", content_type)

    def unreachable(self, e: BaseException | None) -> None:
        url = self.panel.service_url
        if isinstance(e, httpclient.HTTPClientError) and e.code == 599 and "imeout" in str(e):
            return self.answer(
                *_error(
                    504,
                    "timeout",
                    f"the mlp service at {url} did not answer within "
                    f"{self.panel.request_timeout:g} s; it may be overloaded or restarting",
                )
            )
        return self.answer(
            *_error(
                502,
                "unreachable",
                f"cannot reach the mlp service at {url} ({e}); it may be restarting. "
                "The panel retries by itself",
            )
        )

    def answer(
        self, status: int, body: bytes, content_type: str = "application/json"
    ) -> None:
        if self._closed:
            return
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def _stream_headers(self, line: str) -> None:
        # The status line comes first: only a 200 is streamed; errors come back whole.
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            self._stream_status = int(parts[1]) if len(parts) > 1 else 0

    def _relay(self, chunk: bytes) -> None:
        if self._closed:
            raise _ClientGone()  # ends the upstream request too
        if getattr(self, "_stream_status", 200) != 200:
            self._error_body = getattr(self, "_error_body", b"") + chunk
            return
        if not self._stream_started:
            self._stream_started = True
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Accel-Buffering", "no")
        self.write(chunk)
        self.flush()


class _ClientGone(Exception):
    """The browser closed a followed stream."""


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "mlp_magics.serverext"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    config = MLPPanelConfig(parent=serverapp)
    web_app = serverapp.web_app
    base = url_path_join(web_app.settings["base_url"], "mlp", "panel")
    web_app.settings["mlp_panel_config"] = config
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "config"), ConfigHandler),
            (url_path_join(base, "api", "(.*)"), ForwardHandler),
        ],
    )
    serverapp.log.info(
        "mlp panel: forwarding %s to %s", url_path_join(base, "api"), config.api_url or "(unset)"
    )
