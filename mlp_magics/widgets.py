"""The dashboards: a job's live widget (state, queue, progress, curves, logs, cancel), a batch's
sortable comparison, and the plain tables of `%mlp_jobs` / `%mlp_quota`.

Each dashboard keeps the job's state as the service reports it and rebuilds everything from
there, so `%mlp_job ID` in a new kernel shows the same dashboard as the cell that submitted it.
Updates come from a `Poller` thread that only assigns to this dashboard's own widgets (never
prints), and stop when the job has ended. Without a widget frontend the text/plain and
text/html representations (render.py) show the state at display time.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w

from mlp_magics import render
from mlp_magics.client import MagicsClient, MLPError, Poller, describe_error

MAX_CHART_POINTS = 300


def _mimebundle(widget: w.Widget, text: str, html: str) -> dict[str, Any]:
    data: dict[str, Any] = dict(widget._repr_mimebundle_() or {})
    data["text/plain"] = text
    data["text/html"] = html
    return data


class JobDashboard:
    """The live dashboard of one job; submits `spec` first when given one."""

    def __init__(
        self,
        client: MagicsClient,
        job_id: int | None = None,
        *,
        spec: dict[str, Any] | None = None,
        log_lines: int = 200,
        interval: float = 1.0,
        max_interval: float = 10.0,
    ):
        if job_id is None and spec is None:
            raise ValueError("JobDashboard needs a job id or a spec to submit")
        self.client = client
        self.job_id = job_id
        self.spec = spec
        self.job: dict[str, Any] | None = None
        self.metrics: dict[str, Any] = {"tasks": {}, "latest": {}}
        self.logs: deque[str] = deque(maxlen=max(1, log_lines))
        self.log_lines = log_lines
        self.log_task: str | None = None
        self.error: str | None = None
        self.retryable = False
        self.states: list[str] = []  # each state seen, in order (tests and debugging)
        self.interval = interval
        self.max_interval = max_interval
        self._final_fetched = False
        self._lock = threading.RLock()
        self._poller: Poller | None = None
        self._ui: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> JobDashboard:
        """Submit (if needed), load the current state, and follow the job in the background."""
        if self.job_id is None and not self.submit():
            return self
        try:
            self.refresh()
        except MLPError as e:
            self._set_error(e)
        self._follow()
        return self

    def submit(self) -> bool:
        assert self.spec is not None
        try:
            job = self.client.submit(self.spec)
        except MLPError as e:
            self._set_error(e)
            return False
        with self._lock:
            self.job_id = int(job["id"])
            self.error = None
            self._apply_job(job)
        self._render()
        return True

    def _follow(self) -> None:
        if self.job_id is None or self.ended or (self._poller and self._poller.running):
            return
        self._poller = Poller(self._poll, on_error=self._set_error, interval=self.interval,
                              max_interval=self.max_interval, name=f"mlp-job-{self.job_id}")
        self._poller.start()

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the job has ended (or `timeout`); returns the job's last state."""
        if self._poller is not None:
            self._poller.join(timeout)
        return self.job

    @property
    def ended(self) -> bool:
        return self.state in render.TERMINAL and self._final_fetched

    @property
    def state(self) -> str | None:
        return None if self.job is None else self.job.get("state")

    # ------------------------------------------------------------------ server state
    def _poll(self) -> tuple[bool, bool]:
        changed = self.refresh()
        return changed, self.ended

    def refresh(self) -> bool:
        """Fetch the job, its metrics and its log tail once; True if anything changed."""
        if self.job_id is None:
            return False
        job = self.client.job(self.job_id)
        metrics = logs = None
        was_final = job.get("state") in render.TERMINAL
        started = job.get("state") not in ("Queued", "Preempted") or job.get("started_at")
        if started and not self._final_fetched:
            metrics = self.client.metrics(self.job_id, max_points=MAX_CHART_POINTS)
            task = self.log_task or self._default_log_task(job)
            if task is not None:
                logs = self._fetch_logs(task)
        with self._lock:
            before = (self.job or {}).get("updated_at"), self.state, self._latest_step()
            self._apply_job(job)
            if metrics is not None:
                self.metrics = metrics
            if logs is not None:
                self.logs.clear()
                self.logs.extend(logs)
            if self.error and not self.retryable:
                pass  # a refused submission stays visible
            else:
                self.error = None
            if was_final:
                self._final_fetched = True
            changed = before != ((self.job or {}).get("updated_at"), self.state,
                                 self._latest_step()) or logs is not None
        self._render()
        return changed

    def _fetch_logs(self, task: str) -> list[str] | None:
        try:
            logs = self.client.logs(self.job_id or 0, task=task, tail=self.log_lines)
        except MLPError as e:
            if e.status == 404:  # the task has not written anything yet
                return None
            raise
        self.log_task = task
        return list(logs.get(task, []))

    def _apply_job(self, job: dict[str, Any]) -> None:
        if self.job is not None and "spec" not in job and "spec" in self.job:
            job = {**job, "spec": self.job["spec"]}
        self.job = job
        state = job.get("state")
        if state and (not self.states or self.states[-1] != state):
            self.states.append(state)

    def _latest_step(self) -> int | None:
        return render.latest_metrics(self.metrics)[0]

    def _default_log_task(self, job: Mapping[str, Any]) -> str | None:
        names = [t["name"] for t in job.get("tasks") or [] if t.get("name")]
        if not names:
            return "setup" if job.get("state") == "Failed" else None
        return render.primary_task(names)

    def _task_names(self) -> list[str]:
        names = [t["name"] for t in (self.job or {}).get("tasks") or [] if t.get("name")]
        if self.log_task and self.log_task not in names:
            names.append(self.log_task)
        return names

    def _set_error(self, e: MLPError | Exception) -> None:
        with self._lock:
            if isinstance(e, MLPError):
                self.error = describe_error(e)
                self.retryable = e.status == 0 or e.status >= 500
                if self.job_id is not None and self.retryable:
                    self.error += " Reconnecting automatically…"
            else:
                self.error = f"dashboard update failed: {e.__class__.__name__}: {e}"
                self.retryable = True
        self._render()

    # ------------------------------------------------------------------ actions
    def cancel(self) -> dict[str, Any] | None:
        if self.job_id is None:
            return None
        try:
            job = self.client.cancel(self.job_id)
        except MLPError as e:
            self._set_error(e)
            return None
        with self._lock:
            self._apply_job(job)
        self._render()
        self._follow()
        return job

    def retry(self) -> None:
        """After a refused or failed submission, or while the service was unreachable."""
        with self._lock:
            self.error = None
        if self.job_id is None:
            self.start()
            return
        try:
            self.refresh()
        except MLPError as e:
            self._set_error(e)
        self._follow()

    # ------------------------------------------------------------------ widgets
    @property
    def widget(self) -> w.VBox:
        if self._ui is None:
            self._build()
        assert self._ui is not None
        box: w.VBox = self._ui["box"]
        return box

    def _build(self) -> None:
        header = w.HTML()
        error = w.HTML()
        queue = w.HTML()
        progress = w.IntProgress(min=0, max=1, value=0, description="progress",
                                 layout=w.Layout(width="360px"))
        values = w.HTML()
        metric = w.Dropdown(description="metric", options=[], layout=w.Layout(width="260px"))
        chart = w.HTML()
        task = w.Dropdown(description="log of", options=[], layout=w.Layout(width="260px"))
        logs = w.HTML()
        cancel = w.Button(description="Cancel job", button_style="danger", icon="stop")
        confirm = w.Button(description="Yes, cancel it", button_style="danger")
        keep = w.Button(description="Keep running")
        confirm_box = w.HBox([w.HTML("Cancel this job? Its tasks are stopped."), confirm, keep],
                             layout=w.Layout(display="none"))
        retry = w.Button(description="Retry", icon="refresh", layout=w.Layout(display="none"))

        def on_cancel(_: Any) -> None:
            confirm_box.layout.display = "flex"

        def on_keep(_: Any) -> None:
            confirm_box.layout.display = "none"

        def on_confirm(_: Any) -> None:
            confirm_box.layout.display = "none"
            self.cancel()

        def on_task(change: dict[str, Any]) -> None:
            if change["new"] and change["new"] != self.log_task and self.job_id is not None:
                try:
                    lines = self._fetch_logs(change["new"])
                except MLPError as e:
                    self._set_error(e)
                    return
                with self._lock:
                    self.logs.clear()
                    self.logs.extend(lines or [])
                self._render()

        def on_metric(change: dict[str, Any]) -> None:
            self._render()

        cancel.on_click(on_cancel)
        keep.on_click(on_keep)
        confirm.on_click(on_confirm)
        retry.on_click(lambda _: self.retry())
        task.observe(on_task, names="value")
        metric.observe(on_metric, names="value")
        box = w.VBox([
            header, error, queue, w.HBox([progress, values]), metric, chart, task, logs,
            w.HBox([cancel, retry]), confirm_box,
        ], layout=w.Layout(border="1px solid #d0d7de", padding="6px"))
        self._ui = dict(box=box, header=header, error=error, queue=queue, progress=progress,
                        values=values, metric=metric, chart=chart, task=task, logs=logs,
                        cancel=cancel, retry=retry, confirm_box=confirm_box)
        self._render()

    def _render(self) -> None:
        ui = self._ui
        if ui is None:
            return
        with self._lock:
            job, metrics, logs = self.job, self.metrics, list(self.logs)
            error, state = self.error, self.state
        ui["header"].value = render.header_html(job, self.spec)
        ui["error"].value = render.error_html(error)
        ui["retry"].layout.display = "" if error and self.retryable else "none"
        ui["queue"].value = render.placement_html(job)
        step, _ = render.latest_metrics(metrics)
        total = render.total_steps(job, metrics)
        bar = ui["progress"]
        if step is None:
            bar.layout.display = "none"
        else:
            bar.layout.display = ""
            bar.max = max(total or step or 1, 1)
            bar.value = min(step, bar.max)
            bar.bar_style = {"Succeeded": "success", "Failed": "danger",
                             "TimedOut": "danger"}.get(state or "", "info")
        ui["values"].value = render.values_html(metrics, job) if job else ""
        names = render.metric_names(metrics)
        if list(ui["metric"].options) != names:
            current = ui["metric"].value
            ui["metric"].options = names
            ui["metric"].value = current if current in names else (names[0] if names else None)
        ui["metric"].layout.display = "" if names else "none"
        chosen = ui["metric"].value
        ui["chart"].value = render.metric_chart(metrics, chosen) if chosen else ""
        tasks = self._task_names()
        if list(ui["task"].options) != tasks:
            ui["task"].options = tasks
        if self.log_task in tasks and ui["task"].value != self.log_task:
            ui["task"].value = self.log_task
        ui["task"].layout.display = "" if tasks else "none"
        ui["logs"].value = render.logs_html(logs) if tasks else ""
        ui["cancel"].disabled = job is None or state in render.TERMINAL

    # ------------------------------------------------------------------ representations
    def __repr__(self) -> str:
        with self._lock:
            return render.job_text(self.job, self.metrics, list(self.logs), self.log_task,
                                   self.error, self.spec)

    def _repr_html_(self) -> str:
        with self._lock:
            return render.job_html(self.job, self.metrics, list(self.logs), self.error,
                                   self.spec)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return _mimebundle(self.widget, repr(self), self._repr_html_())


