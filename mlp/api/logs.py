"""`/jobs/{id}/logs`: log tails, and a server-sent-events stream that follows them.

Every file read runs in a worker thread (`asyncio.to_thread`): the event loop that serves the
API also owns the quota ledger, and a slow disk must not stall admissions.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.iostream import StreamClosedError

from mlp.api.base import ApiError, APIHandler, int_arg
from mlp.store import Job

READ_CHUNK = 1024 * 1024


def tail_lines(path: Path, n: int) -> tuple[list[str], int]:
    """The last n lines of a file and the offset just after them (for following)."""
    if not path.exists():
        return [], 0
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        block = 64 * 1024
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    # A trailing partial line is left for the follower to complete.
    complete = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
    lines = complete.decode("utf-8", "replace").splitlines()
    return lines[-n:] if n else [], end - (len(data) - len(complete))


def tails(paths: dict[str, str], n: int) -> dict[str, tuple[list[str], int]]:
    return {name: tail_lines(Path(p), n) for name, p in paths.items()}


@dataclass
class LogFollower:
    """Reads what was appended to each task's log since the last call (complete lines only,
    until `final`). Not thread-safe: one reader at a time, which `to_thread` calls are here."""

    paths: dict[str, str]
    offsets: dict[str, int] = field(default_factory=dict)
    partial: dict[str, bytes] = field(default_factory=dict)

    def read_new(self, final: bool = False) -> list[tuple[str, str]]:
        lines_out: list[tuple[str, str]] = []
        for name, p in list(self.paths.items()):
            try:
                with open(p, "rb") as f:
                    f.seek(self.offsets.get(name, 0))
                    chunk = f.read(READ_CHUNK)
            except FileNotFoundError:
                continue
            if not chunk and not (final and self.partial.get(name)):
                continue
            self.offsets[name] = self.offsets.get(name, 0) + len(chunk)
            data = self.partial.pop(name, b"") + chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            if rest and not final:
                self.partial[name] = rest
            elif rest:
                lines.append(rest)
            lines_out.extend((name, line.decode("utf-8", "replace")) for line in lines)
        return lines_out


class LogsHandler(APIHandler):
    closed = False

    def on_connection_close(self) -> None:
        self.closed = True

    async def get(self, job_id: str) -> None:
        job = self.load_job(job_id)
        paths = self.manager.backend.log_paths(job.id, job.backend_state or {})
        task = self.get_argument("task", None)
        if task is not None:
            if task not in paths:
                known = ", ".join(paths) or "none yet (the job has not started)"
                raise ApiError(
                    404, "not_found", f"job {job.id} has no task {task!r}; tasks with logs: {known}"
                )
            paths = {task: paths[task]}
        tail = int_arg(self, "tail", 200, 0, 100_000)
        follow = self.get_argument("follow", "false").lower() in ("1", "true", "yes")
        if not follow:
            found = await asyncio.to_thread(tails, paths, tail)
            logs = {name: lines for name, (lines, _) in found.items()}
            self.write_json({"job": job.id, "state": job.state, "logs": logs})
            return
        await self.follow(job, paths, tail)

    async def follow(self, job: Job, paths: dict[str, str], tail: int) -> None:
        """Server-sent events: `log` per line, `state` on changes, `end` once the job ended."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        keepalive = float(self.settings["sse_keepalive_interval"])
        poll = float(self.settings["sse_poll_interval"])
        wanted = self.get_argument("task", None)
        queue = self.manager.subscribe(job.id)
        follower = LogFollower(dict(paths))
        last_write = time.monotonic()
        try:
            for name, (lines, offset) in (await asyncio.to_thread(tails, paths, tail)).items():
                follower.offsets[name] = offset
                for line in lines:
                    self._event("log", {"task": name, "line": line})
            self._event("state", {"state": job.state, "reason": job.reason})
            await self.flush()
            while not self.closed:
                # New tasks' logs appear once a queued job starts.
                current = self.manager.get(job.id)
                for name, p in self.manager.backend.log_paths(
                    job.id, current.backend_state or {}
                ).items():
                    if name not in follower.paths and wanted in (None, name):
                        follower.paths[name] = p
                        follower.offsets[name] = 0
                wrote = self._write_lines(await asyncio.to_thread(follower.read_new))
                while not queue.empty():
                    changed = queue.get_nowait()
                    self._event("state", {"state": changed.state, "reason": changed.reason})
                    wrote = True
                if current.job_state.terminal:
                    self._write_lines(await asyncio.to_thread(follower.read_new, True))
                    self._event("end", {"state": current.state, "reason": current.reason})
                    await self.flush()
                    break
                if not wrote and time.monotonic() - last_write > keepalive:
                    self.write(": keepalive\n\n")
                    wrote = True
                if wrote:
                    await self.flush()
                    last_write = time.monotonic()
                await asyncio.sleep(poll)
        except StreamClosedError:
            pass  # the client went away; nothing to clean up but our subscription
        finally:
            self.manager.unsubscribe(job.id, queue)
        if not self.closed:
            self.finish()

    def _write_lines(self, lines: list[tuple[str, str]]) -> bool:
        for task, line in lines:
            self._event("log", {"task": task, "line": line})
        return bool(lines)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        self.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n")
