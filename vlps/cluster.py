"""The job's TensorFlow cluster as the platform describes it in TF_CONFIG, and the ps/worker
side of it: start a `tf.distribute.Server` and serve until told to stop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vlps")


@dataclass(frozen=True)
class ClusterInfo:
    """The parsed TF_CONFIG: `cluster` maps job names to addresses; empty means one process."""

    cluster: dict[str, list[str]] = field(default_factory=dict)
    task_type: str = "chief"
    task_index: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClusterInfo:
        raw = (env if env is not None else os.environ).get("TF_CONFIG", "")
        if not raw.strip():
            return cls()
        try:
            cfg = json.loads(raw)
            cluster = {k: list(v) for k, v in cfg.get("cluster", {}).items()}
            task = cfg.get("task", {})
            info = cls(cluster, str(task.get("type", "chief")), int(task.get("index", 0)))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"TF_CONFIG is not valid JSON of the TF_CONFIG shape: {e}") from None
        if info.cluster and info.task_type not in info.cluster:
            raise ValueError(f"TF_CONFIG task type {info.task_type!r} is not in its cluster "
                             f"{sorted(info.cluster)}")
        if info.cluster.get("ps") and "chief" not in info.cluster:
            raise ValueError("TF_CONFIG has ps tasks but no chief: vlps needs a chief to "
                             "coordinate ParameterServerStrategy")
        return info

    @property
    def distributed(self) -> bool:
        return bool(self.cluster.get("ps"))

    @property
    def task(self) -> str:
        return f"{self.task_type}:{self.task_index}"

    def address(self, task_type: str, index: int) -> str:
        return self.cluster[task_type][index]

    def unreachable_tasks(self, timeout: float = 1.0) -> list[str]:
        """ps/worker tasks whose gRPC port refuses connections (used to name a dead task)."""
        dead = []
        for ttype in ("ps", "worker"):
            for i, addr in enumerate(self.cluster.get(ttype, [])):
                host, _, port = addr.rpartition(":")
                try:
                    with socket.create_connection((host, int(port)), timeout=timeout):
                        pass
                except OSError:
                    dead.append(f"{ttype}:{i} ({addr})")
        return dead


def run_server_if_needed(info: ClusterInfo | None = None) -> None:
    """On a ps or worker task, serve the cluster and exit when stopped; else return at once.

    Call it at the top of a training script (vlps.Trainer does): the same script then works as
    the chief, as a ps/worker task, and without TF_CONFIG in one process."""
    info = info or ClusterInfo.from_env()
    if not info.distributed or info.task_type not in ("ps", "worker"):
        return
    import tensorflow as tf

    def stop(signum: int, frame: Any) -> None:
        # The platform stops ps and workers with SIGTERM once the chief exits 0.
        log.info("vlps %s: signal %d, exiting", info.task, signum)
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The chief places the tables' ops here: this process must know vlps's kernels.
    from vlps import native

    native.ops()
    server = tf.distribute.Server(
        tf.train.ClusterSpec(info.cluster), job_name=info.task_type, task_index=info.task_index,
        protocol="grpc", start=True,
    )
    log.info("vlps %s serving at %s", info.task, info.address(info.task_type, info.task_index))
    print(f"vlps {info.task} serving", flush=True)
    # Not server.join(): it blocks in C++ and Python signal handlers would never run.
    while server is not None:
        time.sleep(3600)
