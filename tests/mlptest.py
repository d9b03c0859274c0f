"""Helpers of the test suite: the hub launcher lives in `mlp.devhub` (shared with the
benchmarks) and is re-exported here; waiting for a job state inside one process is test-only."""

from __future__ import annotations

import asyncio
import time

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
    start_hub,
    stop_hub,
    wait_for_service,
)
from mlp.store import Job

EXAMPLES = REPO / "examples"

__all__ = [
    "EXAMPLES", "HUB_CONFIG", "REPO", "Api", "Hub", "free_port", "kill_mlp_service",
    "make_python_reachable", "platform_data_dir", "remove_platform_leftovers", "start_hub",
    "stop_hub", "wait_for_service", "wait_for_state",
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
