"""Hub user names that are not OS user names, names whose slugs look alike, and accounts the
platform did not create: real system accounts (root), a clear error, nothing adopted or lost.

test_accounts_cgroups.py checks the name mapping as a function and a foreign account refused by
the account manager; here the accounts are created for real and a job goes through the service.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlptest import make_python_reachable, remove_platform_leftovers, wait_for_state

from mlp.core.paths import safe_name, user_home
from mlp.core.states import JobState
from mlp.isolation import MLPIsolation
from mlp.isolation.accounts import AccountError, AccountManager, account_name
from mlp.isolation.cgroups import CgroupDriver, Limits
from mlp.isolation.names import server_cgroup_name

root = pytest.mark.skipif(os.geteuid() != 0, reason="creates system accounts (root)")

END = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
BAD = ["Alice", "ann.b", "日本語", "x" * 100, "日" * 100, "Zoë.O'Brien-Smith", "a b"]
LOOK_ALIKE = ["ann.b", "ann-b", "Ann.B", "ann_b", "ANN-B", "ann..b"]


@pytest.fixture
def base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="mlp-test-", dir="/tmp"))
    os.chmod(folder, 0o711)
    (folder / "data").mkdir(mode=0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def accounts(base: Path) -> Iterator[AccountManager]:
    manager = AccountManager(base / "data", prefix=f"t{secrets.token_hex(2)}-")
    yield manager
    for name in list(manager.registered()):
        manager.delete(name)


def test_homes_and_server_cgroups_of_awkward_names_are_single_distinct_file_names():
    extra = ["ann.b" * 60, "ann.b" * 60 + "x", "a--b", "a", "a__b", "_"]
    names = list(dict.fromkeys([*BAD, *LOOK_ALIKE, *extra]))
    homes = {n: safe_name(n) for n in names}
    assert len(set(homes.values())) == len(names)
    assert all(0 < len(h) <= 255 and "/" not in h and h not in (".", "..") for h in homes.values())
    assert safe_name("alice") == "alice" and safe_name("Ann.B") == "_41nn_2e_42"  # unchanged
    # (user, server) pairs whose parts, joined naively, read the same
    pairs = [("a--b", ""), ("a", "b--"), ("a", "-b--"), ("a-", "-b"), ("日" * 100, ""),
             ("日" * 100, "x"), ("x" * 255, "y" * 255), ("x" * 255, "y" * 254)]
    cgroups = {p: server_cgroup_name(*p) for p in pairs}
    assert len(set(cgroups.values())) == len(pairs), cgroups
    assert all(len(c) <= 255 and "/" not in c for c in cgroups.values())


@root
def test_long_unicode_names_get_a_home_and_a_server_cgroup_for_real(base):
    name = "日" * 100
    home = user_home(base / "data", name)
    home.mkdir(parents=True)  # ENAMETOOLONG before names were shortened
    assert home.parent == base / "data" / "users"
    driver = CgroupDriver.detect(parent=f"mlp-test-{secrets.token_hex(3)}")
    if driver.available:
        try:
            for server in ("", "x" * 200):
                driver.create(server_cgroup_name(name, server), Limits(memory=2**26)).remove()
        finally:
            driver.remove_all()


@root
def test_names_that_are_not_os_user_names_get_real_distinct_accounts(accounts):
    made = {name: accounts.ensure(name) for name in dict.fromkeys(BAD + LOOK_ALIKE)}
    assert len({a.name for a in made.values()}) == len(made)
    assert len({a.uid for a in made.values()}) == len(made)
    assert len({a.home for a in made.values()}) == len(made)
    for hub_name, account in made.items():
        pw = pwd.getpwnam(account.name)  # a real account, under its safe name
        assert pw.pw_uid == account.uid and account.name == account_name(hub_name, accounts.prefix)
        assert len(account.name) <= 32
        st = account.home.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.uid, 0o700), hub_name
        assert accounts.ensure(hub_name) == account  # the same account again, never a second
    assert accounts.registered() == {n: a.uid for n, a in made.items()}


@root
def test_a_foreign_account_under_the_slug_of_an_unsafe_name_is_refused_and_untouched(accounts):
    hub_name = "Mallory.X"
    foreign = account_name(hub_name, accounts.prefix)  # hashed slug: someone made it by hand
    subprocess.run(["useradd", "--no-create-home", foreign], check=True, capture_output=True)
    try:
        before = pwd.getpwnam(foreign)
        with pytest.raises(AccountError) as refused:
            accounts.ensure(hub_name)
        text = str(refused.value)
        assert f"system account {foreign} already exists and was not created by the platform" in (
            text
        )
        assert "refusing to adopt it" in text and "Remove or rename that account" in text
        assert pwd.getpwnam(foreign) == before  # not modified
        assert hub_name not in accounts.registered()
        assert not (Path(accounts.data_dir) / "users").exists() or not any(
            (Path(accounts.data_dir) / "users").iterdir()
        )  # no home handed to it
    finally:
        subprocess.run(["userdel", foreign], check=False, capture_output=True)


@root
async def test_a_job_of_a_user_whose_account_is_foreign_fails_with_the_reason(
    manager_factory, base
):
    make_python_reachable()
    prefix = f"t{secrets.token_hex(2)}"
    iso = MLPIsolation(data_dir=str(base / "data"), account_prefix=prefix + "-",
                       cgroup_parent=f"mlp-test-{prefix}", multi_user=True)
    m = manager_factory()
    m.backend.data_dir = iso.data_dir
    m.backend.isolation = iso
    foreign = account_name("eve", prefix + "-")
    subprocess.run(["useradd", "--no-create-home", foreign], check=True, capture_output=True)
    try:
        job = m.submit("eve", {"name": "j", "source": {"inline": "print('ran')"}})
        job = await wait_for_state(m, job.id, END)
        assert job.state == "Failed"
        assert f"system account {foreign} already exists and was not created by the platform" in (
            job.reason
        )
        # the other users are unaffected: an unsafe name runs as its own account
        ok = m.submit("Eve.Two", {"name": "j", "source": {"inline": "import os; print(os.getuid())"}})
        ok = await wait_for_state(m, ok.id, END)
        assert ok.state == "Succeeded", ok.reason
        uid = int(Path(ok.backend_state["tasks"][0]["log"]).read_text().split()[-1])
        assert uid == pwd.getpwnam(account_name("Eve.Two", prefix + "-")).pw_uid
    finally:
        subprocess.run(["userdel", foreign], check=False, capture_output=True)
        remove_platform_leftovers(base / "data", prefix + "-")
