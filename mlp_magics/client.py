"""The kernel's connection to the mlp service: `mlp.client.MLPClient` plus the calls the magics
need (metrics, batches, quota) and a background poller with backoff.

Credentials come from the user server's environment ($MLP_URL and the server's own
$JUPYTERHUB_API_TOKEN, scoped to the mlp service by the hub): nothing is typed into a notebook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mlp.client import MLPClient, MLPError
from mlp_magics.render import blocking_numbers

__all__ = ["MLPError", "MagicsClient", "Poller", "describe_error"]

log = logging.getLogger("mlp_magics")


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


class Poller:
    """Calls `refresh()` on a daemon thread until it returns done or `stop()` is called.

    The interval starts at `interval`, grows by half each quiet round up to `max_interval`,
    and falls back to `interval` when something changed. Errors (service away) back off up to
    `max_error_interval` and are handed to `on_error`; polling resumes by itself.
    `refresh` must only touch its own widgets: anything printed here would land in whichever
    cell happens to run, so output from this thread is forbidden by construction."""

    def __init__(
        self,
        refresh: Callable[[], tuple[bool, bool]],
        *,
        on_error: Callable[[MLPError | Exception], None],
        interval: float = 1.0,
        max_interval: float = 10.0,
        max_error_interval: float = 30.0,
        name: str = "mlp-poller",
    ):
        self.refresh = refresh
        self.on_error = on_error
        self.interval = interval
        self.max_interval = max_interval
        self.max_error_interval = max_error_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end of polling; True when it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        delay = self.interval
        error_delay = self.interval
        while not self._stop.is_set():
            try:
                changed, done = self.refresh()
            except Exception as e:  # any failure must keep the poller alive (and visible)
                if not isinstance(e, MLPError):
                    log.exception("mlp_magics: dashboard refresh failed")
                self.on_error(e)
                error_delay = min(error_delay * 2, self.max_error_interval)
                self._stop.wait(error_delay)
                continue
            error_delay = self.interval
            if done:
                return
            delay = self.interval if changed else min(delay * 1.5, self.max_interval)
            self._stop.wait(delay)
