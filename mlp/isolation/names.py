"""Names of the platform's cgroups, shared by the spawner, the job backend and the service (which
removes the cgroups of reservations it reclaims).

Every name is a single directory name (at most 255 characters) and two different servers or
tasks never share one: the parts are `safe_name` forms, which never contain ``__``, joined by
``__``; a name that would be too long keeps a readable start and ends in ``.`` and a hash (no
other name contains a dot).
"""

from __future__ import annotations

import hashlib

from mlp.core.paths import NAME_MAX, safe_name


def _fit(name: str, *parts: str) -> str:
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:32]
    return f"{name[:200]}.{digest}"


def server_cgroup_name(user: str, server: str) -> str:
    return _fit(f"server-{safe_name(user)}__{safe_name(server) if server else ''}", user, server)


def task_cgroup_name(job_id: int, attempt: int, task: str) -> str:
    return f"job-{job_id}-{attempt}-{safe_name(task.replace(':', '-'))}"
