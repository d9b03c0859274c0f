"""The small interface every job backend implements: submit, cancel, observe, adopt."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from traitlets import Float, MetaHasTraits
from traitlets.config import LoggingConfigurable

from mlp.core.spec import JobSpec


@dataclass
class JobLaunch:
    """Everything a backend needs to start one job's tasks."""

    job_id: int
    user: str
    spec: JobSpec
    python: list[str]  # the runtime's interpreter command, e.g. ["/usr/bin/python3"]
    attempt: int = 1
    # GPU devices the quota ledger allocated to the job; its tasks take them in task order
    devices: tuple[str, ...] = ()


@dataclass
class TaskStatus:
    name: str  # "worker:0"
    type: str
    index: int
    running: bool
    exit_code: int | None = None  # None while running or when unknown
    signal: int | None = None  # set when the task was killed by a signal
    pid: int | None = None
    address: str | None = None
    memory_limit: str | None = None  # set when the kernel killed the task at its memory limit

    def describe_exit(self) -> str:
        if self.memory_limit is not None:
            return f"exceeded its memory limit {self.memory_limit} and was killed"
        if self.signal is not None:
            return f"was killed by signal {self.signal}"
        if self.exit_code is None:
            return "is gone without an exit status"
        return f"exited with code {self.exit_code}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "index": self.index,
            "state": "running" if self.running else "exited",
            "exit_code": self.exit_code,
            "signal": self.signal,
            "pid": self.pid,
            "address": self.address,
        }


@dataclass
class Observation:
    """A snapshot of a job's tasks, as the backend sees them now."""

    tasks: list[TaskStatus] = field(default_factory=list)
    lost: str | None = None  # set when the backend cannot find the job's tasks any more
    # Set when the backend gives the attempt up without fault of the job (e.g. a cluster that
    # could not place the whole gang in time): the manager releases its quota and requeues it.
    requeue: str | None = None
    # Tasks created but not running yet, each with why (e.g. "pod x (Unschedulable: ...)"):
    # the job stays Starting until none is left.
    pending: list[str] = field(default_factory=list)


class SetupError(RuntimeError):
    """The job could not be started (source missing, git clone failed...): a user-facing reason."""

    backend_state: dict[str, Any] | None = None


class _BackendMeta(ABCMeta, MetaHasTraits):
    """Abstract methods on a traitlets class: both metaclasses at once."""


class JobBackend(LoggingConfigurable, metaclass=_BackendMeta):
    """Runs the tasks of jobs. Subclasses: LocalProcessBackend (embedded default), Kubernetes.

    `backend_state` is a JSON-able dict the backend returns from `submit` and gets back in every
    other call; the service stores it so that `adopt` can find the tasks again after a restart.
    """

    stop_grace_period = Float(
        10.0,
        config=True,
        help="""Seconds between SIGTERM and SIGKILL when stopping a job's tasks (cancel,
        timeout, end of a parameter-server job). Training code can use them to checkpoint.""",
    )

    @abstractmethod
    async def submit(self, launch: JobLaunch) -> dict[str, Any]: ...

    @abstractmethod
    def observe_job(self, job_id: int, backend_state: dict[str, Any]) -> Observation: ...

    @abstractmethod
    async def stop(
        self, job_id: int, backend_state: dict[str, Any], tasks: list[str] | None = None
    ) -> None:
        """Stop all (or the named) tasks: SIGTERM, grace period, SIGKILL."""
        ...

    @abstractmethod
    def adopt(self, job_id: int, backend_state: dict[str, Any]) -> Observation:
        """Find a job's tasks again after a service restart; `lost` says why when it cannot."""
        ...

    @abstractmethod
    def log_paths(self, job_id: int, backend_state: dict[str, Any]) -> dict[str, str]:
        """Task name -> log file (local backends) for the logs API."""
        ...
