"""The job manager with the local process backend: real processes, no hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlptest import wait_for_state

from mlp.core.states import JobState

END = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}


def inline(code: str, name: str = "job", **kw):
    return {"name": name, "source": {"inline": code}, **kw}


def pids_of(job) -> list[int]:
    return [t["pid"] for t in job.backend_state["tasks"]]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_every_task_gets_tf_config_params_and_its_own_log(manager_factory, data_dir):
    m = manager_factory()
    code = (
        "import json, os\n"
        "c = json.loads(os.environ['TF_CONFIG'])\n"
        "print(c['task']['type'], c['task']['index'], len(c['cluster']['worker']),\n"
        "      json.loads(os.environ['MLP_PARAMS'])['lr'], os.environ['MLP_TASK_TYPE'],\n"
        "      'JUPYTERHUB_API_TOKEN' in os.environ, os.getcwd())\n"
    )
    job = m.submit("alice", inline(code, tasks={"worker": {"count": 3}}, params={"lr": 0.5}))
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Succeeded", job.reason
    logs = m.backend.log_paths(job.id, job.backend_state)
    assert sorted(logs) == ["worker:0", "worker:1", "worker:2"]
    for i in range(3):
        line = Path(logs[f"worker:{i}"]).read_text().strip()
        assert line.startswith(f"worker {i} 3 0.5 worker False ")
        assert line.endswith("/users/alice/mlp-jobs/1-job")
    ports = {t["address"] for t in job.backend_state["tasks"]}
    assert len(ports) == 3
    states = [e.to_state for e in m.store.events(job.id)]
    assert states == ["Queued", "Starting", "Running", "Succeeded"]


async def test_failing_worker_fails_the_job_naming_task_and_exit_code(manager_factory):
    m = manager_factory()
    code = "import os, sys, time\nif os.environ['MLP_TASK_INDEX'] == '1': sys.exit(3)\ntime.sleep(60)"
    job = m.submit("alice", inline(code, tasks={"worker": {"count": 2}}))
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed"
    assert "task worker:1 exited with code 3" in job.reason
    # the surviving worker was stopped with the job
    for pid in pids_of(job):
        assert gone(pid)


async def test_code_that_does_not_parse_fails_with_traceback_in_log(manager_factory):
    m = manager_factory()
    job = m.submit("alice", inline("def broken(:\n    pass\n"))
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed" and "worker:0 exited with code 1" in job.reason
    log = Path(job.backend_state["tasks"][0]["log"]).read_text()
    assert "SyntaxError" in log
    # the manager lives on and runs the next job
    ok = m.submit("alice", inline("print('fine')", name="next"))
    assert (await wait_for_state(m, ok.id, END)).state == "Succeeded"


async def test_timeout_kills_everything(manager_factory):
    m = manager_factory()
    job = m.submit("alice", inline("import time; time.sleep(120)", max_runtime=1))
    job = await wait_for_state(m, job.id, END, timeout=30)
    assert job.state == "TimedOut"
    assert "max_runtime of 1 s" in job.reason
    assert all(gone(p) for p in pids_of(job))


async def test_cancel_ends_the_whole_process_group(manager_factory, tmp_path):
    m = manager_factory()
    marker = tmp_path / "child.pid"
    # The task starts a grandchild; cancelling must end it too (process group).
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    job = m.submit("alice", inline(code))
    job = await wait_for_state(m, job.id, {JobState.RUNNING})
    deadline = time.monotonic() + 30
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(marker.read_text())
    job = await m.cancel(job.id, by="alice")
    assert job.state == "Cancelled" and job.reason == "cancelled by alice"
    assert all(gone(p) for p in pids_of(job))
    deadline = time.monotonic() + 5
    while not gone(grandchild):
        assert time.monotonic() < deadline, "grandchild survived the cancel"
        time.sleep(0.05)


async def test_task_ignoring_sigterm_is_killed_after_grace(manager_factory):
    m = manager_factory()
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(300)"
    job = m.submit("alice", inline(code))
    job = await wait_for_state(m, job.id, {JobState.RUNNING})
    time.sleep(0.5)  # let the handler be installed
    t0 = time.monotonic()
    job = await m.cancel(job.id, by="alice")
    assert job.state == "Cancelled"
    assert 1.5 < time.monotonic() - t0 < 10  # grace period of 2 s, then SIGKILL
    assert all(gone(p) for p in pids_of(job))


async def test_cancel_a_queued_or_finished_job(manager_factory):
    m = manager_factory()
    job = m.submit("alice", inline("print(1)"))
    job = await m.cancel(job.id, by="bob")
    assert job.state == "Cancelled"
    assert (await m.cancel(job.id, by="bob")).state == "Cancelled"


async def test_ps_tasks_are_stopped_when_the_chief_finishes(manager_factory):
    m = manager_factory()
    code = (
        "import os, time\n"
        "if os.environ['MLP_TASK_TYPE'] in ('ps', 'worker'): time.sleep(300)\n"
        "time.sleep(1); print('chief done')\n"
    )
    job = m.submit("alice", inline(code, tasks={"ps": {"count": 2}, "worker": {"count": 1}}))
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Succeeded" and job.reason == "chief finished"
    assert [t["name"] for t in job.backend_state["tasks"]] == ["chief:0", "ps:0", "ps:1",
                                                               "worker:0"]
    assert all(gone(p) for p in pids_of(job))


async def test_a_dying_ps_fails_the_job(manager_factory):
    m = manager_factory()
    code = (
        "import os, sys, time\n"
        "if os.environ['MLP_TASK_TYPE'] == 'ps': time.sleep(0.5); sys.exit(0)\n"
        "time.sleep(300)\n"
    )
    job = m.submit("alice", inline(code, tasks={"ps": {"count": 1}, "worker": {"count": 1}}))
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed" and "ps:0 exited before the training finished" in job.reason


async def test_running_jobs_are_adopted_after_a_restart(manager_factory):
    m1 = manager_factory()
    job = m1.submit("alice", inline("import time; time.sleep(3); print('done')"))
    job = await wait_for_state(m1, job.id, {JobState.RUNNING})
    await m1.stop()
    # A new service on the same store: the process is not its child any more.
    m2 = manager_factory()
    assert m2.get(job.id).state == "Running"
    job = await wait_for_state(m2, job.id, END)
    assert job.state == "Succeeded", job.reason


async def test_adopted_failure_keeps_its_exit_code(manager_factory):
    m1 = manager_factory()
    job = m1.submit("alice", inline("import sys, time; time.sleep(2); sys.exit(7)"))
    job = await wait_for_state(m1, job.id, {JobState.RUNNING})
    await m1.stop()
    m2 = manager_factory()
    job = await wait_for_state(m2, job.id, END)
    assert job.state == "Failed" and "exited with code 7" in job.reason


async def test_jobs_whose_processes_vanished_are_marked_lost(manager_factory):
    m1 = manager_factory()
    job = m1.submit("alice", inline("import time; time.sleep(300)", tasks={"worker": {"count": 2}}))
    job = await wait_for_state(m1, job.id, {JobState.RUNNING})
    await m1.stop()
    m1.backend._children.clear()  # as if that service process were gone
    for pid in pids_of(job):
        os.killpg(pid, 9)
        os.waitpid(pid, 0)
    m2 = manager_factory()
    job = m2.get(job.id)
    assert job.state == "Failed"
    assert job.reason.startswith("lost after restart: task worker:0")


async def test_recycled_pid_is_not_adopted(manager_factory):
    m1 = manager_factory()
    job = m1.submit("alice", inline("import time; time.sleep(300)"))
    job = await wait_for_state(m1, job.id, {JobState.RUNNING})
    await m1.stop()
    # Pretend the recorded process started at another time: a different process with our pid.
    state = dict(job.backend_state)
    state["tasks"] = [dict(t, create_time=t["create_time"] - 1000) for t in state["tasks"]]
    real = job.backend_state
    m1.store.update(job.id, backend_state=state)
    m1.backend._children.clear()
    m2 = manager_factory()
    assert m2.get(job.id).state == "Failed"
    await m2.backend.stop(job.id, real)


@pytest.fixture
def git_daemon(tmp_path: Path):
    """`git daemon` on a free loopback port serving tmp_path/repos over git://; yields the base
    URL. The backend refuses file:// and loopback sources unless an admin allows them, so
    the tests allow 127.0.0.0/8 (c.OutboundPolicy.allow_networks)."""
    import socket

    from mlptest import free_port

    base = tmp_path / "repos"
    base.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.05)
    yield f"git://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def make_repo(path: Path) -> str:
    path.mkdir()
    (path / "sub").mkdir()
    (path / "sub" / "train.py").write_text("import helper; print('from git', helper.X)\n")
    (path / "sub" / "helper.py").write_text("X = 42\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "init"],
                ["tag", "v1"]):
        subprocess.run(["git", *cmd], cwd=path, check=True, env=env)
    return f"file://{path}"


async def test_git_source_is_cloned_into_the_job_folder(manager_factory, tmp_path, git_daemon):
    make_repo(tmp_path / "repos" / "repo")
    url = f"{git_daemon}/repo"
    m = manager_factory()
    m.backend.outbound.allow_networks = ["127.0.0.0/8"]
    job = m.submit("alice", {"name": "g", "source": {"git": url, "ref": "v1",
                                                      "path": "sub/train.py"}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Succeeded", job.reason
    assert Path(job.backend_state["script"]).is_relative_to(Path(job.backend_state["workdir"]))
    assert Path(job.backend_state["tasks"][0]["log"]).read_text().strip() == "from git 42"


async def test_git_url_that_cannot_be_cloned(manager_factory, tmp_path, git_daemon):
    m = manager_factory()
    m.backend.outbound.allow_networks = ["127.0.0.0/8"]
    job = m.submit("alice", {"name": "g", "source": {"git": f"{git_daemon}/nothing"}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed"
    assert f"git clone of {git_daemon}/nothing" in job.reason and "exit code 128" in job.reason
    assert "setup" in m.backend.log_paths(job.id, job.backend_state)


@pytest.mark.parametrize("url", ["file:///etc", "/srv/repos/x.git"])
def test_local_git_sources_are_refused_at_submit(url):
    from mlp.core.spec import SpecError, validate_spec

    with pytest.raises(SpecError, match="file:// and local paths are refused"):
        validate_spec({"name": "g", "source": {"git": url}})


@pytest.mark.parametrize("url,why", [
    ("git://127.0.0.1:9/x", "loopback address"),
    ("https://169.254.169.254/x.git", "cloud metadata"),
    ("ssh://git@10.0.0.7/x.git", "private or reserved"),
])
async def test_git_sources_into_the_platforms_network_are_refused(manager_factory, url, why):
    m = manager_factory()
    job = m.submit("alice", {"name": "g", "source": {"git": url}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed" and why in job.reason, job.reason
    setup = Path(m.backend.log_paths(job.id, job.backend_state)["setup"]).read_text()
    assert "refused" in setup


async def test_git_ref_that_does_not_exist(manager_factory, tmp_path, git_daemon):
    make_repo(tmp_path / "repos" / "repo")
    url = f"{git_daemon}/repo"
    m = manager_factory()
    m.backend.outbound.allow_networks = ["127.0.0.0/8"]
    job = m.submit("alice", {"name": "g", "source": {"git": url, "ref": "nope"}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed" and "git checkout" in job.reason and "ref nope" in job.reason


async def test_path_source_runs_in_the_users_folder(manager_factory, data_dir):
    home = data_dir / "users" / "alice" / "project"
    home.mkdir(parents=True)
    (home / "train.py").write_text("import lib; print(lib.V)\n")
    (home / "lib.py").write_text("V = 'sibling import works'\n")
    m = manager_factory()
    job = m.submit("alice", {"name": "p", "source": {"path": "project/train.py"}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Succeeded", job.reason
    assert "sibling import works" in Path(job.backend_state["tasks"][0]["log"]).read_text()


async def test_missing_path_and_symlink_escape(manager_factory, data_dir, tmp_path):
    m = manager_factory()
    job = m.submit("alice", {"name": "p", "source": {"path": "nope.py"}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed" and "does not exist in your home folder" in job.reason
    home = data_dir / "users" / "alice"
    (tmp_path / "secret.py").write_text("print('escaped')")
    (home / "link.py").symlink_to(tmp_path / "secret.py")
    job = m.submit("alice", {"name": "p2", "source": {"path": "link.py"}})
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Failed" and "outside your home folder" in job.reason


async def test_unknown_runtime_is_refused_at_submit(manager_factory):
    from mlp.core.manager import RuntimeNotConfigured

    m = manager_factory()
    with pytest.raises(RuntimeNotConfigured, match=r"'tf-1\.15' is not configured; available: "
                                                   r"default"):
        m.submit("alice", inline("print(1)", runtime="tf-1.15"))
    assert m.store.list_jobs() == []


async def test_named_runtime_is_used(manager_factory, tmp_path):
    wrapper = tmp_path / "py"
    wrapper.write_text(f"#!/bin/sh\nexport FROM_RUNTIME=yes\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    m = manager_factory(runtimes={"default": [sys.executable], "custom": [str(wrapper)]})
    job = m.submit("alice", inline("import os; print(os.environ['FROM_RUNTIME'])",
                                   runtime="custom"))
    job = await wait_for_state(m, job.id, END)
    assert job.state == "Succeeded"
    assert Path(job.backend_state["tasks"][0]["log"]).read_text().strip() == "yes"


async def test_preempting_a_job_that_ignores_sigterm(manager_factory):
    """A borrowed job is reclaimed by its lender even if it ignores SIGTERM: it is killed after
    the grace period, marked Preempted and queued again with its attempt count."""
    big = {"cpu": 64, "memory": "256Gi"}
    quota = {
        "pools": {"default": {"capacity": big}},
        "groups": {
            "lender": {"cohort": "c", "limits": {"default": {"cpu": 1, "memory": "8Gi"}},
                       "lend_limit": {"default": {"cpu": 1, "memory": "8Gi"}}},
            "borrower": {"cohort": "c", "limits": {"default": {"cpu": 1, "memory": "8Gi"}}},
        },
        "default_group_quota": {"limits": {"default": big}},
    }
    m = manager_factory(quota=quota)
    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('up', flush=True)\ntime.sleep(300)")
    spec = {"tasks": {"worker": {"cpu": 1, "memory": "1Gi"}}}
    own = m.submit("bo", inline("import time; time.sleep(300)", name="own", **spec),
                   hub_groups=["borrower"])
    await wait_for_state(m, own.id, {JobState.RUNNING})
    victim = m.submit("bo", inline(stubborn, name="victim", **spec), hub_groups=["borrower"])
    victim = await wait_for_state(m, victim.id, {JobState.RUNNING})
    assert m.holding(victim)["preemptible"] is True
    time.sleep(0.5)  # the SIGTERM handler is installed
    pids = pids_of(victim)
    lender = m.submit("le", inline("import time; time.sleep(300)", name="mine", **spec),
                      hub_groups=["lender"])
    await wait_for_state(m, lender.id, {JobState.RUNNING}, timeout=30)
    victim = await wait_for_state(m, victim.id, {JobState.QUEUED}, timeout=30)
    assert victim.attempt == 2 and "attempt 2" in victim.reason
    assert [e.to_state for e in m.store.events(victim.id)][-2:] == ["Preempted", "Queued"]
    assert all(gone(p) for p in pids)
    assert m.get(own.id).state == "Running"


async def test_dependency_chains_settle_only_when_a_job_ends(manager_factory, tmp_path):
    """A chain waits for its dependency; a failure fails the whole chain below it; passes in
    which no job ended leave the waiting jobs alone (they cost no store reads)."""
    m = manager_factory()
    gate = tmp_path / "go"
    code = f"import pathlib, sys, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)\nsys.exit(int(pathlib.Path({str(gate)!r}).read_text()))"
    root = m.submit("alice", inline(code, name="root"))
    child = m.submit("alice", inline("print('child')", name="child", depends_on=[root.id]))
    grandchild = m.submit("alice", inline("print('gc')", name="gc", depends_on=[child.id]))
    await wait_for_state(m, root.id, {JobState.RUNNING})
    reads = 0
    real_get = m.store.get_job

    def counting_get(job_id):
        nonlocal reads
        reads += job_id in (child.id, grandchild.id)
        return real_get(job_id)

    m.store.get_job = counting_get
    await m.tick()  # settles what the submissions left to check
    reads = 0
    for _ in range(3):
        await m.tick()
    assert reads == 0, "waiting jobs were re-read although no job ended"
    m.store.get_job = real_get
    assert m.get(child.id).reason.startswith("waiting for job")
    gate.write_text("4")
    root_end = await wait_for_state(m, root.id, END)
    assert root_end.state == "Failed"
    child_end = await wait_for_state(m, child.id, END)
    gc_end = await wait_for_state(m, grandchild.id, END)
    assert child_end.state == "Failed" and f"job {root.id} ended Failed" in child_end.reason
    assert gc_end.state == "Failed" and f"job {child.id} ended Failed" in gc_end.reason

    ok_root = m.submit("alice", inline("print('ok')", name="ok-root"))
    after = m.submit("alice", inline("print('after')", name="after", depends_on=[ok_root.id]))
    assert (await wait_for_state(m, after.id, END)).state == "Succeeded"
