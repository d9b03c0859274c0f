"""The kernel's connection to the mlp service: `mlp.client.MLPClient` plus the calls the magics
need (metrics, batches, quota), and the sentence a user reads for an error.

Credentials come from the user server's environment ($MLP_URL and the server's own
$JUPYTERHUB_API_TOKEN, scoped to the mlp service by the hub): nothing is typed into a notebook.
"""

from __future__ import annotations

from typing import Any

from mlp.client import MLPClient, MLPError
from mlp_magics.render import blocking_numbers

__all__ = ["MLPError", "MagicsClient", "describe_error"]


class MagicsClient(MLPClient):
    """MLPClient with the read calls of the dashboards."""

    def list_jobs(
        self, *, state: str | None = None, batch: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"state": state, "batch": batch, "limit": limit}.items() if v}
        jobs: list[dict[str, Any]] = self._request("GET", "/jobs", params=params).json()["jobs"]
        return jobs

    def metrics(
        self,
        job_id: int | str,
        *,
        since: int | None = None,
        task: str | None = None,
        names: list[str] | None = None,
        max_points: int | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if task:
            params["task"] = task
        if names:
            params["name"] = ",".join(names)
        if max_points:
            params["max_points"] = max_points
        body: dict[str, Any] = self._request(
            "GET", f"/jobs/{job_id}/metrics", params=params
        ).json()
        return body

    def quota(self) -> dict[str, Any]:
        body: dict[str, Any] = self._request("GET", "/quota").json()
        return body


def describe_error(e: MLPError) -> str:
    """A sentence for the user: what failed and what to do, with the service's own words."""
    if e.status == 0 and e.error in ("unreachable", "timeout"):
        return f"{e.message}. Nothing was lost; retry when the service is back."
    if e.status == 0:
        return e.message
    field = e.body.get("field")
    where = f" (field {field})" if field and field not in e.message else ""
    text = f"the mlp service refused: {e.message}{where} [HTTP {e.status} {e.error}]"
    # never_fits / over_quota carry the numbers behind the sentence: one line per blocker.
    blocking = e.body.get("blocking")
    numbers = [blocking_numbers(b) for b in blocking if isinstance(b, dict)] if isinstance(
        blocking, list) else []
    return text + "".join(f"\n  - {n}" for n in numbers if n)
