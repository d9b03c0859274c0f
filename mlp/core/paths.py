"""Where things live on disk in the embedded default: one folder per user under the data dir."""

from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path

_SAFE = set(string.ascii_lowercase + string.digits + "-")
NAME_MAX = 255  # the longest file name Linux file systems take


def safe_name(name: str) -> str:
    """A reversible, filesystem- and URL-safe form of a JupyterHub user name.

    Characters outside [a-z0-9-] become `_xx` (their UTF-8 bytes in hex), so 'Ann.B' and
    'ann_2eb' can never collide and no name can escape its parent folder. A form longer than a
    file name may be is shortened and ends in ``__`` and 16 hex digits of the name's SHA-256.
    """
    out = []
    for ch in name:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    safe = "".join(out) or "_"
    if len(safe) <= NAME_MAX:
        return safe
    # Too long for a file name (e.g. 100 non-ASCII characters): a readable start and a hash.
    # Only such names change form, and none can collide with another: a short form never holds
    # "__" (every "_" is followed by two hex digits), a long one always does.
    start = safe[:200]
    if "_" in start[-2:]:  # do not cut an escape in half
        start = start[: start.rindex("_")]
    return f"{start}__{hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]}"


def user_home(data_dir: str | os.PathLike[str], username: str) -> Path:
    """The user's home folder: their notebook server starts there and their jobs run there."""
    return Path(data_dir) / "users" / safe_name(username)


def job_dir(data_dir: str | os.PathLike[str], username: str, job_id: int, name: str) -> Path:
    return user_home(data_dir, username) / "mlp-jobs" / f"{job_id}-{name}"
