"""Metrics: `mlp_magics.report`, the metrics.jsonl reader and GET /jobs/{id}/metrics."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlp_magics
from mlp.core.metrics import MAX_SERIES, read_metrics
from mlp_magics.report import task_name


def test_report_writes_the_vlps_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("MLP_METRICS_FILE", str(path))
    monkeypatch.setenv("MLP_TASK_TYPE", "worker")
    monkeypatch.setenv("MLP_TASK_INDEX", "1")
    rec = mlp_magics.report(step=3, loss=0.25, auc=1)
    line = json.loads(path.read_text())
    assert line == rec
    assert set(line) == {"time", "step", "task", "metrics"}
    assert line["step"] == 3 and line["task"] == "worker:1"
    assert line["metrics"] == {"loss": 0.25, "auc": 1.0}
    with pytest.raises(TypeError, match="metric 'loss' must be a number"):
        mlp_magics.report(step=1, loss="high")


def test_report_without_the_platform_only_logs(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.delenv("MLP_METRICS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO", logger="mlp_magics"):
        mlp_magics.report(step=1, loss=0.5)
    assert "loss=0.5" in caplog.text and list(tmp_path.iterdir()) == []


def test_task_name_from_tf_config(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLP_TASK_TYPE", raising=False)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"task": {"type": "chief", "index": 0}}))
    assert task_name() == "chief:0"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert task_name() == "chief:0"


def test_params(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLP_PARAMS", '{"lr": 0.1}')
    assert mlp_magics.params() == {"lr": 0.1}
    monkeypatch.delenv("MLP_PARAMS")
    assert mlp_magics.params() == {}


def test_importing_mlp_magics_stays_cheap():
    code = ("import sys, mlp_magics; mlp_magics.report(step=1, x=1); "
            "heavy = [m for m in ('tensorflow', 'keras', 'ipywidgets', 'IPython') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "MLP_METRICS_FILE": ""})
    assert out.stdout.strip() == "[]"


def _write(path: Path, lines: list[object]) -> None:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def rec(step: int, task: str = "chief:0", **metrics: float) -> dict:
    return {"time": 1000.0 + step, "step": step, "task": task, "metrics": metrics}


def test_reader_skips_garbage_and_partial_lines(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [rec(1, loss=1.0), "garbage", "[1, 2]", {"step": "x", "metrics": {}},
                  {"step": True, "metrics": {"a": 1}}, rec(2, loss=0.5, note="x"),
                  rec(3, "worker:0", loss=0.7, flag=True)])
    with open(path, "a") as f:
        f.write('{"time": 1, "step": 4, "task": "chief:0", "metrics": {"loss"')  # mid-write
    r = read_metrics(path).to_dict()
    assert r["tasks"]["chief:0"]["loss"] == [[1, 1.0, 1001.0], [2, 0.5, 1002.0]]
    assert r["tasks"]["worker:0"] == {"loss": [[3, 0.7, 1003.0]]}  # bools are not metrics
    assert r["latest"]["chief:0"]["step"] == 2
    assert r["skipped_lines"] == 4 and not r["truncated"]


def test_reader_filters(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [rec(s, t, loss=1 / s, auc=s / 10) for s in range(1, 6)
                  for t in ("chief:0", "worker:0")])
    r = read_metrics(path, task="worker:0", since=3, names={"auc"}).to_dict()
    assert list(r["tasks"]) == ["worker:0"]
    assert r["tasks"]["worker:0"] == {"auc": [[4, 0.4, 1004.0], [5, 0.5, 1005.0]]}
    assert r["latest"]["worker:0"]["metrics"] == {"loss": 0.2, "auc": 0.5}


def test_reports_of_one_step_merge_in_latest(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [rec(5, loss=0.3), rec(6, loss=0.2), rec(6, final_loss=0.25), rec(4, x=1.0)])
    assert read_metrics(path).to_dict()["latest"]["chief:0"] == {
        "step": 6, "time": 1006.0, "metrics": {"loss": 0.2, "final_loss": 0.25}}


def test_reader_bounds_series_and_keeps_the_latest_point(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [rec(s, loss=float(s)) for s in range(1, 10_002)])
    points = read_metrics(path, max_points=100).to_dict()["tasks"]["chief:0"]["loss"]
    assert len(points) <= 102 and points[0][0] == 1 and points[-1][0] == 10_001
    steps = [p[0] for p in points[:-1]]
    gaps = {b - a for a, b in itertools.pairwise(steps)}
    assert len(gaps) == 1  # uniform thinning over the whole run


def test_reader_bounds_bytes_and_series_count(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [rec(s, **{f"m{i}": 1.0 for i in range(MAX_SERIES + 10)}) for s in range(3)])
    r = read_metrics(path)
    assert sum(len(m) for m in r.series.values()) == MAX_SERIES and r.truncated
    r = read_metrics(path, max_bytes=200)
    assert r.truncated


def test_reader_nonfinite_and_symlink(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"time": 1, "step": 1, "task": "chief:0", "metrics": {"loss": NaN}}\n')
    r = read_metrics(path).to_dict()
    assert r["tasks"] == {"chief:0": {}} and r["latest"]["chief:0"]["metrics"] == {"loss": None}
    json.dumps(r, allow_nan=False)  # the API answer stays strict JSON
    assert math.isnan(json.loads(path.read_text())["metrics"]["loss"])
    secret = tmp_path / "secret.jsonl"
    _write(secret, [rec(1, loss=1.0)])
    link = tmp_path / "link.jsonl"
    link.symlink_to(secret)
    assert read_metrics(link).to_dict()["tasks"] == {}
    assert read_metrics(tmp_path / "missing.jsonl").to_dict()["tasks"] == {}


# ------------------------------------------------------------------ the REST endpoint
REPORTING_JOB = """
import mlp_magics, os
for step in range(1, 6):
    mlp_magics.report(step=step, loss=1.0 / step, auc=0.5 + step / 100)
