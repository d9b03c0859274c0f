"""Models from notebooks and jobs: `register_model(...)` (in a job or a notebook), the REST calls
of the registry and deployments, and `%mlp_deploy MODEL[:VERSION]` with its dashboard.

Requests to a deployed model go to `$MLP_MODELS_URL` (the models router, set by hub_config for
notebook servers) or, without it, to `/services/models/` next to `$MLP_URL`, with the same hub
token as the mlp API.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import requests

from mlp.client import MLPError
from mlp_magics.client import MagicsClient


class ServingClient(MagicsClient):
    """The registry, deployments and the models router."""

    def register(self, name: str, *, job_id: int | None = None, path: str | None = None,
                 group: str | None = None, description: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"description": description}
        for key, value in (("job_id", job_id), ("path", path), ("group", group)):
            if value is not None:
                body[key] = value
        return self.register_version(name, body)

    def model(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", f"/models/{name}").json()
        return out

    def deployments(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._request(
            "GET", f"/models/{name}/deployments").json()["deployments"]
        return out

    def deploy(self, name: str, **body: Any) -> dict[str, Any]:
        body = {k: v for k, v in body.items() if v is not None}
        out: dict[str, Any] = self._request(
            "POST", f"/models/{name}/deployments", json=body).json()
        return out

    def roll(self, name: str, deployment_id: int, version: int) -> dict[str, Any]:
        out: dict[str, Any] = self._request(
            "PATCH", f"/models/{name}/deployments/{deployment_id}",
            json={"version": version}).json()
        return out

    def deployment(self, name: str, deployment_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._request(
            "GET", f"/models/{name}/deployments/{deployment_id}").json()
        return out

    @property
    def models_url(self) -> str:
        explicit = os.environ.get("MLP_MODELS_URL")
        if explicit:
            return explicit.rstrip("/")
        base = self.base.removesuffix("api/v1").rstrip("/")
        root = base.rsplit("/services/", 1)[0] if "/services/" in base else base
        return f"{root}/services/models"

    def predict(self, name: str, body: Any, protocol: str = "v1") -> tuple[int, Any, float]:
        """(status, answer, seconds) of one request to the model's live deployment."""
        path = f"v1/models/{name}:predict" if protocol == "v1" else f"v2/models/{name}/infer"
        started = time.perf_counter()
        try:
            r = requests.post(f"{self.models_url}/{name}/{path}", json=body, timeout=60,
                              headers={"Authorization": self.session.headers["Authorization"]})
        except requests.RequestException as e:
            return 0, {"error": "unreachable", "message": str(e)}, time.perf_counter() - started
        seconds = time.perf_counter() - started
        try:
            answer = r.json()
        except ValueError:
            answer = r.text
        return r.status_code, answer, seconds


def register_model(name: str, path: str = "export", *, job_id: int | None = None,
                   group: str | None = None, description: str = "",
                   client: ServingClient | None = None) -> dict[str, Any]:
    """Register the SavedModel in `path` as a new version of model `name`.

    Inside a platform job, `path` is relative to the job's folder and the version records the
    job (its id comes from $MLP_JOB_ID); elsewhere it is relative to your home. Needs the
    mlp service's URL and a hub token ($MLP_URL / $JUPYTERHUB_API_TOKEN, or `mlp login`).
    """
    client = client or ServingClient()
    if job_id is None and os.environ.get("MLP_JOB_ID", "").isdigit():
        job_id = int(os.environ["MLP_JOB_ID"])
    return client.register(name, job_id=job_id, path=path if path else None, group=group,
                           description=description)


def parse_target(text: str) -> tuple[str, int | None]:
    """MODEL or MODEL:VERSION."""
    name, _, version = text.partition(":")
    if not name:
        raise ValueError("give MODEL or MODEL:VERSION")
    if version and not version.isdigit():
        raise ValueError(f"version {version!r}: expected a number")
    return name, int(version) if version else None


def describe_deployment(d: dict[str, Any]) -> str:
    m = d.get("metrics") or {}
    lat = m.get("latency_ms") or {}
    return (f"deployment {d.get('id')} of {d.get('model')}:{d.get('version')}: "
            f"{d.get('state')} — {d.get('reason')}; endpoint {d.get('endpoint')}; "
            f"{m.get('requests', 0)} requests, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
            f"{m.get('requests_per_s', 0)} req/s")


def example_body(signature: dict[str, Any]) -> str:
    """A v1 request with one zero instance shaped like the signature (for the "try it" box)."""
    instance: dict[str, Any] = {}
    for name, spec in (signature.get("inputs") or {}).items():
        shape = [d if isinstance(d, int) else 1 for d in spec.get("shape", [])[1:]]
        value: Any = 0 if spec.get("dtype", "").startswith(("int", "uint")) else 0.0
        for d in reversed(shape):
            value = [value] * d
        instance[name] = value
    return json.dumps({"instances": [instance]})


__all__ = ["MLPError", "ServingClient", "describe_deployment", "example_body",
           "parse_target", "register_model"]
