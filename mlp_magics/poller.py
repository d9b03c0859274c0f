"""What feeds a dashboard: a poll of the REST API on the kernel's own event loop.

In a kernel (ipykernel runs every cell inside its asyncio loop, on the main thread), `start()`
schedules an asyncio task on that running loop. Each round sends the HTTP requests to the loop's
executor (they are blocking `requests` calls and must not freeze the kernel) and applies the
answer back on the loop, so widget values change on the kernel's thread like any comm message,
and nothing is ever printed from elsewhere (the ipykernel output-from-thread pitfall).

Outside a kernel (terminal IPython, a script, the tests' plain `InteractiveShell`) no loop runs
between commands, so the same coroutine runs on a private loop in one daemon thread; there is
no widget frontend there whose messages could interleave with a cell's.

The task ends by itself when `apply` reports the thing followed has ended, or when `stop()` is
called (a dashboard calls it when its widget is closed). `run_here()` polls in the caller's own
thread: what `--wait` does in a cell, where the kernel's loop is busy with that very cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mlp.client import MLPError

__all__ = ["Poller", "Schedule"]

log = logging.getLogger("mlp_magics")

T = TypeVar("T")

# The loop keeps only weak references to its tasks: these keep running pollers alive.
_TASKS: set[asyncio.Task[None]] = set()


class Schedule:
    """The pause before the next round. It starts at `interval`, grows by half each quiet round
    up to `max_interval` and falls back to `interval` when something changed; after a failure
    (service away) it doubles up to `max_error_interval`."""

    def __init__(self, interval: float, max_interval: float, max_error_interval: float):
        self.interval = interval
        self.max_interval = max(interval, max_interval)
        self.max_error_interval = max(interval, max_error_interval)
        self._delay = interval
        self._error_delay = interval

    def after(self, changed: bool) -> float:
        self._error_delay = self.interval
        self._delay = self.interval if changed else min(self._delay * 1.5, self.max_interval)
        return self._delay

    def after_error(self) -> float:
        self._error_delay = min(self._error_delay * 2, self.max_error_interval)
        return self._error_delay


class Poller(Generic[T]):
    """Calls `fetch()` (I/O only, off the loop) then `apply(result)` -> (changed, done) on the
    loop, round after round, until done or `stop()`. Exceptions of either go to `on_error`
    (the dashboard shows them) and polling goes on by itself."""

    def __init__(
        self,
        fetch: Callable[[], T],
        apply: Callable[[T], tuple[bool, bool]],
        *,
        on_error: Callable[[MLPError | Exception], None],
        interval: float = 1.0,
        max_interval: float = 10.0,
        max_error_interval: float = 30.0,
        name: str = "mlp-poller",
    ):
        self.fetch = fetch
        self.apply = apply
        self.on_error = on_error
        self.interval = interval
        self.max_interval = max_interval
        self.max_error_interval = max_error_interval
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.thread: threading.Thread | None = None  # only outside a kernel
        self._stopped = False
        self._finished = threading.Event()

    # ------------------------------------------------------------------ control
    def start(self) -> Poller[T]:
        if self.loop is not None:
            raise RuntimeError(f"poller {self.name} was already started")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no kernel loop in this thread: a private one
            ready = threading.Event()
            self.thread = threading.Thread(target=self._own_loop, args=(ready,), name=self.name,
                                           daemon=True)
            self.thread.start()
            ready.wait()
        else:
            self.loop = loop
            self._create_task()
        return self

    def stop(self) -> None:
        """No round starts after this; a round in flight is abandoned (its answer dropped)."""
        self._stopped = True
        loop, task = self.loop, self.task
        if loop is None or task is None or task.done():
            return
        if _running_loop() is loop:
            task.cancel()
            return
        with contextlib.suppress(RuntimeError):  # that loop has closed: nothing to stop
            loop.call_soon_threadsafe(task.cancel)

    @property
    def running(self) -> bool:
        """Started, not finished, not told to stop."""
        return self.loop is not None and not self._stopped and not self._finished.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def on_callers_loop(self) -> bool:
        """True when the caller runs on the poller's loop (a cell in the kernel): the task cannot
        make progress until the caller returns, so waiting must poll here (`run_here`)."""
        return self.loop is not None and _running_loop() is self.loop

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end of polling from another thread than the loop's; True when it ended."""
        if self.on_callers_loop():
            raise RuntimeError("join() on the poller's own loop would never return; "
                               "use run_here()")
        return self._finished.wait(timeout)

    # ------------------------------------------------------------------ the rounds
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        schedule = Schedule(self.interval, self.max_interval, self.max_error_interval)
        while not self._stopped:
            try:
                request = loop.run_in_executor(None, self.fetch)
            except RuntimeError:  # the loop's executor is shut down: the process is exiting
                return
            try:
                result = await _finish_on_cancel(request)
                if self._stopped:
                    return
                changed, done = self.apply(result)
            except Exception as e:  # any failure keeps polling alive (and visible)
                if self._stopped:
                    return
                self._report(e)
                await asyncio.sleep(schedule.after_error())
                continue
            if done:
                return
            await asyncio.sleep(schedule.after(changed))

    def run_here(self, timeout: float | None = None) -> bool:
        """Poll in the calling thread (blocking) until done, `timeout` or `stop()`; True when
        done. Stops the loop's task when done, so it makes no further request."""
        deadline = None if timeout is None else time.monotonic() + timeout
        schedule = Schedule(self.interval, self.max_interval, self.max_error_interval)
        while not self._stopped:
            try:
                changed, done = self.apply(self.fetch())
            except Exception as e:
                self._report(e)
                delay = schedule.after_error()
            else:
                if done:
                    self.stop()
                    return True
                delay = schedule.after(changed)
            if deadline is not None:
                delay = min(delay, deadline - time.monotonic())
                if delay <= 0:
                    return False
            time.sleep(delay)
        return self.done

    def _report(self, e: Exception) -> None:
        if not isinstance(e, MLPError):
            log.exception("mlp_magics: %s: dashboard update failed", self.name)
        self.on_error(e)

    # ------------------------------------------------------------------ plumbing
    def _create_task(self) -> None:
        assert self.loop is not None
        task = self.loop.create_task(self._run(), name=self.name)
        _TASKS.add(task)
        task.add_done_callback(self._task_done)
        self.task = task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        _TASKS.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mlp_magics: %s ended on an error", self.name,
                      exc_info=task.exception())
        self._finished.set()

    def _own_loop(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            self.loop = loop
            self._create_task()
            ready.set()
            assert self.task is not None
            with contextlib.suppress(asyncio.CancelledError):  # stop()
                loop.run_until_complete(self.task)
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            ready.set()
            loop.close()
            self._finished.set()


async def _finish_on_cancel(future: asyncio.Future[T]) -> T:
    """Await a request running in the executor; when the task is cancelled meanwhile, let the
    request finish first (its answer is dropped), so a finished poller is a quiet one."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
