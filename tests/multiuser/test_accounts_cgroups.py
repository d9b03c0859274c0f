"""Accounts and cgroups for real (root: CI runs as root): names, refusal of foreign accounts,
homes, memory and CPU limits of job tasks, the address guard."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlptest import wait_for_state

from mlp.core.states import JobState
from mlp.isolation import MLPIsolation
from mlp.isolation.accounts import AccountError, AccountManager, account_name
from mlp.isolation.netguard import OutboundPolicy, UnsafeURL

END = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
root = pytest.mark.skipif(os.geteuid() != 0, reason="accounts and cgroups need root (CI is root)")


@pytest.mark.parametrize(
    "hub_name",
    ["alice", "Alice", "ann.b", "ann-b", "日本語", "x" * 100, "a" * 27, "a" * 28, "bob-1234abcd",
     "", "-x-", "a--b"],
)
def test_account_names_are_valid_and_distinct(hub_name):
    name = account_name(hub_name)
    assert len(name) <= 32 and name.startswith("mlp-")
    import re

    assert re.fullmatch(r"[a-z][a-z0-9-]*", name), name


def test_account_names_never_collide():
    names = ["alice", "Alice", "ALICE", "alice.", "alice-", "ann.b", "ann-b", "ann_b",
             "x" * 100, "x" * 101, "bob-1234abcd", "bob"]
    names += [account_name(n).removeprefix("mlp-") for n in names]  # a name shaped like a slug
    mapped = {n: account_name(n) for n in names}
    assert len(set(mapped.values())) == len(set(mapped)), mapped
    assert account_name("alice") == "mlp-alice"
    assert account_name("Ann.B").startswith("mlp-ann-b-")


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[AccountManager]:
    base = Path(__import__("tempfile").mkdtemp(prefix="mlp-test-", dir="/tmp"))
    os.chmod(base, 0o711)
    manager = AccountManager(base / "data", prefix=f"t{secrets.token_hex(2)}-")
    yield manager
    for name in list(manager._read()):
        manager.delete(name)
    __import__("shutil").rmtree(base, ignore_errors=True)


@root
def test_account_created_with_private_home_and_refuses_foreign_accounts(accounts):
    acc = accounts.ensure("alice")
    pw = pwd.getpwnam(acc.name)
    assert acc.name == f"{accounts.prefix}alice" and pw.pw_uid == acc.uid and acc.uid != 0
    st = acc.home.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (acc.uid, 0o700)
    assert stat.S_IMODE(accounts.registry_path.stat().st_mode) == 0o600
    assert accounts.ensure("alice") == acc  # idempotent
    # An account that exists but was not created by the platform: refused, not adopted.
    foreign = f"{accounts.prefix}mallory"
    subprocess.run(["useradd", "--no-create-home", foreign], check=True)
    try:
        with pytest.raises(AccountError, match="was not created by the platform"):
            accounts.ensure("mallory")
    finally:
        subprocess.run(["userdel", foreign], check=False)


@root
def test_accounts_are_created_one_at_a_time(accounts):
    async def many() -> list[object]:
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            *(loop.run_in_executor(None, accounts.ensure, n) for n in ["u1", "u2", "u1", "u3"])
        )

    got = asyncio.run(many())
    assert len({a.uid for a in got}) == 3  # type: ignore[attr-defined]


# ------------------------------------------------------------------------- job tasks
@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[MLPIsolation]:
    from mlptest import make_python_reachable

    make_python_reachable()
    base = Path(__import__("tempfile").mkdtemp(prefix="mlp-test-", dir="/tmp"))
    os.chmod(base, 0o711)
    (base / "data").mkdir(mode=0o711)
    prefix = f"t{secrets.token_hex(2)}"
    iso = MLPIsolation(data_dir=str(base / "data"), account_prefix=prefix + "-",
                       cgroup_parent=f"mlp-test-{prefix}", multi_user=True)
    yield iso
    from mlptest import remove_platform_leftovers

    remove_platform_leftovers(base / "data", prefix + "-")


def _manager(manager_factory, iso: MLPIsolation):
    m = manager_factory()
    m.backend.data_dir = iso.data_dir
    m.backend.isolation = iso
    return m


@root
async def test_task_runs_as_the_owner_and_cannot_read_private_files(manager_factory, isolated):
    m = _manager(manager_factory, isolated)
    secret = Path(isolated.data_dir) / "secrets.json"
    secret.write_text('{"admin_password": "x"}')
    os.chmod(secret, 0o600)
    bob = isolated.account("bob")
    assert bob is not None
    code = (
        "import os, pathlib\n"
        "print('uid', os.getuid())\n"
        f"for p in [{str(secret)!r}, {str(bob.home)!r}]:\n"
        "    try:\n"
        "        pathlib.Path(p).read_text() if pathlib.Path(p).is_file() else os.listdir(p)\n"
        "        print('READ', p)\n"
        "    except PermissionError:\n"
        "        print('denied', p)\n"
    )
    job = m.submit("alice", {"name": "peek", "source": {"inline": code}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Succeeded", job.reason
    log = Path(job.backend_state["tasks"][0]["log"]).read_text()
    alice = isolated.account("alice")
    assert alice is not None and f"uid {alice.uid}" in log
    assert "READ" not in log and log.count("denied") == 2, log


@root
async def test_task_past_its_memory_limit_fails_with_the_reason(manager_factory, isolated):
    if not isolated.cgroups.available:
        pytest.fail(f"cgroups are {isolated.cgroups.describe()}")
    m = _manager(manager_factory, isolated)
    code = "x = bytearray(600 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nprint('survived')\n"
    job = m.submit("alice", {"name": "hog", "source": {"inline": code},
                             "tasks": {"worker": {"memory": "256Mi", "cpu": 1}}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed"
    assert "worker:0 exceeded its memory limit 256Mi and was killed" in job.reason, job.reason


@root
async def test_half_a_cpu_busy_loop_is_held_near_half_a_core(manager_factory, isolated):
    m = _manager(manager_factory, isolated)
    code = "import time\nt = time.time()\nwhile time.time() - t < 4: pass\n"
    job = m.submit("alice", {"name": "spin", "source": {"inline": code},
                             "tasks": {"worker": {"cpu": 0.5, "memory": "256Mi"}}})
    job = await wait_for_state(m, job.id, {JobState.RUNNING, *END})
    cg = isolated.cgroups.cgroup(job.backend_state["tasks"][0]["cgroup"])
    # The quota the kernel applies.
    if cg.version == 2:
        assert (cg.dirs["unified"] / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    start_cpu, start = cg.cpu_seconds(), time.monotonic()
    await asyncio.sleep(2.5)
    share = (cg.cpu_seconds() - start_cpu) / (time.monotonic() - start)
    throttled = cg.throttled_periods()
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Succeeded", job.reason
    # At most half a core; a loaded host may give it less (then the quota never bites).
    assert 0.1 < share < 0.58, f"the task used {share:.2f} cores with a 0.5-core quota"
    assert share > 0.4 or throttled == 0, f"throttled {throttled} periods at {share:.2f} cores"


# ------------------------------------------------------------------------- address guard
@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://localhost:8081/hub/api", "http://169.254.169.254/latest",
    "http://10.1.2.3/", "http://[::1]/", "http://192.168.0.1/", "http://[::ffff:127.0.0.1]/",
])
async def test_outbound_guard_refuses_internal_addresses(url):
    with pytest.raises(UnsafeURL, match="resolves to"):
        await OutboundPolicy().check_url(url, "webhook", ("http", "https"))


async def test_outbound_guard_allow_list_and_schemes():
    await OutboundPolicy(allow_networks=["127.0.0.0/8"]).check_url(
        "http://127.0.0.1:9/x", "webhook", ("http",))
    with pytest.raises(UnsafeURL, match="file://"):
        await OutboundPolicy().check_url("file:///etc/passwd", "source.git", ("https", "git"))
    with pytest.raises(UnsafeURL, match="local paths"):
        await OutboundPolicy().check_url("/srv/repo.git", "source.git", ("https", "git"))
    with pytest.raises(UnsafeURL, match="metadata"):
        await OutboundPolicy(allow_networks=["169.254.0.0/16"]).check_url(
            "http://169.254.169.254/", "webhook", ("http",))


def test_cancel_never_signals_a_reused_pid(tmp_path):
    """A stored pid whose process ended and whose number now belongs to another process."""
    from mlp.backends.local import LocalProcessBackend

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             start_new_session=True)
    try:
        backend = LocalProcessBackend(data_dir=str(tmp_path), stop_grace_period=0.2)
        task = {"name": "worker:0", "pid": other.pid, "create_time": time.time() - 3600,
                "exit_file": str(tmp_path / "x.exit"), "log": str(tmp_path / "x.log")}
        asyncio.run(backend.stop(1, {"tasks": [task]}))
        assert other.poll() is None, "an unrelated process with a reused pid was killed"
    finally:
        other.kill()
        other.wait()


def test_ports_of_tasks_started_together_never_collide():
    from mlp.core.ports import free_ports

    ports = [p for _ in range(500) for p in free_ports(4)]
    assert len(set(ports)) == len(ports)


async def test_each_gpu_task_sees_only_its_own_devices(manager_factory):
    big = {"cpu": 8, "memory": "8Gi", "gpu": 3}
    m = manager_factory(quota={"pools": {"default": {"capacity": big}},
                               "default_group_quota": {"limits": {"default": big}}})
    code = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(2)"
    jobs = [m.submit("alice", {"name": f"g{i}", "source": {"inline": code},
                               "tasks": {"worker": {"gpu": 1, "cpu": 0.1, "memory": "64Mi"}}})
            for i in range(2)]
    cpu = m.submit("alice", {"name": "c", "source": {"inline": code},
                             "tasks": {"worker": {"cpu": 0.1, "memory": "64Mi"}}})
    done = [await wait_for_state(m, j.id, END) for j in [*jobs, cpu]]
    seen = [Path(j.backend_state["tasks"][0]["log"]).read_text().strip() for j in done]
    assert all(j.state == "Succeeded" for j in done), [j.reason for j in done]
    assert sorted(seen[:2]) == ["0", "1"] and seen[2] == "", seen
    assert m.quota.ledger.free_devices("default") == ["0", "1", "2"]
