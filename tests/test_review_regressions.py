"""Regressions found in review: races between the manager's awaits, and request validation."""

from __future__ import annotations

import asyncio
import time

import psutil
from mlptest import Api

from mlp.core.states import JobState

SLEEP = "import time; time.sleep(300)"


def inline(code: str, name: str = "job", **kw):
    return {"name": name, "source": {"inline": code}, **kw}


async def _until(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_job_preempted_while_starting_and_readmitted_is_launched_once(manager_factory):
    """A job preempted during its (slow) start and admitted again before that start returned
    must not end up with two sets of processes: the stale start stops its own tasks and leaves
    the new attempt's backend state alone."""
    m = manager_factory()
    real_submit = m.backend.submit
    gate = asyncio.Event()
    launched: list[dict] = []

    async def slow_submit(launch):
        if launch.attempt == 1:
            await gate.wait()  # e.g. a long git clone
        state = await real_submit(launch)
        launched.append(state)
        return state

    m.backend.submit = slow_submit
    job = m.submit("alice", inline(SLEEP, tasks={"worker": {"count": 1, "cpu": 1}}))
    await _until(lambda: m.get(job.id).job_state == JobState.STARTING)

    # The pool shrinks (the job is preempted), then grows back (it is admitted again).
    m.apply_preemptions(m.quota.set_pool("default", {"capacity": {"cpu": 0.5}}, by="admin"))
    await _until(lambda: m.get(job.id).job_state == JobState.QUEUED)
    m.apply_preemptions(
        m.quota.set_pool("default", {"capacity": {"cpu": 64, "memory": "256Gi"}}, by="admin")
    )
    m.kick()
    await _until(lambda: m.get(job.id).attempt == 2 and len(launched) == 1)
    await _until(lambda: m.get(job.id).job_state == JobState.RUNNING)
    gate.set()  # the first, stale start finishes now
    await _until(lambda: len(launched) == 2)
    stale = [t["pid"] for t in launched[1]["tasks"]]
    await _until(lambda: not any(_alive(p) for p in stale))
    await asyncio.sleep(1.0)  # a few watch passes

    current = m.get(job.id)
    assert current.job_state == JobState.RUNNING, current.reason
    running_pids = {t["pid"] for t in current.backend_state["tasks"]}
    alive = [t["pid"] for s in launched for t in s["tasks"] if _alive(t["pid"])]
    # exactly the recorded attempt's tasks live; the stale launch was stopped
    assert set(alive) == running_pids, (alive, running_pids)
    await m.cancel(job.id, by="alice")


def test_reservation_with_non_string_pool_or_group_is_a_400_naming_the_field(alice: Api):
    for field in ("pool", "group"):
        r = alice("POST", "/reservations",
                  json={"server": "", "resources": {"cpu": 0.1}, field: ["default"]})
        assert r.status_code == 400, (field, r.status_code, r.text)
        assert r.json()["field"] == field
        assert r.json()["error"] == "bad_request"


def test_expansion_with_a_bad_duration_or_amount_is_a_400_naming_the_field(admin: Api):
    base = {"group": "default", "amount": {"cpu": 1}, "duration": "1h", "reason": "review"}
    for field, bad in (("duration", "soon"), ("start_in", "later"), ("amount", {"cpu": "x"})):
        r = admin("POST", "/admin/expansions", json={**base, field: bad})
        assert r.status_code == 400, (field, r.status_code, r.text)
        assert r.json()["field"] == field, (field, r.json())


async def test_preempted_between_admission_and_start_does_not_run_without_quota(manager_factory):
    """A pass admits a job; before its start task runs, the ledger takes the quota back (an
    admin change). The job must not start holding nothing: it goes back to the queue."""
    import asyncio

    from mlp.core.quota import job_holder_id
    from mlp.scheduling import Preemption

    m = manager_factory()
    await m.stop()  # drive the passes by hand
    job = m.submit("alice", {"name": "gap", "source": {"inline": "import time; time.sleep(60)"}})
    hid = job_holder_id(job.id)
    await m.tick()  # admits and schedules the start task, which has not run yet
    assert hid in m.quota.ledger
    m.quota.ledger.release(hid)  # what the ledger does when it preempts
    m.apply_preemptions([Preemption(hid, "quota taken back")])
    await asyncio.sleep(0.5)  # let the start and preempt tasks run
    job = m.get(job.id)
    assert job.state == "Queued" and "admission withdrawn" in job.reason
    assert job.backend_state is None and hid in m.quota.scheduler and hid not in m.quota.ledger
    await m.tick()  # admitted again: now it starts, holding its quota
    for _ in range(100):
        if m.get(job.id).state == "Running":
            break
        await asyncio.sleep(0.05)
    assert m.get(job.id).state == "Running" and hid in m.quota.ledger
    await m.cancel(job.id, by="test")


def test_a_venv_in_a_closed_folder_is_refused_at_start_though_its_python_links_out():
    """The accounts run `.venv/bin/python` through the folders above it: a 0700 folder there is
    refused with its name at start, even though the link's target (/usr/bin/...) is reachable
    (found on a clean clone in a `mktemp -d` folder: every task exited 126)."""
    import os
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    import pytest

    from mlp.app import prepare_data_dir
    from mlp.isolation.process import unreachable_ancestor

    base = Path(tempfile.mkdtemp(prefix="mlp-reach-", dir="/tmp"))  # pytest's tmp is 0700
    mp = pytest.MonkeyPatch()
    try:
        os.chmod(base, 0o711)
        closed = base / "closed"
        (closed / "bin").mkdir(parents=True)
        python = closed / "bin" / "python"
        python.symlink_to(os.path.realpath(sys.executable))
        os.chmod(closed, 0o700)
        assert unreachable_ancestor(Path(os.path.realpath(sys.executable))) is None
        assert unreachable_ancestor(python) == closed
        with pytest.MonkeyPatch.context() as ctx:
            ctx.setattr(sys, "executable", str(python))
            with pytest.raises(ValueError, match=f"below {closed}, which other users cannot"):
                prepare_data_dir(base / "data", multi_user=True)
        os.chmod(closed, 0o711)
        assert unreachable_ancestor(python) is None
        # An editable install's source folder must be listable: Python lists it to import mlp.
        mp.setattr(sys, "executable", os.path.realpath(sys.executable))  # reachable
        source = base / "src"
        (source / "mlp").mkdir(parents=True)
        os.chmod(source, 0o711)
        with pytest.raises(ValueError, match=f"source {source} .* cannot be listed by other "
                           f"users .*`chmod o\\+rx {source}`"):
            prepare_data_dir(base / "data", multi_user=True, source=source)
        os.chmod(source, 0o755)
        prepare_data_dir(base / "data", multi_user=True, source=source)
        os.chmod(source, 0o700)  # closed above mlp/: named as a folder the accounts cannot pass
        with pytest.raises(ValueError, match=f"source .* is below {source}, which other users"):
            prepare_data_dir(base / "data", multi_user=True, source=source)
        # Installed into site-packages (not editable): nothing of the source is checked.
        site = base / "lib" / "site-packages"
        (site / "mlp").mkdir(parents=True)
        os.chmod(site, 0o700)
        os.chmod(base / "lib", 0o711)
        prepare_data_dir(base / "data", multi_user=True, source=site)
    finally:
        mp.undo()
        shutil.rmtree(base, ignore_errors=True)
