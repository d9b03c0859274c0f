"""Job backends: where the tasks of a job actually run (local processes, Kubernetes)."""

from mlp.backends.base import JobBackend, JobLaunch, Observation, TaskStatus

__all__ = ["JobBackend", "JobLaunch", "Observation", "TaskStatus"]
