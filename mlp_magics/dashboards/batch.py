"""The dashboard of a batch (a `--grid`) or of given job ids: one row per job (parameters,
state, step, latest metrics), sortable by any column, a comparison plot of one metric across
jobs, and Cancel all (with confirmation). It follows until every job has ended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as w

from mlp_magics import render
from mlp_magics.client import MagicsClient, MLPError, describe_error
from mlp_magics.dashboards.base import MAX_CHART_POINTS, Dashboard

__all__ = ["BatchDashboard"]


@dataclass
class _BatchAnswer:
    ids: list[int]
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)  # jobs not final yet
    params: dict[int, dict[str, Any]] = field(default_factory=dict)  # read from a job's spec
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)


class BatchDashboard(Dashboard):
    """One row per job of a batch (or of given ids): parameters, state, latest metrics; sortable,
    with a comparison plot of one metric across jobs."""

    def __init__(
        self,
        client: MagicsClient,
        *,
        batch: str | None = None,
        job_ids: Sequence[int] = (),
        specs: Sequence[dict[str, Any]] = (),
        interval: float = 2.0,
        max_interval: float = 15.0,
    ):
        super().__init__(client, interval=interval, max_interval=max_interval)
        self.batch = batch
        self.job_ids = list(job_ids)
        self.pending_specs = list(specs)  # not yet accepted by the service
        self.jobs: dict[int, dict[str, Any]] = {}
        self.params: dict[int, dict[str, Any]] = {}
        self.metrics: dict[int, dict[str, Any]] = {}
        self.final: set[int] = set()  # jobs whose final metrics are loaded
        self.refused: list[tuple[dict[str, Any], str]] = []
        self.sort_by = "id"
        self.descending = False
        self.metric: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def _needs_submit(self) -> bool:
        return bool(self.pending_specs)

    def submit(self) -> bool:
        """Submit the remaining specs; a refused one is listed, unreachable stops (retry)."""
        while self.pending_specs:
            spec = self.pending_specs[0]
            try:
                job = self.client.submit(spec)
            except MLPError as e:
                if e.status == 0 or e.status >= 500:
                    self._set_error(e)
                    return False
                self.refused.append((spec, describe_error(e)))
            else:
                with self._lock:
                    self._newest()
                    self.job_ids.append(int(job["id"]))
                    self.jobs[int(job["id"])] = job
                    self.params[int(job["id"])] = dict(spec.get("params") or {})
            self.pending_specs.pop(0)
        with self._lock:
            self.error = None
        self._render()
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Block until every job has ended (or `timeout`)."""
        self._wait(timeout)

    @property
    def ended(self) -> bool:
        ids = self.ids()
        return bool(ids) and all(i in self.final for i in ids) and not self.pending_specs

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(set(self.job_ids) | set(self.jobs))

    def _poller_name(self) -> str:
        return f"mlp-batch-{self.batch or 'jobs'}"

    # ------------------------------------------------------------------ server state
    def _fetch(self) -> _BatchAnswer:
        """The batch's list (when it is a batch), then each job not final yet: its detail
        the first time (the spec carries its parameters) and its metrics once started."""
        with self._lock:
            job_ids, final, known = list(self.job_ids), set(self.final), set(self.params)
        listed: dict[int, dict[str, Any]] = {}
        if self.batch is not None:
            listed = {int(j["id"]): j for j in self.client.list_jobs(batch=self.batch)}
        answer = _BatchAnswer(sorted(set(job_ids) | set(listed)))
        for job_id in answer.ids:
            if job_id in final:
                continue
            job = listed.get(job_id)
            if job is None or job_id not in known:
                job = self.client.job(job_id)  # detail: carries the spec's params
                answer.params[job_id] = dict((job.get("spec") or {}).get("params") or {})
            answer.jobs[job_id] = job
            if job.get("state") not in ("Queued", "Preempted") or job.get("started_at"):
                answer.metrics[job_id] = self.client.metrics(job_id, max_points=MAX_CHART_POINTS)
        return answer

    def _apply(self, answer: _BatchAnswer) -> bool:
        changed = False
        self.params.update(answer.params)
        for job_id, job in answer.jobs.items():
            before = self.jobs.get(job_id, {}).get("updated_at")
            step_before = render.latest_metrics(self.metrics.get(job_id))[0]
            self.jobs[job_id] = job
            if job_id in answer.metrics:
                self.metrics[job_id] = answer.metrics[job_id]
            if job.get("state") in render.TERMINAL:
                self.final.add(job_id)
            changed |= before != job.get("updated_at") or step_before != (
                render.latest_metrics(self.metrics.get(job_id))[0])
        self.job_ids = answer.ids
        self.error = None
        return changed

    # ------------------------------------------------------------------ actions
    def cancel_all(self) -> None:
        for job_id in self.ids():
            if self.jobs.get(job_id, {}).get("state") not in render.TERMINAL:
                try:
                    self.client.cancel(job_id)
                except MLPError as e:
                    self._set_error(e)
                    return
        with self._lock:
            self.final.clear()
        self._follow()

    # ------------------------------------------------------------------ table and plot
    def param_names(self) -> list[str]:
        names: list[str] = []
        for p in self.params.values():
            names += [k for k in p if k not in names]
        return names

    def metric_names(self) -> list[str]:
        names: set[str] = set()
        for m in self.metrics.values():
            names.update(render.latest_metrics(m)[1])
        return sorted(n for n in names if n not in render.PROGRESS_METRICS)

    def rows(self) -> tuple[list[str], list[list[Any]]]:
        """Headers and rows (one per job), sorted by `sort_by`."""
        with self._lock:
            params, metrics = self.param_names(), self.metric_names()
            headers = ["id", "name", *params, "state", "step", *metrics]
            rows = []
            for job_id in self.ids():
                job = self.jobs.get(job_id, {})
                step, values = render.latest_metrics(self.metrics.get(job_id))
                p = self.params.get(job_id, {})
                rows.append([job_id, job.get("name", ""), *(p.get(k) for k in params),
                             job.get("state", ""), step, *(values.get(m) for m in metrics)])
        key = headers.index(self.sort_by) if self.sort_by in headers else 0
        present = [r for r in rows if r[key] is not None]
        missing = [r for r in rows if r[key] is None]  # last, whatever the direction
        present.sort(key=lambda r: (0, r[key], "") if isinstance(r[key], int | float)
                     else (1, 0, str(r[key])), reverse=self.descending)
        return headers, present + missing

    def chart(self, metric: str | None = None) -> str:
        names = self.metric_names()
        metric = metric or self.metric or (names[0] if names else None)
        if metric is None:
            return render.svg_chart({}, title="metrics")
        series = {}
        with self._lock:
            for job_id in self.ids():
                m = self.metrics.get(job_id) or {}
                task = render.primary_task((m.get("tasks") or {}).keys())
                if task is None:
                    continue
                pts = [(p[0], p[1]) for p in m["tasks"][task].get(metric, [])]
                label = f"{job_id} {render.fmt_params(self.params.get(job_id))}".strip()
                series[label] = pts
        return render.svg_chart(series, title=metric, width=520, height=240)

    def _table_html(self) -> str:
        headers, rows = self.rows()
        for row in rows:
            state_col = headers.index("state")
            row[state_col] = render.badge(row[state_col])
        return render.table_html(headers, rows, raw_columns=[headers.index("state")])

    def _refused_html(self) -> str:
        if not self.refused:
            return ""
        items = "".join(f"<li>{render.esc(s.get('name', '?'))} "
                        f"({render.esc(render.fmt_params(s.get('params')))}): "
                        f"{render.esc(msg)}</li>" for s, msg in self.refused)
        return (f"<div style='color:#cf222e'>not submitted:"
                f"<ul style='white-space:pre-wrap'>{items}</ul></div>")

    def _summary(self) -> str:
        states: dict[str, int] = {}
        for job in self.jobs.values():
            states[job.get("state", "?")] = states.get(job.get("state", "?"), 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        title = f"batch {self.batch}" if self.batch else "jobs"
        return f"{title}: {len(self.ids())} jobs ({counts or 'none yet'})"

    # ------------------------------------------------------------------ widgets
    def _build(self) -> dict[str, Any]:
        summary = w.HTML()
        error = w.HTML()
        sort = w.Dropdown(description="sort by", options=["id"], value="id",
                          layout=w.Layout(width="220px"))
        desc = w.ToggleButton(description="descending", value=False)
        table = w.HTML()
        metric = w.Dropdown(description="compare", options=[], layout=w.Layout(width="260px"))
        chart = w.HTML()
        cancel = w.Button(description="Cancel all", button_style="danger", icon="stop")
        confirm = w.Button(description="Yes, cancel every job", button_style="danger")
        keep = w.Button(description="Keep running")
        confirm_box = w.HBox([confirm, keep], layout=w.Layout(display="none"))
        retry = w.Button(description="Retry", icon="refresh", layout=w.Layout(display="none"))

        def on_sort(change: dict[str, Any]) -> None:
            self.sort_by = sort.value or "id"
            self.descending = bool(desc.value)
            self._render()

        def on_metric(change: dict[str, Any]) -> None:
            self.metric = metric.value
            self._render()

        def on_confirm(_: Any) -> None:
            confirm_box.layout.display = "none"
            self.cancel_all()

        sort.observe(on_sort, names="value")
        desc.observe(on_sort, names="value")
        metric.observe(on_metric, names="value")
        cancel.on_click(lambda _: setattr(confirm_box.layout, "display", "flex"))
        keep.on_click(lambda _: setattr(confirm_box.layout, "display", "none"))
        confirm.on_click(on_confirm)
        retry.on_click(lambda _: self.retry())
        box = w.VBox([summary, error, w.HBox([sort, desc]), table, metric, chart,
                      w.HBox([cancel, retry]), confirm_box],
                     layout=w.Layout(border="1px solid #d0d7de", padding="6px"))
        return dict(box=box, summary=summary, error=error, sort=sort, table=table,
                    metric=metric, chart=chart, cancel=cancel, retry=retry)

    def _render_ui(self, ui: dict[str, Any]) -> None:
        headers, _ = self.rows()
        ui["summary"].value = f"<b>{render.esc(self._summary())}</b>" + self._refused_html()
        ui["error"].value = render.error_html(self.error)
        ui["retry"].layout.display = "" if self.error and self.retryable else "none"
        if list(ui["sort"].options) != headers:
            ui["sort"].options = headers
            ui["sort"].value = self.sort_by if self.sort_by in headers else "id"
        ui["table"].value = self._table_html()
        names = self.metric_names()
        if list(ui["metric"].options) != names:
            ui["metric"].options = names
            ui["metric"].value = self.metric if self.metric in names else (
                names[0] if names else None)
        ui["chart"].value = self.chart(ui["metric"].value) if names else ""
        ui["cancel"].disabled = all(
            j.get("state") in render.TERMINAL for j in self.jobs.values())

    # ------------------------------------------------------------------ representations
    def text(self) -> str:
        headers, rows = self.rows()
        parts = [self._summary(), render.table_text(headers, rows)]
        parts += [f"not submitted: {s.get('name')} ({render.fmt_params(s.get('params'))}): {m}"
                  for s, m in self.refused]
        if self.error:
            parts.append(f"error: {self.error}")
        return "\n".join(parts)

    def html(self) -> str:
        return (f"<div class='mlp-batch'><b>{render.esc(self._summary())}</b>"
                f"{self._refused_html()}{render.error_html(self.error)}{self._table_html()}"
                f"{self.chart() if self.metric_names() else ''}</div>")
