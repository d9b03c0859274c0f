"""Training metrics for the platform: `report()` and a Keras callback that calls it.

When `MLP_METRICS_FILE` is set (the platform sets it for every job task), each report appends
one JSON line:  {"time": <unix float>, "step": <int>, "task": "<type>:<index>",
"metrics": {"loss": <float>, ...}}. Without it, reports are only logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import keras

log = logging.getLogger("vlps")


def task_name() -> str:
    """'<type>:<index>' from MLP_TASK_TYPE/MLP_TASK_INDEX, else TF_CONFIG, else 'chief:0'."""
    ttype = os.environ.get("MLP_TASK_TYPE")
    index = os.environ.get("MLP_TASK_INDEX")
    if ttype is None:
        try:
            task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
        except ValueError:
            task = {}
        ttype, index = task.get("type", "chief"), task.get("index", 0)
    return f"{ttype}:{index or 0}"


def report(step: int, metrics: Mapping[str, Any], *, path: str | None = None) -> dict[str, Any]:
    """Record `metrics` (name -> number) at `step`; returns the JSON object written."""
    values: dict[str, float] = {}
    for name, value in metrics.items():
        number = float(value)
        if not math.isfinite(number):
            log.warning("vlps.report: metric %s is %s at step %s", name, number, step)
        values[str(name)] = number
    record = {"time": time.time(), "step": int(step), "task": task_name(), "metrics": values}
    log.info("step %d %s", step, " ".join(f"{k}={v:.6g}" for k, v in values.items()))
    target = path or os.environ.get("MLP_METRICS_FILE")
    if target:
        # One write() of one line per record: readers tailing the file never see half a line.
        line = json.dumps(record, allow_nan=True) + "\n"
        with open(target, "a", encoding="utf-8") as f:
            f.write(line)
    return record


class MetricsCallback(keras.callbacks.Callback):
    """Reports Keras logs every `every` batches and at each epoch end."""

    def __init__(self, every: int = 100) -> None:
        super().__init__()
        self.every = max(1, int(every))
        self._step = 0

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._step += 1
        if logs and self._step % self.every == 0:
            report(self._step, _numbers(logs))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if logs:
            report(self._step, {**_numbers(logs), "epoch": epoch + 1})


def _numbers(logs: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in logs.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out
