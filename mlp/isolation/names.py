"""Names of the platform's cgroups, shared by the spawner, the job backend and the service (which
removes the cgroups of reservations it reclaims)."""

from __future__ import annotations

from mlp.core.paths import safe_name


def server_cgroup_name(user: str, server: str) -> str:
    return f"server-{safe_name(user)}--{safe_name(server) if server else ''}"


def task_cgroup_name(job_id: int, attempt: int, task: str) -> str:
    return f"job-{job_id}-{attempt}-{safe_name(task.replace(':', '-'))}"
