"""GPU devices end to end on the local backend: the ledger allocates them, each real task process
sees exactly its own in CUDA_VISIBLE_DEVICES, and a restart of the service keeps them."""

from __future__ import annotations

import asyncio
import time

import psutil
from mlptest import wait_for_state

from mlp.core.quota import job_holder_id
from mlp.core.states import JobState
from mlp.scheduling import Resources

SLEEP = "import time; time.sleep(300)"
GPUS2 = {"cpu": 8, "memory": "8Gi", "gpu": 2}
QUOTA = {
    "pools": {"default": {"capacity": GPUS2}},
    "default_group_quota": {"limits": {"default": GPUS2}},
}


def gpu_job(name: str, gpu: int = 1, workers: int = 1) -> dict:
    return {
        "name": name,
        "source": {"inline": SLEEP},
        "tasks": {"worker": {"count": workers, "gpu": gpu, "cpu": 0.1, "memory": "64Mi"}},
    }


async def task_envs(job) -> dict[str, str | None]:
    """CUDA_VISIBLE_DEVICES of each running task's training process (the wrapper's child)."""
    seen: dict[str, str | None] = {}
    for t in job.backend_state["tasks"]:
        wrapper = psutil.Process(t["pid"])
        deadline = time.monotonic() + 30
        while not wrapper.children():  # the wrapper starts python right away
            assert time.monotonic() < deadline, f"task {t['name']} started no process"
            await asyncio.sleep(0.02)
        python = wrapper.children()[0]
        assert python.cmdline()[-1].endswith("main.py"), python.cmdline()
        seen[t["name"]] = python.environ().get("CUDA_VISIBLE_DEVICES")
    return seen


async def test_two_gpu_jobs_see_disjoint_devices_and_a_third_waits(manager_factory):
    m = manager_factory(quota=QUOTA)
    jobs = [m.submit("alice", gpu_job(f"g{i}")) for i in range(2)]
    running = [await wait_for_state(m, j.id, {JobState.RUNNING}) for j in jobs]
    seen = [(await task_envs(j))["worker:0"] for j in running]
    assert sorted(seen) == ["0", "1"], seen
    held = [m.quota.ledger.holder(job_holder_id(j.id)).devices for j in running]
    assert [list(h) for h in held] == [[s] for s in seen]
    # a CPU task sees no GPU at all
    cpu = m.submit(
        "bob",
        {
            "name": "c",
            "source": {"inline": SLEEP},
            "tasks": {"worker": {"cpu": 0.1, "memory": "64Mi"}},
        },
    )
    cpu = await wait_for_state(m, cpu.id, {JobState.RUNNING})
    assert await task_envs(cpu) == {"worker:0": ""}
    # no device left: the next GPU job waits, blocked on the pool's gpus
    third = m.submit("carol", gpu_job("g3"))
    waiting = await wait_for_state(m, third.id, {JobState.QUEUED})
    blocking = m.queue_info(waiting)["blocking"]
    assert {"scope": "pool", "resource": "gpu", "requested": 1.0, "available": 0.0}.items() <= (
        blocking[0].items()
    ), blocking
    await m.cancel(running[1].id, "alice")
    started = await wait_for_state(m, third.id, {JobState.RUNNING})
    assert await task_envs(started) == {"worker:0": seen[1]}
    for j in (running[0], cpu, started):
        await m.cancel(j.id, j.user)


async def test_tasks_of_one_job_split_its_devices(manager_factory):
    four = {"cpu": 8, "memory": "8Gi", "gpu": 4}
    m = manager_factory(
        quota={
            "pools": {"default": {"capacity": four}},
            "default_group_quota": {"limits": {"default": four}},
        }
    )
    job = m.submit("alice", gpu_job("pair", gpu=2, workers=2))
    job = await wait_for_state(m, job.id, {JobState.RUNNING})
    assert await task_envs(job) == {"worker:0": "0,1", "worker:1": "2,3"}
    await m.cancel(job.id, "alice")


async def test_a_restart_keeps_allocations_and_servers_never_share_with_jobs(manager_factory):
    m1 = manager_factory(quota=QUOTA)
    server = m1.quota.reserve_server(
        "server:bob/", "bob", "default", "default", Resources(cpu=1, gpu=1), time.time()
    )
    job = m1.submit("alice", gpu_job("g"))
    job = await wait_for_state(m1, job.id, {JobState.RUNNING})
    seen = (await task_envs(job))["worker:0"]
    assert [seen] != list(server.devices) and {seen, *server.devices} == {"0", "1"}
    await m1.stop()
    m2 = manager_factory(quota=QUOTA)  # a new service on the same store
    assert m2.get(job.id).state == "Running"
    assert m2.quota.ledger.holder("server:bob/").devices == server.devices
    assert m2.quota.ledger.holder(job_holder_id(job.id)).devices == (seen,)
    assert (await task_envs(m2.get(job.id)))["worker:0"] == seen
    later = m2.submit("carol", gpu_job("later"))
    later = await wait_for_state(m2, later.id, {JobState.QUEUED})
    assert m2.queue_info(later)["blocking"][0]["resource"] == "gpu"
    m2.quota.release("server:bob/")
    m2.kick()
    later = await wait_for_state(m2, later.id, {JobState.RUNNING})
    assert await task_envs(later) == {"worker:0": server.devices[0]}
    for j in (job, later):
        await m2.cancel(j.id, j.user)


async def test_a_configured_device_list_survives_an_admin_capacity_change(manager_factory):
    listed = {
        "pools": {"default": {"capacity": {"cpu": 8, "memory": "8Gi"}, "devices": ["7", "5"]}},
        "default_group_quota": {"limits": {"default": GPUS2}},
    }
    m1 = manager_factory(quota=listed)
    held = m1.quota.reserve_server(
        "server:bob/", "bob", "default", "default", Resources(cpu=1, gpu=1), time.time()
    )
    assert held.devices == ("7",)
    m1.quota.set_pool("default", {"capacity": {"cpu": 4, "memory": "8Gi", "gpu": 2}}, "admin")
    assert m1.quota.ledger.pools["default"].device_ids == ("7", "5")
    await m1.stop()
    m2 = manager_factory(quota=listed)  # the stored pool wins over configuration, list included
    assert m2.quota.ledger.pools["default"].device_ids == ("7", "5")
    assert m2.quota.ledger.holder("server:bob/").devices == ("7",)
    # another gpu count: the list cannot describe it, the indices apply and holders follow
    m2.quota.set_pool("default", {"capacity": {"cpu": 4, "memory": "8Gi", "gpu": 3}}, "admin")
    assert m2.quota.ledger.pools["default"].device_ids == ("0", "1", "2")
    assert m2.quota.ledger.holder("server:bob/").devices == ("0",)
    assert m2.quota.ledger.violations() == []
    m2.quota.release("server:bob/")
