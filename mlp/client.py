"""A small synchronous client of the mlp REST API, shared by the CLI and the notebook magics."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

CONFIG_PATH = Path(os.environ.get("MLP_CLIENT_CONFIG", "~/.config/mlp/client.json")).expanduser()


class MLPError(RuntimeError):
    """An error answered by the service (status, error code, message) or a connection failure."""

    def __init__(self, status: int, error: str, message: str, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.body = body or {}

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


@dataclass
class Credentials:
    url: str
    token: str


def save_credentials(url: str, token: str, path: Path = CONFIG_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f)
    os.chmod(path, 0o600)
    return path


def load_credentials(
    url: str | None = None, token: str | None = None, path: Path = CONFIG_PATH
) -> Credentials:
    """Explicit values, then $MLP_URL / $JUPYTERHUB_API_TOKEN, then the stored `mlp login`."""
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise MLPError(
                0, "config", f"{path} is not valid JSON; run `mlp login` again"
            ) from None
    url = url or os.environ.get("MLP_URL") or stored.get("url")
    token = (
        token
        or os.environ.get("MLP_TOKEN")
        or os.environ.get("JUPYTERHUB_API_TOKEN")
        or (stored.get("token"))
    )
    if not url:
        raise MLPError(
            0,
            "config",
            "no mlp service URL: set $MLP_URL or run "
            "`mlp login --url http://HUB/services/mlp/ --token TOKEN`",
        )
    if not token:
        raise MLPError(
            0,
            "config",
            "no API token: set $JUPYTERHUB_API_TOKEN or run `mlp login` "
            "with a token from the hub's Token page (/hub/token)",
        )
    return Credentials(url=url.rstrip("/") + "/", token=token)


#: How long a model registration may take to answer: the service copies the export and loads it
#: in the serving environment to read its signature (a TensorFlow import: seconds when its files
#: are cached, tens of seconds from a cold disk), bounded by its own `inspect_timeout` (120 s).
REGISTER_TIMEOUT = 300.0


class MLPClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        creds = load_credentials(url, token)
        self.base = creds.url + "api/v1"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {creds.token}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            r = self.session.request(method, self.base + path, **kwargs)
        except requests.ConnectionError as e:
            raise MLPError(
                0,
                "unreachable",
                f"cannot reach the mlp service at {self.base}: "
                f"{e.__class__.__name__}; is the hub running?",
            ) from None
        except requests.Timeout:
            t = kwargs["timeout"]
            waited = t[-1] if isinstance(t, tuple) else t
            raise MLPError(
                0, "timeout", f"the mlp service at {self.base} did not answer {method} {path} in "
                f"{waited:g} s; look at the hub's log (the mlp service logs there), or retry",
            ) from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": "http", "message": r.text[:500] or r.reason}
            raise MLPError(
                r.status_code, body.get("error", "http"), body.get("message", r.reason), body
            )
        return r

    def register_version(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /models/{name}/versions: waits up to REGISTER_TIMEOUT for the answer."""
        out: dict[str, Any] = self._request("POST", f"/models/{name}/versions", json=body,
                                            timeout=(self.timeout, REGISTER_TIMEOUT)).json()
        return out

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/jobs", json=spec).json()

    def jobs(self, user: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"user": user, "state": state}.items() if v}
        return self._request("GET", "/jobs", params=params).json()["jobs"]

    def job(self, job_id: int | str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: int | str) -> dict[str, Any]:
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def logs(
        self, job_id: int | str, task: str | None = None, tail: int = 200
    ) -> dict[str, list[str]]:
        params: dict[str, Any] = {"tail": tail}
        if task:
            params["task"] = task
        return self._request("GET", f"/jobs/{job_id}/logs", params=params).json()["logs"]

    def follow(
        self, job_id: int | str, task: str | None = None, tail: int = 200
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (event, data) from the server-sent-events stream until the job ends."""
        params: dict[str, Any] = {"follow": "true", "tail": tail}
        if task:
            params["task"] = task
        r = self._request(
            "GET", f"/jobs/{job_id}/logs", params=params, stream=True, timeout=(self.timeout, None)
        )
        with r:
            event, data = "message", ""
            for raw in r.iter_lines(decode_unicode=True):
                if raw is None:
                    continue
                if raw == "":
                    if data:
                        yield event, json.loads(data)
                    event, data = "message", ""
                elif raw.startswith(":"):
                    continue
                elif raw.startswith("event:"):
                    event = raw[6:].strip()
                elif raw.startswith("data:"):
                    data += raw[5:].strip()
