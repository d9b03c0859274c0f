"""Where tables and variables live: local (one process) or on the `ps` tasks of a TF cluster.

`vlps.Trainer.scope()` installs a `Placement` for the cluster; without one, tables are local.
Tables read the current placement when they are created, so a model-building function written
once works in both modes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import tensorflow as tf


@dataclass
class Placement:
    """Devices that hold table shards; `strategy` is the ParameterServerStrategy, if any."""

    ps_devices: list[str] = field(default_factory=list)
    strategy: tf.distribute.Strategy | None = None

    def shard_devices(self, num_shards: int | None) -> list[str | None]:
        if not self.ps_devices:
            return [None] * (num_shards or 1)
        # On a cluster the shard count is the ps count unless asked otherwise; shards beyond
        # the ps count wrap around so a table may still be split finer than the cluster.
        n = num_shards or len(self.ps_devices)
        return [self.ps_devices[i % len(self.ps_devices)] for i in range(n)]


_local = threading.local()


def current_placement() -> Placement:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else Placement()


@contextlib.contextmanager
def placement_scope(placement: Placement) -> Iterator[Placement]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    _local.stack.append(placement)
    try:
        yield placement
    finally:
        _local.stack.pop()


def device_scope(device: str | None) -> contextlib.AbstractContextManager[object]:
    return tf.device(device) if device else contextlib.nullcontext()
