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


class AnswerGate:
    """A TCP forwarder to the mlp service that forwards every request but drops the answers of
    those whose request line starts with `drop` (counted in `dropped`): the service acts, the
    spawner never hears back."""

    def __init__(self, target_port: int, drop: str):
        self.target, self.drop, self.dropped, self.port = target_port, drop, 0, 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> AnswerGate:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            first = await reader.readline()
            drop = first.decode(errors="replace").startswith(self.drop)
            up_writer.write(first)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, drop))
        except OSError:
            pass
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    drop: bool = False) -> None:
        counted = False
        try:
            while data := await reader.read(65536):
                if drop:
                    if not counted:
                        self.dropped, counted = self.dropped + 1, True
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
