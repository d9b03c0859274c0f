"""Training metrics of a job as time series: reading `metrics.jsonl` (served by `mlp.api.metrics`).

Job tasks append one JSON line per report to `$MLP_METRICS_FILE` (`vlps.report`,
`mlp_magics.report`): {"time": <unix float>, "step": <int>, "task": "worker:0",
"metrics": {"loss": <float>, ...}}. The file is written by user code, so the reader trusts
nothing in it: garbage and half-written lines are skipped, non-numeric values dropped, and every
series is bounded (older points are thinned, the latest point is always kept).
"""

from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
# A job that reports every step for days must not make one request read gigabytes.
MAX_READ_BYTES = 32 * 1024 * 1024
MAX_POINTS = 1000
MAX_SERIES = 200  # distinct (task, metric) pairs kept; more is a reporting bug in user code


@dataclass
class Series:
    """Points (step, value, time) of one metric of one task, thinned to at most `limit`."""

    limit: int = MAX_POINTS
    points: list[tuple[int, float, float]] = field(default_factory=list)
    stride: int = 1
    seen: int = 0
    last: tuple[int, float, float] | None = None  # the newest point, even if thinned out

    def add(self, step: int, value: float, at: float) -> None:
        # Keep every `stride`-th point; when full, drop every other point and double the
        # stride, so the series covers the whole run at a uniform resolution in O(limit) memory.
        self.last = (step, value, at)
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        self.points.append(self.last)
        if len(self.points) > self.limit:
            self.points = self.points[::2]
            self.stride *= 2

    def finish(self) -> list[tuple[int, float, float]]:
        if self.last is not None and (not self.points or self.points[-1] != self.last):
            return [*self.points, self.last]
        return list(self.points)


@dataclass
class MetricsReport:
    """Series per task per metric, the latest record per task, and what was skipped."""

    series: dict[str, dict[str, Series]] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped_lines: int = 0
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": {
                task: {name: [list(p) for p in s.finish()] for name, s in metrics.items()}
                for task, metrics in self.series.items()
            },
            "latest": self.latest,
            "skipped_lines": self.skipped_lines,
            "truncated": self.truncated,
        }


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    # JSON has no NaN/Infinity; a diverged loss is reported as null rather than breaking clients.
    return number if math.isfinite(number) else None


def parse_record(line: str) -> tuple[str, int, float, dict[str, float | None]] | None:
    """(task, step, time, metrics) of one line, or None when it is not a valid record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    step, metrics = rec.get("step"), rec.get("metrics")
    if isinstance(step, bool) or not isinstance(step, int) or not isinstance(metrics, dict):
        return None
    task = rec.get("task")
    task = task if isinstance(task, str) and 0 < len(task) <= 64 else "chief:0"
    at = _finite(rec.get("time")) or 0.0
    values: dict[str, float | None] = {}
    for name, value in metrics.items():
        if isinstance(name, str) and 0 < len(name) <= 128:
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            values[name] = _finite(value)
    return task, step, at, values


def _open_no_symlink(path: Path) -> int | None:
    # The file lives in the user's folder: a symlink there must not make the service read
    # files the user could not read through the API otherwise.
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise


def read_metrics(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    since: int | None = None,
    names: set[str] | None = None,
    max_points: int = MAX_POINTS,
    max_bytes: int = MAX_READ_BYTES,
) -> MetricsReport:
    """Read a metrics file into bounded series; only steps after `since` when given."""
    report = MetricsReport()
    fd = _open_no_symlink(Path(path))
    if fd is None:
        return report
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            f.seek(size - max_bytes)
            f.readline()  # the rest of a line cut by the seek
            report.truncated = True
        data = f.read(max_bytes)
    # A line still being written has no newline yet; it will be complete on the next read.
    complete = data[: data.rfind(b"\n") + 1]
    for raw in complete.decode("utf-8", "replace").splitlines():
        if not raw.strip():
            continue
        parsed = parse_record(raw)
        if parsed is None:
            report.skipped_lines += 1
            continue
        rec_task, step, at, values = parsed
        if task is not None and rec_task != task:
            continue
        prev = report.latest.get(rec_task)
        if prev is not None and step == prev["step"]:
            # Several reports of one step (e.g. the framework's loss, then the script's own
            # metrics) are one row of results.
            prev["metrics"].update(values)
            prev["time"] = max(prev["time"], at)
        elif prev is None or step > prev["step"]:
            report.latest[rec_task] = {"step": step, "time": at, "metrics": dict(values)}
        if since is not None and step <= since:
            continue
        per_task = report.series.setdefault(rec_task, {})
        for name, value in values.items():
            if names is not None and name not in names:
                continue
            if value is None:
                continue
            series = per_task.get(name)
            if series is None:
                if sum(len(m) for m in report.series.values()) >= MAX_SERIES:
                    report.truncated = True
                    continue
                series = per_task[name] = Series(limit=max_points)
            series.add(step, value, at)
    if len(report.latest) > MAX_SERIES:
        report.latest = dict(list(report.latest.items())[:MAX_SERIES])
        report.truncated = True
    return report


def metrics_path(backend_state: dict[str, Any] | None) -> Path | None:
    workdir = (backend_state or {}).get("workdir")
    return Path(workdir) / METRICS_FILE if workdir else None
