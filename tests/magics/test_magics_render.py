"""Text, HTML and SVG rendering used where no widget frontend exists (no service needed)."""

from __future__ import annotations

from mlp_magics import render
from mlp_magics.tables import JobsTable, QuotaView

QUEUED = {
    "id": 7, "name": "big", "state": "Queued", "reason": "submitted by alice",
    "group": "team-a", "pool": "default", "spec": {"params": {"lr": 0.1}},
    # the shape of job_model's `queue` (Explanation.to_dict + group/pool)
    "queue": {"position": 2, "score": -4.71234, "group": "team-a", "pool": "default",
              "score_parts": {"priority": 0.0, "runtime": -5.0, "shape_balance": -0.0,
                              "aging": 0.28766},
              "blocking": [{"reason": "group 'team-a' has 2 cpu of its quota free in pool "
                                      "'default'; needs 8",
                            "scope": "group", "group": "team-a", "resource": "cpu",
                            "requested": 8.0, "available": 2.0},
                           {"scope": "pool", "pool": "default", "resource": "memory",
                            "requested": 8589934592.0, "available": 2147483648.0}]},
}


def test_queued_job_says_why_in_text_and_html():
    text = render.job_text(QUEUED)
    assert ("queued in team-a/default · 2 jobs ahead in the queue · "
            "score -4.712 (runtime -5, aging 0.288)") in text, text
    assert "blocked: group 'team-a' has 2 cpu of its quota free in pool 'default'; needs 8" in text
    # an entry without a sentence is told from its fields, memory in binary units
    assert "blocked: pool default: memory requested 8Gi, available 2Gi" in text
    assert "%mlp_job 7" in text
    html = render.job_html(QUEUED)
    assert "team-a" in html and "Queued" in html and "fff8c5" in html
    first = {**QUEUED, "queue": {**QUEUED["queue"], "position": 0, "blocking": []}}
    assert "first in line" in render.job_text(first)


def test_dependency_wait_and_reservations():
    waiting = {"id": 9, "name": "next", "state": "Queued", "reason": "waiting for job 7 to succeed",
               "queue": {"position": None, "score": None, "score_parts": {}, "waiting_for": [7],
                         "blocking": [{"reason": "waiting for job 7 to succeed",
                                       "scope": "dependency", "dependency": [7], "resource": "",
                                       "requested": 0, "available": 0}]}}
    text = render.job_text(waiting)
    assert "waiting for job 7 to succeed" in text and "blocked:" not in text
    assert "score" not in text and "position" not in text
    two = {**waiting, "queue": {**waiting["queue"], "waiting_for": [7, 8]}}
    assert "waiting for jobs 7, 8 to succeed" in render.job_text(two)
    running = {"id": 10, "name": "r", "state": "Running",
               "reservation": {"group": "ads", "pool": "default", "preemptible": True,
                               "amount": {"cpu": 2.0, "memory": 1073741824.0, "gpu": 0.0},
                               "borrowed": {"cpu": 0.5, "memory": 0.0, "gpu": 0.0}}}
    text = render.job_text(running)
    assert "holds cpu 2, memory 1Gi in ads/default" in text
    assert "preemptible (running on borrowed quota: cpu 0.5 borrowed)" in text
    assert "preemptible" in render.job_html(running)
    own = {**running, "reservation": {**running["reservation"], "preemptible": False}}
    assert "preemptible" not in render.job_text(own)


def test_refusal_numbers():
    from mlp_magics.client import MLPError, describe_error

    e = MLPError(400, "never_fits", "the job could never start: job needs 20Gi memory ...", {
        "error": "never_fits", "message": "...",
        "blocking": [{"reason": "r", "scope": "group", "group": "ads", "resource": "memory",
                      "requested": 21474836480.0, "available": 17179869184.0}]})
    text = describe_error(e)
    assert "[HTTP 400 never_fits]" in text
    assert "\n  - group 'ads', memory: requested 20Gi, available 16Gi" in text


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
    zero = {"cpu": 0.0, "memory": 0.0, "gpu": 0.0}
    real = QuotaView({"user": "bob", "active_jobs": [], "groups": {"default": {
        "cohort": None, "personal_cap": None, "my_usage": zero,
        "pools": {"default": {"limit": {"cpu": 1.0, "memory": 4294967296.0, "gpu": 0.0},
                              "with_expansions": {"cpu": 1.5, "memory": 4294967296.0,
                                                  "gpu": 0.0},
                              "used_by_group": zero, "idle": {"cpu": 1.0, "memory": 0.0}},
                  "production": {"limit": zero, "with_expansions": zero,
                                 "used_by_group": zero, "idle": zero}}}}})
    text = repr(real)
    assert "group default: no cohort · my usage cpu 0, memory 0 · no personal cap" in text
    assert "cpu       1      1.5              0              1" in text, text
    assert "memory    4Gi    4Gi              0              0" in text
    assert "gpu" not in text and "pool production: no quota for this group" in text
    assert "no active jobs" in text and real._repr_html_().count("<table") == 1
    assert render.table_text(["a", "b"], [[1, None]]).splitlines()[2] == "1  -"
