"""A real TF cluster on localhost (chief + 2 ps + 1 worker processes, gRPC) training the CTR
model of tests/vlps/cluster_job.py: loss falls, restart restores identical predictions, the
checkpoint restores into 1 and 3 local shards, the export serves without vlps, calls longer
than a block of written-out steps loop over the ps tasks, and a ps that dies fails the job with
its name (a ps that hangs too, after task_timeout); a restart then resumes from the last
checkpoint."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(tf_cluster):
    tmp = tf_cluster.tmp
    params = {"ckpt": str(tmp / "ckpt"), "steps": 60, "checkpoint_every": 20,
              "out": str(tmp / "run1"), "export": str(tmp / "export"), "report_every": 20}
    return params, tf_cluster.run_chief(params)


def test_cluster_training_reduces_loss(first_run, tf_cluster) -> None:
    _, result = first_run
    assert result["step"] == 60 and result["restored"] == 0
    assert result["loss_after"] < result["loss_before"] - 0.05, result
    # Both ps tasks hold a share of the rows.
    assert all(n > 1000 for n in result["shards"]["emb"]), result["shards"]
    # Each shard's variables sit on its table's task (ParameterServerStrategy would otherwise
    # spread them round robin, and every push would hop between ps tasks).
    placement = result["placement"]
    assert sorted(table for table, _ in placement) == [
        f"/job:ps/replica:0/task:{i}/device:CPU:0" for i in range(2)], placement
    assert all(variables == [table] for table, variables in placement), placement
    lines = (tf_cluster.tmp / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records[:3]] == [20, 40, 60]
    assert all(r["task"] == "chief:0" and isinstance(r["metrics"]["loss"], float)
               for r in records)


def test_restarted_chief_restores_identical_predictions(first_run, tf_cluster) -> None:
    params, _ = first_run
    again = dict(params, out=str(tf_cluster.tmp / "run2"), export=None)
    result = tf_cluster.run_chief(again)
    assert result["restored"] == 60 and result["step"] == 60
    np.testing.assert_array_equal(np.load(again["out"] + ".npy"),
                                  np.load(params["out"] + ".npy"))


@pytest.mark.parametrize("shards", [1, 3])
def test_cluster_checkpoint_restores_into_local_shards(first_run, shards) -> None:
    import keras

    import vlps
    from vlps.data import synthetic_ctr
    from vlps.models import wide_deep

    params, _ = first_run
    trainer = vlps.Trainer(
        lambda: wide_deep(dim=4, hidden=(16,), learning_rate=0.1, num_shards=shards),
        loss=keras.losses.BinaryCrossentropy(), checkpoint_dir=params["ckpt"],
        cluster=vlps.ClusterInfo())
    trainer.build(lambda ctx: synthetic_ctr(8, seed=1))
    assert trainer.restore() == 60
    features, _ = next(iter(synthetic_ctr(1024, seed=1, zipf_a=1.5, split="test")))
    np.testing.assert_array_equal(trainer.predict(features).numpy(),
                                  np.load(params["out"] + ".npy"))


def test_cluster_export_serves_without_vlps(first_run, tmp_path, serve_in_fresh_process) -> None:
    from vlps.data import synthetic_ctr

    params, _ = first_run
    features, _ = next(iter(synthetic_ctr(1024, seed=1, zipf_a=1.5, split="test")))
    np.save(tmp_path / "cat.npy", features["cat"].numpy())
    np.save(tmp_path / "num.npy", features["num"].numpy())
    serve_in_fresh_process(params["export"], tmp_path, np.load(params["out"] + ".npy"))


def test_calls_longer_than_a_block_loop_over_the_ps_tasks(first_run, tf_cluster) -> None:
    """20 steps per call, three calls: each a loop of one block of MAX_UNROLLED_STEPS steps
    plus 4 steps written out, scheduled on the worker with the tables on both ps tasks."""
    from vlps.trainer import MAX_UNROLLED_STEPS

    tmp = tf_cluster.tmp
    result = tf_cluster.run_chief({
        "ckpt": str(tmp / "ckpt-blocks"), "steps": 60, "out": str(tmp / "run-blocks"),
        "report_every": 60, "steps_per_execution": MAX_UNROLLED_STEPS + 4})
    assert result["step"] == 60 and result["restored"] == 0
    # The ps tasks outlive each chief of this module and keep its tables' rows, so this run
    # starts from a model earlier runs trained: it still learns, by less than the first run.
    assert result["loss_after"] < result["loss_before"] - 0.01, result
    assert all(n > 1000 for n in result["shards"]["emb"]), result["shards"]


def test_an_error_in_the_step_is_not_blamed_on_a_task(first_run, tf_cluster) -> None:
    tmp = tf_cluster.tmp
    chief = tf_cluster.chief({"ckpt": str(tmp / "ckpt-bad"), "steps": 40,
                              "out": str(tmp / "run-bad"), "fail_at_batch": 5})
    out = tf_cluster.output(chief, 180)
    assert chief.returncode != 0
    assert "test: bad batch" in out and "InvalidArgumentError" in out, out[-3000:]
    assert "TaskFailedError" not in out and "unreachable" not in out, out[-3000:]


def _wait_for_checkpoint(chief, ckpt: str, step: int) -> Path:
    latest = Path(ckpt) / "latest"
    deadline = time.monotonic() + 180
    while not (latest.exists() and int(latest.read_text().split("-")[1]) >= step):
        assert chief.poll() is None, chief.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"no checkpoint at step {step} in time"
        time.sleep(0.5)
    return latest


def _restart_ps1_and_worker(tf_cluster) -> None:
    """As the platform restarts a job: the ps comes back on its address, and the worker too
    (its sessions with the lost ps are gone)."""
    tf_cluster.start_task("ps", 1)
    tf_cluster.kill_task("worker:0", signal.SIGTERM)
    tf_cluster.start_task("worker", 0)
    time.sleep(1.0)


def test_ps_failure_names_the_task_and_restart_resumes(first_run, tf_cluster) -> None:
    tmp = tf_cluster.tmp
    params = {"ckpt": str(tmp / "ckpt-fail"), "steps": 100_000, "checkpoint_every": 20,
              "out": str(tmp / "run-fail")}
    chief = tf_cluster.chief(params)
    latest = _wait_for_checkpoint(chief, params["ckpt"], 40)
    tf_cluster.kill_task("ps:1")
    out = tf_cluster.output(chief, 180, "ps:1 died")
    assert chief.returncode != 0
    assert "TaskFailedError" in out and "ps:1" in out, out[-3000:]
    assert "resume from" in out
    saved = int(latest.read_text().split("-")[1])
    _restart_ps1_and_worker(tf_cluster)
    result = tf_cluster.run_chief(dict(params, steps=saved + 20))
    assert result["restored"] == saved and result["step"] == saved + 20


def test_a_stopped_ps_fails_the_job_after_task_timeout(first_run, tf_cluster) -> None:
    """A ps that hangs (here: SIGSTOP) keeps its port open and never answers; TensorFlow's
    steps wait on it without a deadline. The task watch names it after task_timeout."""
    tmp = tf_cluster.tmp
    params = {"ckpt": str(tmp / "ckpt-stop"), "steps": 100_000, "checkpoint_every": 20,
              "out": str(tmp / "run-stop"), "task_timeout": 5}
    chief = tf_cluster.chief(params)
    _wait_for_checkpoint(chief, params["ckpt"], 20)
    ps1 = tf_cluster.procs["ps:1"]
    os.killpg(ps1.pid, signal.SIGSTOP)
    try:
        out = tf_cluster.output(chief, 120, "ps:1 stopped")
    finally:
        tf_cluster.kill_task("ps:1")  # SIGKILL ends a stopped process too
        _restart_ps1_and_worker(tf_cluster)
    assert chief.returncode != 0
    assert "TaskFailedError" in out and "ps:1 (" in out, out[-3000:]
    assert "no gRPC handshake for 5 s" in out and "resume from" in out, out[-3000:]
