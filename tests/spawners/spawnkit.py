"""Names and helpers of the spawner behaviour suite (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from mlptest import Hub

POOL = "suite"
GROUP = "suite-spawn"
# The same sizes for both spawners; the group's member cap (2 cpu, 8Gi) offers small and
# medium, large is beyond it.
SIZES = [("small", 1, "2Gi"), ("medium", 2, "8Gi"), ("large", 4, "16Gi")]
GPU_SIZE = ("gpu", 1, "2Gi", 1)  # one GPU: the member cap's
RECLAIM_GRACE = 20


def held(ledger: dict[str, Any]) -> dict[str, Any]:
    """The ledger's reservations by id ("user/server")."""
    return {r["id"]: r for r in ledger["api"]("GET", "/reservations")["reservations"]}


async def held_async(ledger: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.get_running_loop().run_in_executor(None, held, ledger)


def join(hub: Hub, user: str) -> None:
    hub.user_token(user)
    r = hub.hub_api("POST", f"/groups/{GROUP}/users", json={"users": [user]})
    assert r.status_code == 200, r.text


class Driver:
    """What the suite needs of a spawner kind."""

    kind = ""

    def make(self, user: str, server: str = "", **traits: Any) -> Any:
        raise NotImplementedError

    def watch(self, sp: Any) -> Awaitable[dict[str, Any]]:
        """Started before sp.start(): resolves to the ledger as it was when the server's first
        process or object came to exist."""
        raise NotImplementedError

    async def exists(self, sp: Any) -> bool:
        """Whether any process, cgroup or object of this server exists."""
        raise NotImplementedError

    async def crash(self, sp: Any) -> None:
        """The server dies behind the spawner's back."""
        raise NotImplementedError

    async def orphan(self, sp: Any) -> None:
        """What is left when the hub forgets a server (a restart without it)."""
        raise NotImplementedError

    # Whether the service's reclaim also ends what such a server left running (its cgroup).
    reclaim_ends_leftovers = False
