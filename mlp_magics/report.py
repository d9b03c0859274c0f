"""Metrics reporting for training code running as a platform job: `report()`, `params()` and a
Keras callback.

Writes the same JSON lines as `vlps.report` to `$MLP_METRICS_FILE` (set by the platform for every
task): {"time": <unix float>, "step": <int>, "task": "<type>:<index>", "metrics": {...}}.
Without that variable (a script run by hand) reports are only logged. This module must stay
cheap to import inside a job: no IPython, no widgets, and TensorFlow/Keras only when the Keras
callback is asked for (importing TensorFlow costs seconds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("mlp_magics")


def task_name() -> str:
    """'<type>:<index>' from MLP_TASK_TYPE/MLP_TASK_INDEX, else TF_CONFIG, else 'chief:0'."""
    ttype = os.environ.get("MLP_TASK_TYPE")
    index = os.environ.get("MLP_TASK_INDEX")
    if ttype is None:
        try:
            task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
        except (ValueError, AttributeError):
            task = {}
        ttype, index = task.get("type", "chief"), task.get("index", 0)
    return f"{ttype}:{index or 0}"


def report(step: int, **metrics: Any) -> dict[str, Any]:
    """Record metrics at a training step: `report(step=100, loss=0.3, auc=0.71)`.

    Values must be numbers (NumPy/TensorFlow scalars are converted); returns the record."""
    return record(step, metrics)


def record(step: int, metrics: Mapping[str, Any], path: str | None = None) -> dict[str, Any]:
    """`report` with the metrics as a mapping (any names) and an optional target file."""
    if isinstance(step, bool):
        raise TypeError("report(): step must be an integer, got a bool")
    try:
        step = int(step)
    except (TypeError, ValueError):
        raise TypeError(f"report(): step must be an integer, got {step!r}") from None
    values: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"report(): metric {name!r} must be a number, got {type(value).__name__}"
            ) from None
        if not math.isfinite(number):
            log.warning("report(): metric %s is %s at step %d", name, number, step)
        values[name] = number
    line = {"time": time.time(), "step": step, "task": task_name(), "metrics": values}
    target = path or os.environ.get("MLP_METRICS_FILE")
    if target:
        # One write() of one whole line: a reader tailing the file never sees half a record.
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    else:
        log.info("step %d %s", step, " ".join(f"{k}={v:.6g}" for k, v in values.items()))
    return line


def params() -> dict[str, Any]:
    """The job's parameters (`--param`, one `--grid` combination) from $MLP_PARAMS."""
    text = os.environ.get("MLP_PARAMS") or "{}"
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"$MLP_PARAMS must be a JSON object, got {type(value).__name__}")
    return value


def _numbers(logs: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def keras_callback(every: int = 100) -> Any:
    """A Keras callback reporting the training logs every `every` batches and at epoch ends.

    Keras is imported here, not when mlp_magics is: notebooks that never train in the kernel
    should not pay for TensorFlow."""
    import keras

    class MetricsCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.every = max(1, int(every))
            self.step = 0

        def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
            self.step += 1
            if logs and self.step % self.every == 0:
                record(self.step, _numbers(logs))

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            record(self.step, {**_numbers(logs), "epoch": epoch + 1})

    return MetricsCallback()
