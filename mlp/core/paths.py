"""Where things live on disk in the embedded default: one folder per user under the data dir."""

from __future__ import annotations

import os
import string
from pathlib import Path

_SAFE = set(string.ascii_lowercase + string.digits + "-")


def safe_name(name: str) -> str:
    """A reversible, filesystem- and URL-safe form of a JupyterHub user name.

    Characters outside [a-z0-9-] become `_xx` (their UTF-8 bytes in hex), so 'Ann.B' and
    'ann_2eb' can never collide and no name can escape its parent folder.
    """
    out = []
    for ch in name:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out) or "_"


def user_home(data_dir: str | os.PathLike[str], username: str) -> Path:
    """The user's home folder: their notebook server starts there and their jobs run there."""
    return Path(data_dir) / "users" / safe_name(username)


def job_dir(data_dir: str | os.PathLike[str], username: str, job_id: int, name: str) -> Path:
    return user_home(data_dir, username) / "mlp-jobs" / f"{job_id}-{name}"
