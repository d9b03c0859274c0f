"""Helpers of the test suite: the hub launcher of `mlp.devhub` (a real JupyterHub + proxy + mlp
service on free loopback ports, `start_hub`; REST clients as a user, `Api`), re-exported here,
and waiting for job states."""

from __future__ import annotations

import asyncio
import time

import requests

from mlp.core.manager import JobManager
from mlp.core.states import JobState
from mlp.devhub import HUB_CONFIG, REPO, Api, Hub, free_port, start_hub, stop_hub
from mlp.store import Job

EXAMPLES = REPO / "examples"
__all__ = ["EXAMPLES", "HUB_CONFIG", "REPO", "Api", "Hub", "free_port", "kill_mlp_service",
           "start_hub", "stop_hub", "wait_for_service", "wait_for_state"]


async def wait_for_state(
    m: JobManager, job_id: int, states: set[JobState], timeout: float = 60.0
) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = m.get(job_id)
        if job.job_state in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} still {job.state} ({job.reason}) after {timeout} s, "
                f"wanted {sorted(s.value for s in states)}"
            )
        await asyncio.sleep(0.05)


def kill_mlp_service(hub: Hub) -> None:
    """SIGKILL the hub's managed mlp service (a crash); the hub restarts it within ~30 s."""
    import psutil

    service = next(p for p in psutil.Process(hub.proc.pid).children(recursive=True)
                   if "serve" in p.cmdline() and "mlp" in " ".join(p.cmdline()))
    service.kill()
    deadline = time.monotonic() + 10
    # It stays a zombie until the hub's next poll reaps it; either way it no longer serves.
    while service.is_running() and service.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def wait_for_service(api: Api, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if api("GET", "/jobs", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, api.hub.log_tail()
        time.sleep(0.5)
