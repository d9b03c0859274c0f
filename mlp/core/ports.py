"""Free loopback ports, asked of the kernel (bind to port 0) all at once so they are distinct."""

from __future__ import annotations

import socket
import time

# Ports handed out recently: a task binds its port a while after it was chosen, and the kernel
# may offer the same free port to a job started at the same moment. Not handed out again for
# this long (by then the first taker has bound it, or given up).
_RECENT: dict[int, float] = {}
_HOLD = 600.0


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that were free a moment ago (the caller binds them soon after) and
    were not handed out by this process in the last ten minutes."""
    now = time.monotonic()
    for port, since in list(_RECENT.items()):
        if now - since > _HOLD:
            del _RECENT[port]
    chosen: list[int] = []
    for _ in range(100):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
        try:
            for s in socks:
                s.bind((host, 0))
            fresh = [int(s.getsockname()[1]) for s in socks]
        finally:
            for s in socks:
                s.close()
        chosen += [p for p in fresh if p not in _RECENT and p not in chosen][: n - len(chosen)]
        if len(chosen) == n:
            for p in chosen:
                _RECENT[p] = now
            return chosen
    raise RuntimeError("no free ports left for tasks; the host is out of ephemeral ports")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
