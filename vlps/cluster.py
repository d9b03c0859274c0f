"""The job's TensorFlow cluster as the platform describes it in TF_CONFIG, and the ps/worker
side of it: start a `tf.distribute.Server` and serve until told to stop.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vlps")

#: Seconds a process whose cluster lost a task may take to exit once its interpreter shuts
#: down; past it the process prints every thread's stack and exits with status 1 (see
#: `guard_exit`).
EXIT_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class ClusterInfo:
    """The parsed TF_CONFIG: `cluster` maps job names to addresses; empty means one process."""

    cluster: dict[str, list[str]] = field(default_factory=dict)
    task_type: str = "chief"
    task_index: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClusterInfo:
        raw = (env if env is not None else os.environ).get("TF_CONFIG", "")
        if not raw.strip():
            return cls()
        try:
            cfg = json.loads(raw)
            cluster = {k: list(v) for k, v in cfg.get("cluster", {}).items()}
            task = cfg.get("task", {})
            info = cls(cluster, str(task.get("type", "chief")), int(task.get("index", 0)))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"TF_CONFIG is not valid JSON of the TF_CONFIG shape: {e}") from None
        if info.cluster and info.task_type not in info.cluster:
            raise ValueError(f"TF_CONFIG task type {info.task_type!r} is not in its cluster "
                             f"{sorted(info.cluster)}")
        if info.cluster.get("ps") and "chief" not in info.cluster:
            raise ValueError("TF_CONFIG has ps tasks but no chief: vlps needs a chief to "
                             "coordinate ParameterServerStrategy")
        return info

    @property
    def distributed(self) -> bool:
        return bool(self.cluster.get("ps"))

    @property
    def task(self) -> str:
        return f"{self.task_type}:{self.task_index}"

    def address(self, task_type: str, index: int) -> str:
        return self.cluster[task_type][index]

    def tasks(self) -> list[tuple[str, str]]:
        """(name, address) of every ps and worker task, e.g. ("ps:1", "host:2223")."""
        return [(f"{ttype}:{i}", addr) for ttype in ("ps", "worker")
                for i, addr in enumerate(self.cluster.get(ttype, []))]

    def unreachable_tasks(self, timeout: float = 2.0) -> list[str]:
        """ps/worker tasks that do not answer a gRPC handshake within `timeout` seconds, as
        "ps:1 (host:port)" (used to name a dead task)."""
        answered = probe_tasks(dict(self.tasks()), timeout)
        return [f"{name} ({addr})" for name, addr in self.tasks() if not answered[name]]


def probe_tasks(tasks: dict[str, str], timeout: float) -> dict[str, bool]:
    """Whether each task's gRPC server completes a handshake within `timeout` seconds.

    A fresh channel per probe (and its own subchannel pool): a connection that is already
    open says nothing of a task that stopped answering since. A stopped (SIGSTOP) or hung
    process still has its port open, so a TCP connect alone would succeed; the HTTP/2
    handshake needs the process itself to answer. All tasks are probed at once."""
    import grpc  # grpcio ships with TensorFlow; imported here to keep `import vlps` light

    channels = {name: grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool",
                                                             1)])
                for name, addr in tasks.items()}
    try:
        futures = {name: grpc.channel_ready_future(ch) for name, ch in channels.items()}
        deadline = time.monotonic() + timeout
        out = {}
        for name, fut in futures.items():
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
                out[name] = True
            except grpc.FutureTimeoutError:
                out[name] = False
        return out
    finally:
        for ch in channels.values():
            ch.close()


class TaskWatch:
    """Probes the ps and worker tasks in a background thread while a cluster job trains.

    TensorFlow's coordinator waits on a lost task without a deadline in several paths (a
    stopped or hung process, or a ps failure taken for a worker preemption, which it waits
    up to an hour to see recovered). The watch declares a task dead once it has not answered
    a handshake (`probe_tasks`) for `timeout` seconds in a row; the trainer's waits then fail
    with the task's name instead of hanging."""

    def __init__(self, tasks: dict[str, str], timeout: float, interval: float = 1.0,
                 probe_timeout: float = 2.0) -> None:
        self.tasks = dict(tasks)
        self.timeout = timeout
        self.interval = interval
        self.probe_timeout = min(probe_timeout, timeout)
        self._silent_since: dict[str, float] = {}
        self._dead: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __enter__(self) -> TaskWatch:
        threading.Thread(target=self._run, name="vlps-task-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def dead(self) -> list[str]:
        """Tasks silent for at least `timeout` seconds, as "ps:1 (host:port)"."""
        with self._lock:
            return list(self._dead)

    def check_once(self, now: float | None = None) -> list[str]:
        """One round of probes; returns `dead()` after it."""
        answered = probe_tasks(self.tasks, self.probe_timeout)
        now = time.monotonic() if now is None else now
        with self._lock:
            for name, ok in answered.items():
                if ok:
                    self._silent_since.pop(name, None)
                else:
                    self._silent_since.setdefault(name, now - self.probe_timeout)
            self._dead = [f"{name} ({self.tasks[name]})" for name, since in
                          sorted(self._silent_since.items()) if now - since >= self.timeout]
            return list(self._dead)

    def _run(self) -> None:
        reported: list[str] = []
        while not self._stop.is_set():
            started = time.monotonic()
            dead = self.check_once()
            if dead and dead != reported:
                log.error("vlps: %s not answering for %.0f s", ", ".join(dead), self.timeout)
            reported = dead
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def run_server_if_needed(info: ClusterInfo | None = None) -> None:
    """On a ps or worker task, serve the cluster and exit when stopped; else return at once.

    Call it at the top of a training script (vlps.Trainer does): the same script then works as
    the chief, as a ps/worker task, and without TF_CONFIG in one process."""
    info = info or ClusterInfo.from_env()
    if not info.distributed or info.task_type not in ("ps", "worker"):
        return
    import tensorflow as tf

    def stop(signum: int, frame: Any) -> None:
        # The platform stops ps and workers with SIGTERM once the chief exits 0.
        log.info("vlps %s: signal %d, exiting", info.task, signum)
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The chief places the tables' ops here: this process must know vlps's kernels.
    from vlps import native

    native.ops()
    server = tf.distribute.Server(
        tf.train.ClusterSpec(info.cluster), job_name=info.task_type, task_index=info.task_index,
        protocol="grpc", start=True,
    )
    log.info("vlps %s serving at %s", info.task, info.address(info.task_type, info.task_index))
    print(f"vlps {info.task} serving", flush=True)
    # Not server.join(): it blocks in C++ and Python signal handlers would never run.
    while server is not None:
        time.sleep(3600)


_exit_guarded = False


def guard_exit() -> None:
    """Once a job lost a task: bound how long the interpreter may take to shut down.

    TensorFlow's teardown of the coordinator can wait for the lost task (its failure handler
    holds a lock while it waits for the cluster to come back), so a chief that failed could
    hang at exit instead of reporting its status. At interpreter exit this arms
    `faulthandler`'s timer: a shutdown that takes longer than `EXIT_GRACE_SECONDS` prints
    every thread's stack to stderr and exits with status 1. A normal shutdown is untouched."""
    global _exit_guarded
    if _exit_guarded:
        return
    _exit_guarded = True

    def arm() -> None:
        print(f"vlps: the cluster lost a task; exiting (at most {EXIT_GRACE_SECONDS:g} s "
              "for TensorFlow's teardown)", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(EXIT_GRACE_SECONDS, exit=True)

    atexit.register(arm)


def run_in_thread(fn: Callable[..., Any], *args: Any) -> tuple[threading.Event, dict[str, Any]]:
    """Start `fn(*args)` in a daemon thread; the event is set once it returned ("value") or
    raised ("error") into the dict. For ops the chief runs against the ps tasks, which could
    block on a hung task where the calling thread can no longer watch it."""
    out: dict[str, Any] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # re-raised by the caller
            out["error"] = e
        finally:
            finished.set()

    threading.Thread(target=run, name="vlps-chief-op", daemon=True).start()
    return finished, out
