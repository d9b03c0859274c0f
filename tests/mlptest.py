"""Helpers of the test suite: the hub launcher lives in `mlp.devhub` (shared with the
benchmarks) and is re-exported here; waiting for a job state inside one process is test-only."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests

from mlp.core.manager import JobManager
from mlp.core.ports import free_port
from mlp.core.states import JobState
from mlp.devhub import (
    HUB_CONFIG,
    REPO,
    Api,
    Hub,
    kill_mlp_service,
    make_python_reachable,
    platform_data_dir,
    remove_platform_leftovers,
    service_answers,
    start_hub,
    stop_hub,
    wait_for_service,
)
from mlp.store import Job

EXAMPLES = REPO / "examples"

__all__ = [
    "EXAMPLES",
    "HUB_CONFIG",
    "REPO",
    "Api",
    "Hub",
    "free_port",
    "kill_mlp_service",
    "make_python_reachable",
    "platform_data_dir",
    "quota_sandbox",
    "remove_platform_leftovers",
    "service_answers",
    "start_hub",
    "stop_hub",
    "wait_for_service",
    "wait_for_state",
]


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


def quota_sandbox(hub: Hub, pool: str, group: str) -> dict[str, Any]:
    """A pool and a quota group of their own in the hub's mlp service (other tests' quotas stay
    untouched); users join the group through the hub group of the same name. Returns the admin
    token, an admin `api(method, path, **kw)` that asserts success and returns the JSON, and
    the API's URL."""
    admin = hub.user_token("admin", admin=True)

    def api(method: str, path: str, **kw: Any) -> Any:
        r = requests.request(method, f"{hub.url}/services/mlp/api/v1{path}", timeout=30,
                             headers={"Authorization": f"token {admin}"}, **kw)
        assert r.status_code < 300, r.text
        return r.json()

    api("PUT", f"/admin/pools/{pool}", json={"capacity": {"cpu": 32, "memory": "64Gi", "gpu": 4}})
    api("PUT", f"/admin/groups/{group}", json={
        "limits": {pool: {"cpu": 16, "memory": "32Gi", "gpu": 2}},
        "member_cap": {"cpu": 2, "memory": "8Gi", "gpu": 1},
    })
    r = hub.hub_api("POST", f"/groups/{group}")
    assert r.status_code in (201, 409), r.text
    return {"admin_token": admin, "api": api, "url": f"{hub.url}/services/mlp/api/v1"}
