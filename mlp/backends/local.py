"""The embedded default's backend: every task of a job is a local process on this machine.

Each task runs in its own process group (so cancel ends everything it started) under a tiny
`/bin/sh` wrapper that records the exit code in a file: after a restart of the service the tasks
are no longer its children, and that file is how their outcome is still known.
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
from traitlets import Float, Unicode

from mlp.backends.base import JobBackend, JobLaunch, Observation, SetupError, TaskStatus
from mlp.core.paths import job_dir, user_home
from mlp.core.ports import free_ports

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

    # Popen handles of tasks this process started; adopted tasks are watched through psutil.
    _children: dict[int, subprocess.Popen[bytes]]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._children = {}

    # ------------------------------------------------------------------ submit
    async def _prepare_source(self, launch: JobLaunch, workdir: Path) -> Path:
        spec = launch.spec
        home = user_home(self.data_dir, launch.user)
        src = spec.source
        if "inline" in src:
            target = workdir / "src" / "main.py"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(src["inline"], encoding="utf-8")
            return target
        if "git" in src:
            return await self._clone(src, workdir)
        script = (home / src["path"]).resolve()
        if not script.is_relative_to(home.resolve()):
            raise SetupError(f"source.path {src['path']!r} points outside your home folder")
        if not script.is_file():
            raise SetupError(
                f"source.path {src['path']!r} does not exist in your home folder "
                f"({home}); upload the script or fix the path"
            )
        return script

    async def _clone(self, src: dict[str, str], workdir: Path) -> Path:
        checkout = workdir / "src"
        if checkout.exists():
            shutil.rmtree(checkout)
        log = workdir / "logs" / "setup.log"
        git = shutil.which(self.git_command)
        if git is None:
            raise SetupError(f"git ({self.git_command}) is not installed on the platform host")
        env = {"PATH": os.environ.get("PATH", ""), "GIT_TERMINAL_PROMPT": "0", "HOME": str(workdir)}
        steps = [
            [git, "clone", "--quiet", "--no-checkout", src["git"], str(checkout)],
            [git, "-C", str(checkout), "checkout", "--quiet", src["ref"]],
        ]
        if src["ref"] == "HEAD":
            steps[1] = [git, "-C", str(checkout), "checkout", "--quiet"]
        with open(log, "ab") as out:
            for cmd in steps:
                out.write(f"$ {' '.join(cmd)}\n".encode())
                out.flush()
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
                )
                try:
                    rc = await asyncio.wait_for(proc.wait(), self.git_timeout)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    raise SetupError(
                        f"git clone of {src['git']} took longer than {self.git_timeout:g} s"
                    ) from None
                if rc != 0:
                    last = log.read_text(errors="replace").strip().splitlines()[-1:]
                    raise SetupError(
                        f"git {cmd[1] if cmd[1] != '-C' else cmd[3]} of {src['git']} "
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
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        (workdir / "run").mkdir(exist_ok=True)
        try:
            script = await self._prepare_source(launch, workdir)
        except SetupError as e:
            e.backend_state = {"workdir": str(workdir), "tasks": []}
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
        tasks: list[dict[str, Any]] = []
        try:
            for role, index in names:
                name = f"{role}:{index}"
                env = dict(base_env)
                env.update(spec.env)
                env.update(
                    TF_CONFIG=json.dumps(
                        {"cluster": cluster, "task": {"type": role, "index": index}}
                    ),
                    MLP_TASK_TYPE=role,
                    MLP_TASK_INDEX=str(index),
                )
                if spec.tasks[role].gpu == 0:
                    env["CUDA_VISIBLE_DEVICES"] = ""
                exit_file = workdir / "run" / f"{role}-{index}.exit"
                exit_file.unlink(missing_ok=True)
                log_path = workdir / "logs" / f"{role}-{index}.log"
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
                        cwd=workdir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
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
                    }
                )
        except BaseException:
            await self.stop(launch.job_id, {"tasks": tasks})
            raise
        return {"workdir": str(workdir), "script": str(script), "tasks": tasks}

    # ------------------------------------------------------------------ observe
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
        exit_file = Path(t["exit_file"])
        if exit_file.exists():
            try:
                code = int(exit_file.read_text().strip())
            except ValueError:
                code = -1
            if code > 128:
                status.signal = code - 128
            status.exit_code = code
        elif proc is not None and proc.returncode is not None and proc.returncode < 0:
            status.signal = -proc.returncode
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
        live = [t for t in targets if self._group_alive(t)]
        for t in live:
            _signal_group(t["pid"], signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_period
        while live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            live = [t for t in live if self._group_alive(t)]
        for t in live:
            self.log.warning("job %s task %s ignored SIGTERM; killing it", job_id, t["name"])
            _signal_group(t["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while live and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            live = [t for t in live if self._group_alive(t)]

    def _group_alive(self, t: dict[str, Any]) -> bool:
        """Whether anything of the task's process group is left (the wrapper may be gone while
        the training process, which ignored SIGTERM, lives on)."""
        proc = self._children.get(t["pid"])
        if proc is not None and proc.poll() is not None:
            self._children.pop(t["pid"], None)  # reap the wrapper
        try:
            os.killpg(t["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log_paths(self, job_id: int, backend_state: dict[str, Any]) -> dict[str, str]:
        paths: dict[str, str] = {}
        workdir = backend_state.get("workdir")
        if workdir and (Path(workdir) / "logs" / "setup.log").exists():
            paths["setup"] = str(Path(workdir) / "logs" / "setup.log")
        for t in backend_state.get("tasks", []):
            paths[t["name"]] = t["log"]
        return paths


def _alive(pid: int, create_time: float) -> bool:
    """True if `pid` is still the process we started (not a recycled pid) and not a zombie."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