with open(os.environ["MLP_METRICS_FILE"], "a") as f:
    f.write("not json\\n")
"""


@pytest.mark.integration
def test_metrics_endpoint(alice, bob, admin):
    job = alice.submit({"name": "metrics", "source": {"inline": REPORTING_JOB}})
    done = alice.wait(job["id"], {"Succeeded", "Failed"})
    assert done["state"] == "Succeeded", done
    r = alice("GET", f"/jobs/{job['id']}/metrics")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["job"] == job["id"] and body["state"] == "Succeeded"
    loss = body["tasks"]["worker:0"]["loss"]
    assert [p[0] for p in loss] == [1, 2, 3, 4, 5] and loss[-1][1] == pytest.approx(0.2)
    assert body["latest"]["worker:0"]["step"] == 5 and body["skipped_lines"] == 1
    r = alice("GET", f"/jobs/{job['id']}/metrics", params={"since": 3, "name": "auc"})
    assert [p[0] for p in r.json()["tasks"]["worker:0"]["auc"]] == [4, 5]
    assert "loss" not in r.json()["tasks"]["worker:0"]
    r = alice("GET", f"/jobs/{job['id']}/metrics", params={"task": "ps:0"})
    assert r.json()["tasks"] == {}
    assert alice("GET", f"/jobs/{job['id']}/metrics", params={"since": "x"}).status_code == 400
    assert bob("GET", f"/jobs/{job['id']}/metrics").status_code == 403
    assert admin("GET", f"/jobs/{job['id']}/metrics").status_code == 200
    assert alice("GET", "/jobs/999999/metrics").status_code == 404
    assert alice.__class__(alice.hub, None)("GET", f"/jobs/{job['id']}/metrics").status_code \
        in (401, 403)


@pytest.mark.integration
def test_metrics_of_a_queued_or_unstarted_job_are_empty(alice):
    job = alice.submit({"name": "nocode", "source": {"path": "does/not/exist.py"}})
    alice.wait(job["id"], {"Failed"})
    body = alice("GET", f"/jobs/{job['id']}/metrics").json()
    assert body["tasks"] == {} and body["latest"] == {}
