"""Fixtures for the vlps tests.

- `serve_in_fresh_process(path, tmp, expected)`: loads a SavedModel in a new Python process
  where importing vlps or keras fails, feeds tmp/cat.npy + tmp/num.npy, compares outputs.
- `tf_cluster`: module-scoped localhost TF cluster (2 ps + 1 worker processes running
  tests/vlps/cluster_job.py, free ports); `tf_cluster.run_chief(params)` runs the chief of a
  job against it. Teardown kills every process group it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlp.core.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("cluster_job.py")


class LocalCluster:
    """ps and worker processes of one TF cluster on localhost; the chief runs per call."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        chief, ps0, ps1, w0 = free_ports(4)
        self.spec = {
            "chief": [f"localhost:{chief}"],
            "ps": [f"localhost:{ps0}", f"localhost:{ps1}"],
            "worker": [f"localhost:{w0}"],
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, task_type: str, index: int, params: dict[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TF_CONFIG=json.dumps({"cluster": self.spec,
                                  "task": {"type": task_type, "index": index}}),
            MLP_PARAMS=json.dumps(params), MLP_TASK_TYPE=task_type, MLP_TASK_INDEX=str(index),
            TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
        )
        return env

    def start_task(self, task_type: str, index: int) -> None:
        name = f"{task_type}:{index}"
        log = open(self.tmp / f"{task_type}-{index}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [sys.executable, str(JOB)], env=self.env(task_type, index, {}), stdout=log,
            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )

    def start(self) -> None:
        for t, i in (("ps", 0), ("ps", 1), ("worker", 0)):
            self.start_task(t, i)

    def kill_task(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def chief(self, params: dict[str, Any], **popen: Any) -> subprocess.Popen[str]:
        env = self.env("chief", 0, params)
        env["MLP_METRICS_FILE"] = str(self.tmp / "metrics.jsonl")
        return subprocess.Popen(
            [sys.executable, str(JOB)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen,
        )

    @staticmethod
    def output(proc: subprocess.Popen[str], timeout: float, what: str = "it started") -> str:
        """The chief's output once it exits; after `timeout` s it is killed and the test
        fails with its output's tail."""
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            raise AssertionError(f"chief still running {timeout:g} s after {what}; output "
                                 f"tail:\n{out[-6000:]}") from None
        return out

    def run_chief(self, params: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
        proc = self.chief(params)
        out = self.output(proc, timeout)
        assert proc.returncode == 0, f"chief failed ({proc.returncode}):\n{out[-4000:]}"
        return json.loads(Path(params["out"] + ".json").read_text())

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill_task(name, signal.SIGTERM)


@pytest.fixture(scope="module")
def tf_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("vlps-cluster"))
    cluster.start()
    time.sleep(1.0)
    try:
        yield cluster
    finally:
        cluster.stop()


def _serve_in_fresh_process(path: str, tmp: Path, expected: Any) -> None:
    import numpy as np

    script = f"""
import sys
sys.modules["vlps"] = None  # any import of vlps would now fail
sys.modules["keras"] = None
import numpy as np, tensorflow as tf
m = tf.saved_model.load({path!r})
out = m.signatures["serving_default"](cat=tf.constant(np.load({str(tmp / 'cat.npy')!r})),
                                      num=tf.constant(np.load({str(tmp / 'num.npy')!r})))
np.save({str(tmp / 'served.npy')!r}, out["output_0"].numpy())
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp / "served.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def serve_in_fresh_process() -> Any:
    return _serve_in_fresh_process
