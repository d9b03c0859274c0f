"""The cgroup v2 driver against the host's real cgroup2 mount (root; no fake cgroupfs).

On a host that mounts cgroup v1 and an empty cgroup2 hierarchy side by side (memory and cpu bound
to v1), the driver must refuse to enforce with the reason, the platform must say so at start and
in the quota view, and what does not need a controller is exercised for real: creating and
removing a cgroup, moving processes into ``cgroup.procs``, reading ``cpu.stat``, killing through
``cgroup.kill`` and through the per-process fallback. ``memory.max`` and ``cpu.max`` need the
controllers; where the hierarchy offers them the enforcement tests are those of
test_accounts_cgroups.py, run with ``c.MLPIsolation.cgroup_root`` pointing at it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlptest import Api, start_hub, stop_hub, wait_for_service

from mlp.isolation import MLPIsolation
from mlp.isolation.cgroups import CgroupDriver, CgroupError, Limits


def cgroup2_mount() -> Path | None:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, where, kind, *_ = line.split()
            if kind == "cgroup2":
                return Path(where)
    return None


MOUNT = cgroup2_mount()
CONTROLLERS = set((MOUNT / "cgroup.controllers").read_text().split()) if MOUNT else set()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="writing cgroups needs root (CI is root)"),
    pytest.mark.skipif(MOUNT is None, reason="no cgroup2 hierarchy is mounted on this host"),
]
without_controllers = pytest.mark.skipif(
    {"memory", "cpu"} <= CONTROLLERS,
    reason="this cgroup2 hierarchy has memory and cpu: nothing to refuse",
)


@pytest.fixture
def v2() -> Iterator[CgroupDriver]:
    """A v2 driver on the real mount with a parent of its own, removed afterwards.

    Built directly: `detect` refuses a hierarchy without memory and cpu, yet cgroups without
    limits (what these tests create) need no controller.
    """
    assert MOUNT is not None
    parent = f"mlp-test-v2-{secrets.token_hex(3)}"
    driver = CgroupDriver(2, MOUNT, parent)
    (MOUNT / parent).mkdir()
    yield driver
    driver.remove_all()
    assert not (MOUNT / parent).exists()


def in_cgroup(pid: int) -> str:
    """The pid's cgroup v2 path, from /proc (the kernel's word, not the driver's)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"process {pid} has no cgroup v2 entry")


def wait_until(check, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.01)


@without_controllers
def test_detect_refuses_without_memory_and_cpu_and_says_why():
    assert MOUNT is not None
    parent = f"mlp-test-v2-{secrets.token_hex(3)}"
    driver = CgroupDriver.detect(MOUNT, parent)
    assert not driver.available
    text = driver.describe()
    assert text.startswith(f"not enforced: the cgroup v2 hierarchy at {MOUNT} lacks the ")
    assert "controller" in text and "c.MLPIsolation.cgroup_root" in text
    for missing in {"memory", "cpu"} - CONTROLLERS:
        assert missing in text
    assert not (MOUNT / parent).exists()  # refused before creating anything
    iso = MLPIsolation(cgroup_root=str(MOUNT), cgroup_parent=parent)
    info = iso.describe()
    assert info["limits_enforced"] is False and info["limits"] == text
    with pytest.raises(CgroupError, match="not enforced"):
        driver.create("t", Limits())


def test_a_v2_cgroup_holds_real_processes_and_cgroup_kill_ends_them(v2: CgroupDriver):
    cg = v2.create("task-a", Limits())
    d = cg.dirs["unified"]
    assert (d / "cgroup.procs").is_file() and (d / "cgroup.events").is_file()  # the kernel's
    # a task that forks: both the shell and its background child must be inside, and end
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 300 & exec sleep 301"], preexec_fn=cg.join,
        start_new_session=True,
    )
    wait_until(lambda: len(cg.pids()) == 2, "the fork inside the cgroup")
    assert proc.pid in cg.pids()
    for pid in cg.pids():
        assert in_cgroup(pid) == f"/{v2.parent}/task-a"
    assert "populated 1" in (d / "cgroup.events").read_text()
    busy = subprocess.Popen(["python3", "-c", "while True: pass"])
    try:
        cg.join(busy.pid)  # moving a running process in (what join(pid) is for)
        wait_until(lambda: cg.cpu_seconds() > 0.05, "cpu.stat counting the busy process")
    finally:
        assert (d / "cgroup.kill").exists(), "this kernel has no cgroup.kill (Linux < 5.14)"
        cg.kill()
    assert proc.wait(10) == -9 and busy.wait(10) == -9
    wait_until(lambda: "populated 0" in (d / "cgroup.events").read_text(), "an empty cgroup")
    assert cg.pids() == []
    cg.remove()
    assert not d.exists()


def test_the_per_process_fallback_and_remove_of_a_busy_cgroup(v2: CgroupDriver):
    cg = v2.create("task-b", Limits())
    first = subprocess.Popen(["sleep", "300"], preexec_fn=cg.join)
    second = subprocess.Popen(["sleep", "300"], preexec_fn=cg.join)
    assert sorted(cg.pids()) == sorted([first.pid, second.pid])
    cg.kill_each()  # the path of kernels without cgroup.kill
    assert first.wait(10) == -9 and second.wait(10) == -9
    wait_until(lambda: cg.pids() == [], "the emptied cgroup")
    third = subprocess.Popen(["sleep", "300"], preexec_fn=cg.join)
    cg.remove()  # busy: remove kills what is left (EBUSY, then kill) and removes the directory
    assert third.wait(10) == -9
    assert not cg.dirs["unified"].exists()
    cg.remove()  # idempotent


@without_controllers
def test_limits_without_the_controllers_fail_cleanly(v2: CgroupDriver):
    for limits, file in ((Limits(memory=64 * 2**20), "memory.max"), (Limits(cpu=0.5), "cpu.max")):
        with pytest.raises(CgroupError, match=f"cannot set up cgroup limited: .*{file}"):
            v2.create("limited", limits)
        assert not (v2.root / v2.parent / "limited").exists()  # nothing left behind


@without_controllers
def test_the_platform_says_at_start_and_in_the_quota_view_that_limits_are_not_enforced(
    tmp_path: Path,
):
    root = f"c.MLPIsolation.cgroup_root = {str(MOUNT)!r}\n"
    hub = start_hub(tmp_path, ["--MLPService.poll_interval=0.2"], root, root)
    try:
        api = Api(hub, hub.user_token("vera"))
        wait_for_service(api)
        isolation = api("GET", "/quota").json()["isolation"]
        assert isolation["limits_enforced"] is False
        assert isolation["limits"].startswith(f"not enforced: the cgroup v2 hierarchy at {MOUNT}")
        log = hub.log_path.read_text(errors="replace")
        assert f"mlp resource limits are NOT enforced (not enforced: the cgroup v2 hierarchy at " \
            f"{MOUNT} lacks the" in log, log[-3000:]
        # work still runs, counted but unlimited
        job = api.submit({"name": "free", "source": {"inline": "print('ran')"},
                          "tasks": {"worker": {"cpu": 0.5, "memory": "128Mi"}}})
        assert api.wait(job["id"], {"Succeeded", "Failed"})["state"] == "Succeeded"
    finally:
        stop_hub(hub)
