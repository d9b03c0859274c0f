"""TCP forwarders for tests of clients whose server is down, slow, or acts without answering.

`FlakyProxy`: while `down` it accepts and at once closes every connection (and sets `refused`);
`delay` holds each new connection that long before forwarding. `AnswerGate`: forwards every
request but withholds the answers of those whose request line starts with `drop`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class FlakyProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.down = False
        self.delay = 0.0
        self.refused = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FlakyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._conns):
            t.cancel()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if self.down:
                self.refused.set()
                writer.close()
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class AnswerGate:
    """Forwards every request to the server but, while `drop` is set, withholds the answer of
    each request whose request line starts with it: the server acts, the client never hears
    back. `dropped` counts the withheld answers; `held` is set at the first one. Serve it in
    the test's loop (`async with`) or, for a synchronous test, from a thread of its own
    (`start_thread()` ... `close()`); `target` may be set once the server's port is known."""

    def __init__(self, target_port: int = 0, drop: str = "") -> None:
        self.target, self.drop = target_port, drop
        self.dropped = 0
        self.held = threading.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> AnswerGate:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def start_thread(self) -> AnswerGate:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._listen())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        assert self._loop is not None and self._thread is not None and self._server is not None
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            first = await reader.readline()
            drop = bool(self.drop) and first.decode(errors="replace").startswith(self.drop)
            up_writer.write(first)
            answer = self._withhold(up_reader, writer) if drop else _pipe(up_reader, writer)
            await asyncio.gather(_pipe(reader, up_writer), answer)
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _withhold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            while await reader.read(65536):
                if not counted:
                    self.dropped, counted = self.dropped + 1, True
                    self.held.set()  # the answer arrived from the server; it goes no further
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
