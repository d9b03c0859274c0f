"""The hub service `models`: `/services/models/<name>/...` through JupyterHub's proxy.

The mlp service listens for it on its own loopback port (`MLP_MODELS_PORT`); hub_config
registers the service with that URL, so the proxy routes `/services/models/` here. Each request
is authenticated with JupyterHub (`HubAuth`, a hub API token in the `Authorization` header,
cached) and needs `access:services!service=models` (every user has it); then the per-model
permission: the model's owner, members of the hub group it is shared with, and holders of the
admin scope or of `custom:mlp-models:query` (all models) may query it; anyone else gets 403.
The rest of the path goes unchanged to a replica of the model's live deployment (round robin):
`/v1/models/<name>:predict`, `/v2/models/<name>/infer`, `/v2/models/<name>` (metadata) and
`/v2/models/<name>/ready`. Every forwarded request is counted with its latency.
"""

from __future__ import annotations

import json
import time

from jupyterhub.services.auth import HubAuth, HubAuthenticated
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mlp.serving.registry import Caller, ModelRegistry, RegistryError
from mlp.serving.supervisor import DeploymentSupervisor

QUERY_ALL_SCOPE = "custom:mlp-models:query"
FORWARDED_HEADERS = ("Content-Type", "Accept", "Inference-Header-Content-Length")


class ModelProxyHandler(HubAuthenticated, web.RequestHandler):
    @property
    def hub_auth(self) -> HubAuth:
        return self.settings["hub_auth"]

    @property
    def registry(self) -> ModelRegistry:
        return self.settings["registry"]

    @property
    def supervisor(self) -> DeploymentSupervisor:
        return self.settings["supervisor"]

    def check_xsrf_cookie(self) -> None:
        return  # token authentication only (a cookie alone is refused below)

    def fail(self, status: int, error: str, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": error, "message": message}))

    def caller(self, model: str) -> Caller | None:
        user = self.current_user
        if not user or not self.request.headers.get("Authorization"):
            self.fail(401, "unauthorized", "send 'Authorization: token <hub API token>' (create "
                      "one at /hub/token); the token needs access:services!service=models")
            return None
        scopes = set(user.get("scopes", ()))
        admin = self.settings["admin_scope"] in scopes or QUERY_ALL_SCOPE in scopes
        return Caller(user["name"], tuple(user.get("groups") or ()), admin)

    async def forward(self, name: str, rest: str) -> None:
        caller = self.caller(name)
        if caller is None:
            return
        try:
            self.registry.readable(name, caller)
        except RegistryError as e:
            self.fail(e.status, e.error, e.message)
            return
        live = self.supervisor.live.get(name)
        replica = live.pick() if live is not None else None
        if live is None or replica is None:
            self.fail(503, "not_deployed", f"model {name!r} has no running deployment; deploy "
                      f"it with POST /services/mlp/api/v1/models/{name}/deployments")
            return
        url = f"http://127.0.0.1:{replica.port}/{rest}"
        if self.request.query:
            url += "?" + self.request.query
        headers = {h: self.request.headers[h] for h in FORWARDED_HEADERS
                   if h in self.request.headers}
        body = self.request.body if self.request.method in ("POST", "PUT") else None
        req = HTTPRequest(url, method=self.request.method, headers=headers, body=body,
                          request_timeout=self.settings.get("request_timeout", 60),
                          decompress_response=False)
        started = time.perf_counter()
        replica.inflight += 1
        try:
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (HTTPClientError, OSError) as e:
            live.stats.add(time.perf_counter() - started, ok=False)
            self.fail(502, "model_server_unavailable", f"the model server of {name!r} did not "
                      f"answer ({e}); the platform restarts it, see GET "
                      f"/services/mlp/api/v1/models/{name}/deployments/{live.id}")
            return
        finally:
            replica.inflight -= 1
        live.stats.add(time.perf_counter() - started, ok=resp.code < 500)
        if resp.code == 599:
            self.fail(502, "model_server_unavailable",
                      f"the model server of {name!r} did not answer: {resp.error}")
            return
        self.set_status(resp.code)
        for h in ("Content-Type", "Inference-Header-Content-Length"):
            if h in resp.headers:
                self.set_header(h, resp.headers[h])
        self.finish(resp.body or b"")

    async def get(self, name: str, rest: str) -> None:
        await self.forward(name, rest)

    async def post(self, name: str, rest: str) -> None:
        await self.forward(name, rest)


def router_app(
    registry: ModelRegistry, supervisor: DeploymentSupervisor, hub_auth: HubAuth,
    admin_scope: str,
) -> web.Application:
    return web.Application(
        [(r"/services/models/(?P<name>[a-z0-9-]{1,63})/(?P<rest>.*)", ModelProxyHandler)],
        hub_auth=hub_auth, registry=registry, supervisor=supervisor, admin_scope=admin_scope,
    )


def router_auth(api_token: str, api_url: str) -> HubAuth:
    return HubAuth(
        api_token=api_token, api_url=api_url, cache_max_age=60,
        access_scopes={"access:services!service=models", QUERY_ALL_SCOPE},
    )


__all__ = ["QUERY_ALL_SCOPE", "router_app", "router_auth"]
