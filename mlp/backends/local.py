"""The embedded default's backend: every task of a job is a local process on this machine.

Each task runs in its own process group (so cancel ends everything it started) under a tiny
`/bin/sh` wrapper that records the exit code in a file: after a restart of the service the tasks
are no longer its children, and that file is how their outcome is still known.

Longer than 500 lines because one task's start is a chain that must stay in order and be
undone as one when a step fails: source preparation as the user's account, ports, cgroup,
`TF_CONFIG`, the privilege drop and the exit-code wrapper. The account, cgroup and address
rules themselves live in `mlp.isolation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
from traitlets import Any as AnyTrait
from traitlets import Float, Unicode

from mlp.backends.base import JobBackend, JobLaunch, Observation, SetupError, TaskStatus
from mlp.core.paths import job_dir, user_home
from mlp.core.ports import free_ports
from mlp.isolation.accounts import Account, AccountError
from mlp.isolation.cgroups import Cgroup, CgroupError, Limits
from mlp.isolation.names import task_cgroup_name
from mlp.isolation.netguard import OutboundPolicy, UnsafeURL
from mlp.isolation.process import make_preexec, private_dir, run_as_env
from mlp.scheduling.resources import format_memory

# Runs "$@" and records its exit status atomically in the file named by $0.
_WRAPPER = '"$@"; rc=$?; echo $rc > "$0.tmp" && mv "$0.tmp" "$0"; exit $rc'
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "LD_LIBRARY_PATH")


def task_names(spec_tasks: dict[str, Any]) -> list[tuple[str, int]]:
    return [(role, i) for role, t in spec_tasks.items() for i in range(t.count)]


class LocalProcessBackend(JobBackend):
    """Runs each task as a subprocess on localhost with TF_CONFIG pointing at free ports."""

    data_dir = Unicode(
        config=True,
        help="""Root of the per-user folders; jobs run in <data_dir>/users/<user>/mlp-jobs/.
        Set by MLPService from its own data_dir.""",
    )
    host = Unicode(
        "127.0.0.1",
        config=True,
        help="Address the tasks' gRPC servers listen on and reach each other by.",
    )
    git_timeout = Float(
        300.0, config=True, help="Seconds allowed for `git clone` of a job's source."
    )
    git_command = Unicode("git", config=True, help="The git executable used to fetch sources.")
    isolation = AnyTrait(
        None,
        allow_none=True,
        help="""The service's MLPIsolation: tasks run as the job owner's system account, each
        in a cgroup sized by its reservation. None (direct use, tests of the backend alone):
        tasks run as the service's own user without limits.""",
    )

    # Popen handles of tasks this process started; adopted tasks are watched through psutil.
    _children: dict[int, subprocess.Popen[bytes]]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._children = {}
        self._oom_killed: dict[str, str] = {}  # cgroup name -> memory limit, once removed
        self.outbound = OutboundPolicy(parent=self, log=self.log)

    # ------------------------------------------------------------------ isolation
    def _account(self, user: str) -> Account | None:
        if self.isolation is None:
            return None
        try:
            account: Account | None = self.isolation.account(user)
        except AccountError as e:
            raise SetupError(str(e)) from None
        return account

    def _cgroups(self) -> Any:
        if self.isolation is None or not self.isolation.cgroups.available:
            return None
        return self.isolation.cgroups

    def _private_dir(self, job_id: int) -> Path:
        """Logs and exit files, written by the service: never inside a folder a user controls
        (a user could plant symbolic links there)."""
        jobs = private_dir(Path(self.data_dir) / "jobs", 0o711)
        return private_dir(jobs / str(job_id), 0o711)

    async def _run_as(self, account: Account | None, cmd: list[str], log: Any,
                      env: dict[str, str], cwd: Path | None, what: str,
                      stdin: bytes | None = None) -> int:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            preexec_fn=make_preexec(account, None, cwd) if account or cwd else None,
        )
        try:
            await asyncio.wait_for(proc.communicate(stdin), self.git_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SetupError(f"{what} took longer than {self.git_timeout:g} s") from None
        return proc.returncode if proc.returncode is not None else -1

    # ------------------------------------------------------------------ submit
    async def _prepare_source(
        self, launch: JobLaunch, workdir: Path, account: Account | None, log: Path
    ) -> Path:
        spec = launch.spec
        home = user_home(self.data_dir, launch.user)
        src = spec.source
        if "inline" in src:
            target = workdir / "src" / "main.py"
            if account is None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(src["inline"], encoding="utf-8")
                return target
            # Written by the account itself: root never writes into a user's folder.
            rc = await self._run_as(
                account,
                ["/bin/sh", "-c", "mkdir -p src && cat > src/main.py"],
                subprocess.DEVNULL, {"PATH": "/usr/bin:/bin"}, workdir,
                "writing the inline source", stdin=src["inline"].encode("utf-8"),
            )
            if rc != 0:
                raise SetupError(f"cannot write the inline source into {workdir} (exit {rc})")
            return target
        if "git" in src:
            return await self._clone(src, workdir, account, log)
        script = (home / src["path"]).resolve()
        if not script.is_relative_to(home.resolve()):
            raise SetupError(f"source.path {src['path']!r} points outside your home folder")
        if not script.is_file():
            raise SetupError(
                f"source.path {src['path']!r} does not exist in your home folder "
                f"({home}); upload the script or fix the path"
            )
        return script

    async def _clone(
        self, src: dict[str, str], workdir: Path, account: Account | None, log: Path
    ) -> Path:
        checkout = workdir / "src"
        git = shutil.which(self.git_command)
        if git is None:
            raise SetupError(f"git ({self.git_command}) is not installed on the platform host")
        try:
            await self.outbound.check_url(src["git"], "source.git", ("https", "http", "ssh", "git"))
        except UnsafeURL as e:
            with open(log, "ab") as out:
                out.write(f"refused: {e}\n".encode())
            raise SetupError(str(e)) from None
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_TERMINAL_PROMPT": "0",
            "HOME": str(workdir),
            # No system or user git configuration: it could redirect URLs (insteadOf), run
            # helpers or hooks chosen by someone else.
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_ALLOW_PROTOCOL": "https:http:ssh:git",
        }
        steps = [
            ["rm", "-rf", "--", "src"],
            [git, "clone", "--quiet", "--no-checkout", "--", src["git"], "src"],
            [git, "-C", "src", "checkout", "--quiet", src["ref"], "--"],
        ]
        if src["ref"] == "HEAD":
            steps[2] = [git, "-C", "src", "checkout", "--quiet"]
        with open(log, "ab") as out:
            for cmd in steps:
                out.write(f"$ {' '.join(cmd)}\n".encode())
                out.flush()
                rc = await self._run_as(
                    account, cmd, out, env, workdir, f"git clone of {src['git']}"
                )
                if rc != 0:
                    last = log.read_text(errors="replace").strip().splitlines()[-1:]
                    verb = "rm" if cmd[0] == "rm" else cmd[1] if cmd[1] != "-C" else cmd[3]
                    raise SetupError(
                        f"git {verb} of {src['git']} "
                        f"(ref {src['ref']}) failed with exit code {rc}: "
                        f"{last[0] if last else 'no output'}; check the URL, the ref and that "
                        "the platform can reach the repository (see the 'setup' log)"
                    )
        script = (checkout / src["path"]).resolve()
        if not script.is_relative_to(checkout.resolve()) or not script.is_file():
            raise SetupError(f"source.path {src['path']!r} is not a file in {src['git']}")
        return script

    async def submit(self, launch: JobLaunch) -> dict[str, Any]:
        spec = launch.spec
        workdir = job_dir(self.data_dir, launch.user, launch.job_id, spec.name)
        private = self._private_dir(launch.job_id)
        logs = private_dir(private / "logs")
        try:
            account = self._account(launch.user)
        except SetupError as e:
            e.backend_state = {"workdir": str(workdir), "private": str(private), "tasks": []}
            raise
        run = private_dir(private / "run")
        if account is None:
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            # The tasks' wrapper (running as the account) records exit codes there.
            os.chown(run, account.uid, account.gid)
            await self._run_as(account, ["mkdir", "-p", "--", str(workdir)], subprocess.DEVNULL,
                               {"PATH": "/usr/bin:/bin"}, None, "creating the job folder")
        state: dict[str, Any] = {"workdir": str(workdir), "private": str(private), "tasks": []}
        try:
            script = await self._prepare_source(launch, workdir, account, logs / "setup.log")
        except SetupError as e:
            e.backend_state = state
            raise

        names = task_names(spec.tasks)
        ports = dict(zip(names, free_ports(len(names), self.host), strict=True))
        cluster: dict[str, list[str]] = {}
        for role, index in names:
            cluster.setdefault(role, []).append(f"{self.host}:{ports[(role, index)]}")

        base_env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        base_env.update(
            HOME=str(user_home(self.data_dir, launch.user)),
            USER=launch.user,
            PYTHONUNBUFFERED="1",
            MLP_JOB_ID=str(launch.job_id),
            MLP_JOB_NAME=spec.name,
            MLP_JOB_DIR=str(workdir),
            MLP_ATTEMPT=str(launch.attempt),
            MLP_PARAMS=json.dumps(spec.params),
            MLP_METRICS_FILE=str(workdir / "metrics.jsonl"),
        )
        base_env = run_as_env(account, base_env)
        cgroups = self._cgroups()
        tasks: list[dict[str, Any]] = state["tasks"]
        devices = _split_devices(launch, names)
        try:
            for role, index in names:
                name = f"{role}:{index}"
                task_spec = spec.tasks[role]
                env = dict(base_env)
                env.update(spec.env)
                env.update(
                    TF_CONFIG=json.dumps(
                        {"cluster": cluster, "task": {"type": role, "index": index}}
                    ),
                    MLP_TASK_TYPE=role,
                    MLP_TASK_INDEX=str(index),
                )
                # the ledger's allocation; "" hides every GPU from a task that reserved none
                gpus = devices[(role, index)]
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                cgroup: Cgroup | None = None
                if cgroups is not None:
                    try:
                        cgroup = cgroups.create(
                            task_cgroup_name(launch.job_id, launch.attempt, name),
                            Limits(cpu=task_spec.cpu or None, memory=task_spec.memory or None),
                        )
                    except CgroupError as e:
                        raise SetupError(f"task {name}: {e}") from None
                exit_file = run / f"{role}-{index}.exit"
                exit_file.unlink(missing_ok=True)
                log_path = logs / f"{role}-{index}.log"
                with open(log_path, "ab") as log:
                    proc = subprocess.Popen(
                        [
                            "/bin/sh",
                            "-c",
                            _WRAPPER,
                            str(exit_file),
                            *launch.python,
                            "-u",
                            str(script),
                            *spec.args,
                        ],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=make_preexec(account, cgroup, workdir),
                    )
                self._children[proc.pid] = proc
                tasks.append(
                    {
                        "name": name,
                        "type": role,
                        "index": index,
                        "pid": proc.pid,
                        "create_time": psutil.Process(proc.pid).create_time(),
                        "address": cluster[role][index],
                        "log": str(log_path),
                        "exit_file": str(exit_file),
                        "cgroup": cgroup.name if cgroup else None,
                        "gpus": gpus,
                        "job_id": launch.job_id,
                        "memory": format_memory(task_spec.memory) if task_spec.memory else None,
                    }
                )
        except BaseException:
            await self.stop(launch.job_id, {"tasks": tasks})
            raise
        state["script"] = str(script)
        return state

    # ------------------------------------------------------------------ observe
    def _cgroup_of(self, t: dict[str, Any]) -> Cgroup | None:
        cgroups = self._cgroups()
        if cgroups is None or not t.get("cgroup"):
            return None
        cg: Cgroup = cgroups.cgroup(t["cgroup"])
        return cg

    def _task_status(self, t: dict[str, Any]) -> TaskStatus:
        status = TaskStatus(
            name=t["name"],
            type=t["type"],
            index=t["index"],
            running=False,
            pid=t["pid"],
            address=t.get("address"),
        )
        proc = self._children.get(t["pid"])
        if proc is not None:
            rc = proc.poll()
            if rc is None:
                status.running = True
                return status
            self._children.pop(t["pid"], None)
        elif _alive(t["pid"], t["create_time"]):
            status.running = True
            return status
        # The wrapper's exit file holds the training process's own exit code; without it the
        # wrapper itself was killed (cancel, OOM killer) before it could write one.
        code = _read_exit_file(Path(t["exit_file"]))
        if code is not None:
            if code > 128:
                status.signal = code - 128
            status.exit_code = code
        elif proc is not None and proc.returncode is not None and proc.returncode < 0:
            status.signal = -proc.returncode
        cg = self._cgroup_of(t)
        if cg is not None:
            if cg.name in self._oom_killed:
                status.memory_limit = self._oom_killed[cg.name]
            elif any(d.exists() for d in cg.dirs.values()):
                if status.signal == signal.SIGKILL and cg.oom_kills() > 0:
                    status.memory_limit = self._oom_killed[cg.name] = t.get("memory") or "?"
                with contextlib.suppress(CgroupError, OSError):
                    cg.remove()
        return status

    def observe_job(self, job_id: int, backend_state: dict[str, Any]) -> Observation:
        return Observation(tasks=[self._task_status(t) for t in backend_state.get("tasks", [])])

    def adopt(self, job_id: int, backend_state: dict[str, Any]) -> Observation:
        obs = self.observe_job(job_id, backend_state)
        gone = [t for t in obs.tasks if not t.running and t.exit_code is None]
        if not backend_state.get("tasks"):
            obs.lost = "lost after restart: the service stopped before the job's tasks started"
        elif gone:
            obs.lost = "lost after restart: " + ", ".join(
                f"task {t.name} (pid {t.pid}) {t.describe_exit()}" for t in gone
            )
        return obs

    # ------------------------------------------------------------------ stop
    async def stop(
        self, job_id: int, backend_state: dict[str, Any], tasks: list[str] | None = None
    ) -> None:
        targets = [t for t in backend_state.get("tasks", []) if tasks is None or t["name"] in tasks]
        live = [t for t in targets if self._members(t)]
        for t in live:
            self._signal(t, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_period
        while live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            live = [t for t in live if self._members(t)]
        for t in live:
            self.log.warning("job %s task %s ignored SIGTERM; killing it", job_id, t["name"])
            self._signal(t, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while live and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            live = [t for t in live if self._members(t)]
        for t in targets:
            cg = self._cgroup_of(t)
            if cg is not None:
                with contextlib.suppress(CgroupError, OSError):
                    cg.remove()

    def _members(self, t: dict[str, Any]) -> list[int]:
        """The processes left of a task: those in its cgroup, or else those of its process
        group that started no earlier than the task (a pid reused by an unrelated process
        after the task ended is never signalled)."""
        proc = self._children.get(t["pid"])
        if proc is not None and proc.poll() is not None:
            self._children.pop(t["pid"], None)  # reap the wrapper
        cg = self._cgroup_of(t)
        if cg is not None and any(d.exists() for d in cg.dirs.values()):
            return cg.pids()
        # The kernel does not hand out a pid while a process group of that id exists: if the
        # pid now belongs to a process younger than the task, the task's group is gone.
        try:
            if abs(psutil.Process(t["pid"]).create_time() - t["create_time"]) > 0.01:
                return []
        except psutil.NoSuchProcess:
            pass
        except psutil.Error:
            return []
        members = []
        for p in psutil.process_iter(["pid", "status"]):
            try:
                zombie = p.info["status"] == psutil.STATUS_ZOMBIE
                if os.getpgid(p.info["pid"]) == t["pid"] and not zombie:
                    members.append(p.info["pid"])
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return members

    def _signal(self, t: dict[str, Any], sig: int) -> None:
        for pid in self._members(t):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def log_paths(self, job_id: int, backend_state: dict[str, Any]) -> dict[str, str]:
        paths: dict[str, str] = {}
        for folder in (backend_state.get("private"), backend_state.get("workdir")):
            if folder and (Path(folder) / "logs" / "setup.log").exists():
                paths["setup"] = str(Path(folder) / "logs" / "setup.log")
                break
        for t in backend_state.get("tasks", []):
            paths[t["name"]] = t["log"]
        return paths


def _split_devices(
    launch: JobLaunch, names: list[tuple[str, int]]
) -> dict[tuple[str, int], list[str]]:
    """The job's devices (allocated by the quota ledger) dealt to its tasks in task order."""
    wanted = sum(launch.spec.tasks[role].gpu for role, _ in names)
    if wanted != len(launch.devices):
        raise SetupError(
            f"the job's tasks request {wanted} GPU(s) but the quota ledger allocated "
            f"{len(launch.devices)} device(s) {list(launch.devices)!r}; this is a platform "
            "error, report it to an admin (see the mlp service log)"
        )
    dealt: dict[tuple[str, int], list[str]] = {}
    left = list(launch.devices)
    for role, index in names:
        count = launch.spec.tasks[role].gpu
        dealt[(role, index)], left = left[:count], left[count:]
    return dealt


def _read_exit_file(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        text = f.read(32).strip()
    try:
        return int(text)
    except ValueError:
        return -1


def _alive(pid: int, create_time: float) -> bool:
    """True if `pid` is still the process we started (not a recycled pid) and not a zombie."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