# ============================================================================ batches
class BatchDashboard:
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
        self.client = client
        self.batch = batch
        self.job_ids = list(job_ids)
        self.pending_specs = list(specs)  # not yet accepted by the service
        self.jobs: dict[int, dict[str, Any]] = {}
        self.params: dict[int, dict[str, Any]] = {}
        self.metrics: dict[int, dict[str, Any]] = {}
        self.final: set[int] = set()  # jobs whose final metrics are loaded
        self.refused: list[tuple[dict[str, Any], str]] = []
        self.error: str | None = None
        self.retryable = False
        self.sort_by = "id"
        self.descending = False
        self.metric: str | None = None
        self.interval = interval
        self.max_interval = max_interval
        self._lock = threading.RLock()
        self._poller: Poller | None = None
        self._ui: dict[str, Any] | None = None

    def start(self) -> BatchDashboard:
        if self.pending_specs and not self.submit():
            return self
        try:
            self.refresh()
        except MLPError as e:
            self._set_error(e)
        self._follow()
        return self

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
                    self.job_ids.append(int(job["id"]))
                    self.jobs[int(job["id"])] = job
                    self.params[int(job["id"])] = dict(spec.get("params") or {})
            self.pending_specs.pop(0)
        with self._lock:
            self.error = None
        self._render()
        return True

    def _follow(self) -> None:
        if self.ended or (self._poller and self._poller.running):
            return
        self._poller = Poller(lambda: (self.refresh(), self.ended), on_error=self._set_error,
                              interval=self.interval, max_interval=self.max_interval,
                              name=f"mlp-batch-{self.batch or 'jobs'}")
        self._poller.start()

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()

    def wait(self, timeout: float | None = None) -> None:
        if self._poller is not None:
            self._poller.join(timeout)

    @property
    def ended(self) -> bool:
        ids = self.ids()
        return bool(ids) and all(i in self.final for i in ids) and not self.pending_specs

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(set(self.job_ids) | set(self.jobs))

    def refresh(self) -> bool:
        if self.batch is not None:
            listed = {int(j["id"]): j for j in self.client.list_jobs(batch=self.batch)}
        else:
            listed = {}
        ids = sorted(set(self.job_ids) | set(listed))
        changed = False
        for job_id in ids:
            if job_id in self.final:
                continue
            job = listed.get(job_id)
            if job is None or job_id not in self.params:
                job = self.client.job(job_id)  # detail: carries the spec's params
                self.params[job_id] = dict((job.get("spec") or {}).get("params") or {})
            before = self.jobs.get(job_id, {}).get("updated_at")
            state = job.get("state")
            metrics = None
            if state not in ("Queued", "Preempted") or job.get("started_at"):
                metrics = self.client.metrics(job_id, max_points=MAX_CHART_POINTS)
            with self._lock:
                step_before = render.latest_metrics(self.metrics.get(job_id))[0]
                self.jobs[job_id] = job
                if metrics is not None:
                    self.metrics[job_id] = metrics
                if state in render.TERMINAL:
                    self.final.add(job_id)
                changed |= before != job.get("updated_at") or step_before != (
                    render.latest_metrics(self.metrics.get(job_id))[0])
        with self._lock:
            self.job_ids = ids
            self.error = None
        self._render()
        return changed

    def _set_error(self, e: MLPError | Exception) -> None:
        with self._lock:
            if isinstance(e, MLPError):
                self.error = describe_error(e)
                self.retryable = e.status == 0 or e.status >= 500
            else:
                self.error = f"dashboard update failed: {e.__class__.__name__}: {e}"
                self.retryable = True
        self._render()

    def cancel_all(self) -> None:
        for job_id in self.ids():
            if self.jobs.get(job_id, {}).get("state") not in render.TERMINAL:
                try:
                    self.client.cancel(job_id)
                except MLPError as e:
                    self._set_error(e)
                    return
        self.final.clear()
        self._follow()

    def retry(self) -> None:
        self.start()

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

    @property
    def widget(self) -> w.VBox:
        if self._ui is None:
            self._build()
        assert self._ui is not None
        box: w.VBox = self._ui["box"]
        return box

    def _build(self) -> None:
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
        self._ui = dict(box=box, summary=summary, error=error, sort=sort, table=table,
                        metric=metric, chart=chart, cancel=cancel, retry=retry)
        self._render()

    def _render(self) -> None:
        ui = self._ui
        if ui is None:
            return
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

    def __repr__(self) -> str:
        headers, rows = self.rows()
        parts = [self._summary(), render.table_text(headers, rows)]
        parts += [f"not submitted: {s.get('name')} ({render.fmt_params(s.get('params'))}): {m}"
                  for s, m in self.refused]
        if self.error:
            parts.append(f"error: {self.error}")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        return (f"<div class='mlp-batch'><b>{render.esc(self._summary())}</b>"
                f"{self._refused_html()}{render.error_html(self.error)}{self._table_html()}"
                f"{self.chart() if self.metric_names() else ''}</div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return _mimebundle(self.widget, repr(self), self._repr_html_())


# ============================================================================ plain tables
class JobsTable:
    """`%mlp_jobs`: my jobs as a table (text and HTML; no live updates)."""

    HEADERS = ("id", "name", "batch", "state", "reason", "created")

    def __init__(self, jobs: Sequence[Mapping[str, Any]]):
        self.jobs = list(jobs)

    def rows(self) -> list[list[Any]]:
        return [[j.get("id"), j.get("name", ""), j.get("batch") or "", j.get("state", ""),
                 (j.get("reason") or "")[:80], render.ago(j.get("created_at"))]
                for j in self.jobs]

    def __repr__(self) -> str:
        if not self.jobs:
            return "no jobs (submit one with %%mlp_train)"
        return (render.table_text(self.HEADERS, self.rows())
                + "\n%mlp_job ID opens a job's dashboard; %mlp_compare BATCH compares a batch")

    def _repr_html_(self) -> str:
        if not self.jobs:
            return "<i>no jobs (submit one with %%mlp_train)</i>"
        rows = self.rows()
        for row in rows:
            row[3] = render.badge(row[3])
        return render.table_html(self.HEADERS, rows, raw_columns=[3])


class QuotaView:
    """`%mlp_quota`: the GET /quota answer. Per quota group (cohort, personal cap, my usage) a
    table per pool (limit, limit with expansions, used by the group, idle), then my active jobs.
    An answer of another shape is shown as a flat table of what it holds."""

    POOL_COLUMNS = ("resource", "limit", "with expansions", "used by group", "idle")
    POOL_KEYS = ("limit", "with_expansions", "used_by_group", "idle")
    JOB_HEADERS = ("id", "name", "state", "group/pool")

    def __init__(self, quota: Mapping[str, Any]):
        self.quota = dict(quota)

    # ------------------------------------------------------------------ the known shape
    def groups(self) -> list[dict[str, Any]] | None:
        """[{name, cohort, personal_cap, my_usage, pools: [(pool, headers, rows, empty)]}], or
        None when the answer does not have the shape of GET /quota."""
        groups = self.quota.get("groups")
        if not isinstance(groups, Mapping):
            return None
        out = []
        for name, g in groups.items():
            if not isinstance(g, Mapping) or not isinstance(g.get("pools"), Mapping):
                return None
            pools = []
            for pool, numbers in g["pools"].items():
                if not isinstance(numbers, Mapping) or not all(
                        isinstance(numbers.get(k), Mapping) for k in self.POOL_KEYS):
                    return None
                resources: list[str] = []
                for k in self.POOL_KEYS:
                    resources += [r for r in numbers[k] if r not in resources]
                rows = [[r, *(render.fmt_amount(r, numbers[k].get(r, 0)) for k in self.POOL_KEYS)]
                        for r in resources
                        if r in ("cpu", "memory") or any(numbers[k].get(r) for k in self.POOL_KEYS)]
                empty = not any(v for k in self.POOL_KEYS for v in numbers[k].values())
                pools.append((str(pool), rows, empty))
            out.append({"name": str(name), "cohort": g.get("cohort"),
                        "personal_cap": g.get("personal_cap"), "my_usage": g.get("my_usage"),
                        "pools": pools})
        return out

    def jobs(self) -> list[list[Any]]:
        jobs = self.quota.get("active_jobs")
        if not isinstance(jobs, list):
            return []
        return [[j.get("id"), j.get("name", ""), j.get("state", ""),
                 "/".join(str(x) for x in (j.get("group"), j.get("pool")) if x)]
                for j in jobs if isinstance(j, Mapping)]

    def _group_facts(self, g: Mapping[str, Any]) -> list[str]:
        cap = g["personal_cap"]
        return [f"cohort {g['cohort']}" if g["cohort"] else "no cohort",
                f"my usage {render.fmt_resources(g['my_usage'])}",
                f"personal cap {render.fmt_resources(cap)}" if cap else "no personal cap"]

    # ------------------------------------------------------------------ any other shape
    def _flat(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                for i, v in enumerate(value):
                    label = v.get("name") or v.get("group") or v.get("id") or i
                    walk(f"{prefix}[{label}]", v)
            else:
                out.append((prefix, value))

        walk("", self.quota)
        return out

    def _flat_rows(self) -> list[list[Any]]:
        return [[k, v if isinstance(v, int | float) else str(v)] for k, v in self._flat()]

    # ------------------------------------------------------------------ representations
    def __repr__(self) -> str:
        groups = self.groups()
        if groups is None:
            return "quota (as the service reported it)\n" + render.table_text(
                ("what", "value"), self._flat_rows())
        user = self.quota.get("user")
        out = [f"quota of {user}" if user else "my quota"]
        if not groups:
            out.append("  (in no quota group)")
        for g in groups:
            out.append(f"\ngroup {g['name']}: " + " · ".join(self._group_facts(g)))
            for pool, rows, empty in g["pools"]:
                if empty:
                    out.append(f"  pool {pool}: no quota for this group")
                    continue
                out.append(f"  pool {pool}:")
                table = render.table_text(self.POOL_COLUMNS, rows)
                out += [f"    {line}" for line in table.splitlines()]
        jobs = self.jobs()
        if jobs:
            out.append("\nmy active jobs:")
            out += [f"  {line}" for line in render.table_text(self.JOB_HEADERS,
                                                              jobs).splitlines()]
        else:
            out.append("\nno active jobs")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        groups = self.groups()
        if groups is None:
            return ("<div class='mlp-quota'><b>quota</b> (as the service reported it)"
                    + render.table_html(("what", "value"), self._flat_rows()) + "</div>")
        user = self.quota.get("user")
        parts = [f"<b>quota of {render.esc(str(user))}</b>" if user else "<b>my quota</b>"]
        if not groups:
            parts.append("<div><i>in no quota group</i></div>")
        for g in groups:
            parts.append(f"<div style='margin-top:6px'><b>group {render.esc(g['name'])}</b> "
                         f"<span style='color:#57606a'>"
                         f"{render.esc(' · '.join(self._group_facts(g)))}</span></div>")
            for pool, rows, empty in g["pools"]:
                if empty:
                    parts.append(f"<div style='margin-left:12px;color:#57606a'>pool "
                                 f"{render.esc(pool)}: no quota for this group</div>")
                    continue
                parts.append(f"<div style='margin-left:12px'>pool <b>{render.esc(pool)}</b>"
                             f"{render.table_html(self.POOL_COLUMNS, rows)}</div>")
        jobs = self.jobs()
        if jobs:
            rows = [[j[0], j[1], render.badge(j[2]), j[3]] for j in jobs]
            parts.append("<div style='margin-top:6px'><b>my active jobs</b>"
                         + render.table_html(self.JOB_HEADERS, rows, raw_columns=[2]) + "</div>")
        else:
            parts.append("<div style='margin-top:6px;color:#57606a'>no active jobs</div>")
        return "<div class='mlp-quota'>" + "".join(parts) + "</div>"
