"""One behavioural suite, two job backends: the same jobs through a real JobManager on the local
backend (processes running tests/k8s/simtask.py) and on the Kubernetes backend (pods on kwok
nodes that end as the same environment says) give the same states and reasons."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mlptest import wait_for_state

from mlp.backends.base import JobBackend
from mlp.backends.kubernetes import KubernetesBackend
from mlp.backends.local import LocalProcessBackend
from mlp.core.manager import JobManager, ManagerSettings
from mlp.core.quota import QuotaService, job_holder_id
from mlp.core.spec import TaskSpec
from mlp.core.states import JobState
from mlp.devcluster import Cluster
from mlp.scheduling import QuotaConfig, ScorePolicy
from mlp.store import Store

SIMTASK = (Path(__file__).parent / "simtask.py").read_text()
QUOTA = {
    "pools": {"default": {"capacity": {"cpu": 64, "memory": "256Gi", "gpu": 8}}},
    "default_group_quota": {"limits": {"default": {"cpu": 64, "memory": "256Gi", "gpu": 8}}},
}


def job(name: str, tasks: dict[str, int], env: dict[str, str] | None = None,
        cpu: float = 0.5, memory: str = "512Mi", gpu: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"inline": SIMTASK},
        "tasks": {r: {"count": n, "cpu": cpu, "memory": memory, "gpu": gpu}
                  for r, n in tasks.items()},
        "env": env or {},
    }


class Harness:
    """Builds managers (a second one on the same store is a service restart)."""

    def __init__(self, kind: str, data_dir: Path, make_backend: Callable[[], JobBackend]):
        self.kind = kind
        self.data_dir = data_dir
        self.make_backend = make_backend
        self.managers: list[JobManager] = []

    def manager(self, **settings: Any) -> JobManager:
        store = Store(f"sqlite:///{self.data_dir / 'mlp.sqlite'}")
        s = ManagerSettings(
            runtimes={"default": [sys.executable]}, default_runtime="default",
            poll_interval=0.1, default_task=TaskSpec(1, 1.0, 2**30, 0),
            default_max_runtime=600.0, max_runtime_limit=None,
        )
        for k, v in settings.items():
            setattr(s, k, v)
        qs = QuotaService(store, QuotaConfig(**QUOTA), ScorePolicy())
        m = JobManager(store, self.make_backend(), s, qs)
        m.start()
        self.managers.append(m)
        return m

    async def tasks_gone(self, m: JobManager, job_id: int, timeout: float = 30) -> None:
        """Every task of the job has ended (processes gone / pods deleted)."""
        state = m.get(job_id).backend_state or {}
        deadline = time.monotonic() + timeout
        while True:
            obs = m.backend.observe_job(job_id, state)
            alive = [t.name for t in obs.tasks if t.running]
            if isinstance(m.backend, KubernetesBackend):
                cache = m.backend.cache
                assert cache is not None
                alive = [t["pod"] for t in state.get("tasks", []) if t["pod"] in cache.pods]
            if not alive:
                return
            assert time.monotonic() < deadline, f"tasks still there: {alive}"
            await asyncio.sleep(0.1)


@pytest.fixture(params=["local", "kubernetes"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if request.param == "local":
        def make() -> JobBackend:
            return LocalProcessBackend(data_dir=str(data_dir), stop_grace_period=1.0)
    else:
        k8s: Cluster = request.getfixturevalue("k8s")
        namespace: str = request.getfixturevalue("namespace")

        def make() -> JobBackend:
            return KubernetesBackend(
                kubeconfig=str(k8s.kubeconfig), namespace=namespace, stop_grace_period=1.0,
                data_dir=str(data_dir), image="python:3.12-slim", gang_timeout=60.0,
            )
    h = Harness(request.param, data_dir, make)
    yield h
    for m in h.managers:
        await m.stop()
    for m in h.managers[-1:]:
        for j in m.store.list_jobs(states=[JobState.STARTING, JobState.RUNNING]):
            if j.backend_state:
                await m.backend.stop(j.id, j.backend_state)
    for m in h.managers:
        if isinstance(m.backend, KubernetesBackend):
            await m.backend.close()


async def test_all_tasks_finish_and_the_job_succeeds(harness: Harness):
    m = harness.manager()
    j = m.submit("alice", job("ok", {"worker": 2},
                              {"SIM_WORKER_EXIT": "0", "SIM_WORKER_RUN": "300ms"}))
    done = await wait_for_state(m, j.id, {JobState.SUCCEEDED, JobState.FAILED}, 60)
    assert done.job_state == JobState.SUCCEEDED, done.reason
    assert done.reason == "all tasks finished"
    assert job_holder_id(j.id) not in m.quota.ledger


async def test_a_failing_task_fails_the_job_with_its_exit_code(harness: Harness):
    m = harness.manager()
    j = m.submit("alice", job("bad", {"chief": 1, "worker": 1},
                              {"SIM_WORKER_EXIT": "3", "SIM_WORKER_RUN": "200ms"}))
    done = await wait_for_state(m, j.id, {JobState.SUCCEEDED, JobState.FAILED}, 60)
    assert done.job_state == JobState.FAILED
    assert done.reason.startswith("task worker:0 exited with code 3"), done.reason
    await harness.tasks_gone(m, j.id)  # the chief, still running, was stopped


async def test_parameter_servers_are_stopped_once_the_chief_is_done(harness: Harness):
    m = harness.manager()
    j = m.submit("alice", job("ps", {"chief": 1, "ps": 2, "worker": 1},
                              {"SIM_CHIEF_EXIT": "0", "SIM_CHIEF_RUN": "500ms"}))
    done = await wait_for_state(m, j.id, {JobState.SUCCEEDED, JobState.FAILED}, 60)
    assert (done.job_state, done.reason) == (JobState.SUCCEEDED, "chief finished")
    await harness.tasks_gone(m, j.id)


async def test_cancel_stops_every_task(harness: Harness):
    m = harness.manager()
    j = m.submit("alice", job("forever", {"chief": 1, "worker": 2}))
    await wait_for_state(m, j.id, {JobState.RUNNING}, 60)
    done = await m.cancel(j.id, "alice")
    assert done.job_state == JobState.CANCELLED
    await harness.tasks_gone(m, j.id)
    assert job_holder_id(j.id) not in m.quota.ledger


async def test_a_restarted_service_adopts_running_jobs(harness: Harness):
    first = harness.manager()
    j = first.submit("alice", job("adopt", {"worker": 2}))
    await wait_for_state(first, j.id, {JobState.RUNNING}, 60)
    await first.stop()  # the service goes away; its tasks keep running
    second = harness.manager()
    # Still running after the restart, and the new service can see it end.
    await asyncio.sleep(0)  # let the backend connect / start its watch
    deadline = time.monotonic() + 10
    while True:
        obs = second.observe(second.get(j.id))
        if obs.tasks:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert all(t.running for t in obs.tasks) and len(obs.tasks) == 2
    assert second.get(j.id).job_state == JobState.RUNNING
    done = await second.cancel(j.id, "alice")
    assert done.job_state == JobState.CANCELLED
    await harness.tasks_gone(second, j.id)


async def test_tf_config_names_every_task(harness: Harness, tmp_path: Path):
    m = harness.manager()
    record = tmp_path / "record"
    record.mkdir()
    j = m.submit("alice", job("tfc", {"chief": 1, "worker": 2, "ps": 1},
                              {"SIM_RECORD": str(record)}))
    running = await wait_for_state(m, j.id, {JobState.RUNNING}, 60)
    tasks = running.backend_state["tasks"]
    assert sorted(t["name"] for t in tasks) == ["chief:0", "ps:0", "worker:0", "worker:1"]
    if harness.kind == "local":
        deadline = time.monotonic() + 30
        while len(os.listdir(record)) < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        seen = (record / "worker-1.json").read_text()
    else:
        backend = m.backend
        assert isinstance(backend, KubernetesBackend) and backend.cache is not None
        name = f"mlp-job-{j.id}-1-worker-1"
        deadline = time.monotonic() + 30
        while name not in backend.cache.pods:  # its watch event may still be on the way
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        pod = backend.cache.pods[name]
        env = {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}
        seen = env["TF_CONFIG"]
    import json

    tf_config = json.loads(seen)
    if "TF_CONFIG" in tf_config:
        tf_config = {"cluster": tf_config["TF_CONFIG"]["cluster"], "task": tf_config["TF_CONFIG"]["task"]}
    assert tf_config["task"] == {"type": "worker", "index": 1}
    assert len(tf_config["cluster"]["worker"]) == 2
    assert tf_config["cluster"]["worker"][1] == next(
        t["address"] for t in tasks if t["name"] == "worker:1"
    )
    await m.cancel(j.id, "alice")
