"""Text, HTML and SVG rendering used where no widget frontend exists (no service needed)."""

from __future__ import annotations

from mlp_magics import render
from mlp_magics.widgets import JobsTable, QuotaView

QUEUED = {
    "id": 7, "name": "big", "state": "Queued", "reason": "waiting for quota",
    "spec": {"params": {"lr": 0.1}},
    "queue": {"position": 2, "score": 0.71, "score_parts": {"shape": 0.9, "aging": 0.1},
              "blocking": [{"reason": "quota", "scope": "group", "name": "team-a",
                            "resource": "cpu", "requested": 8, "available": 2}]},
}


def test_queued_job_says_why_in_text_and_html():
    text = render.job_text(QUEUED)
    assert "queue position 2, score 0.71 (shape 0.9, aging 0.1)" in text
    assert "waiting: quota (group team-a): cpu requested 8, available 2" in text
    assert "%mlp_job 7" in text
    html = render.job_html(QUEUED)
    assert "team-a" in html and "Queued" in html


def test_not_submitted_job_shows_the_error():
    text = render.job_text(None, error="over quota: cpu 8 > 4", spec={"name": "x"})
    assert "not submitted" in text and "over quota" in text
    assert "&lt;b&gt;" in render.job_html(None, error="<b>", spec={"name": "x"})  # escaped


def test_svg_chart():
    svg = render.svg_chart({"a": [(1, 1.0), (2, 0.5)], "b": [(1, 2.0)], "empty": []},
                           title="loss")
    assert svg.startswith("<svg") and svg.count("<polyline") == 1 and "<circle" in svg
    assert "no data yet" in render.svg_chart({}, title="loss")
    assert "<polyline" in render.svg_chart({"flat": [(1, 3.0), (1, 3.0)]})  # no zero division
    assert "&lt;x&gt;" in render.svg_chart({"<x>": [(0, 0), (1, 1)]})


def test_progress_and_latest():
    metrics = {"tasks": {}, "latest": {"worker:0": {"step": 3, "metrics": {"loss": 0.5}},
                                       "chief:0": {"step": 4, "metrics": {"total_steps": 10}}}}
    assert render.latest_metrics(metrics) == (4, {"total_steps": 10})  # the chief speaks
    assert render.total_steps(None, metrics) == 10
    assert render.total_steps({"spec": {"params": {"steps": 50}}}, {"latest": {}}) == 50
    assert render.total_steps({"spec": {"params": {"steps": "x"}}}, None) is None


def test_tables():
    table = JobsTable([{"id": 1, "name": "a", "state": "Running", "batch": None,
                        "reason": "r", "created_at": "2020-01-01T00:00:00+00:00"}])
    assert "Running" in repr(table) and "d ago" in repr(table)
    assert "no jobs" in repr(JobsTable([]))
    quota = QuotaView({"user": "alice", "groups": [{"name": "team", "limits": {"cpu": 4}}]})
    assert "groups[team].limits.cpu" in repr(quota) and "<table" in quota._repr_html_()
    assert render.table_text(["a", "b"], [[1, None]]).splitlines()[2] == "1  -"
