"""Starting a process inside its cgroup and as its account (the spawner and the job backend)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mlp.isolation.accounts import Account
from mlp.isolation.cgroups import Cgroup


def make_preexec(
    account: Account | None,
    cgroup: Cgroup | None,
    cwd: str | os.PathLike[str] | None = None,
    make_cwd: bool = False,
) -> Callable[[], None]:
    """A `preexec_fn`: join the cgroup (needs root, so first), become the account, then change
    to `cwd` (created as the account when `make_cwd`), so a folder the user controls is never
    created or entered with root's rights."""
    target = None if cwd is None else os.fspath(cwd)

    def preexec() -> None:
        if cgroup is not None:
            cgroup.join()
        if account is not None:
            os.setgroups([account.gid])
            os.setgid(account.gid)
            os.setuid(account.uid)
        if target is not None:
            if make_cwd:
                os.makedirs(target, mode=0o700, exist_ok=True)
            os.chdir(target)

    return preexec


def run_as_env(account: Account | None, env: dict[str, str]) -> dict[str, str]:
    """USER/HOME/LOGNAME of the account in `env` (unchanged in personal mode)."""
    if account is None:
        return env
    return {**env, "USER": account.name, "LOGNAME": account.name, "HOME": str(account.home)}


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """A root-owned folder the platform writes in (never one a user controls)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def unreachable_ancestor(path: Path) -> Path | None:
    """The first folder above `path` that other users cannot pass through (no o+x), if any:
    the accounts must reach the platform's Python environment and their homes. Both the folders
    of the path as written (the accounts run `.venv/bin/python` through them) and, for a
    symlink, those of its target (the interpreter the venv links to)."""
    for target in dict.fromkeys([Path(os.path.abspath(path)), path.resolve()]):
        for parent in reversed(target.parents):
            if not parent.stat().st_mode & 0o001:
                return parent
    return None
