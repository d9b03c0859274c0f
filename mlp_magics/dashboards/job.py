"""The live dashboard of one job: state and reason, queue position or what it holds, progress,
latest metrics and curves, the log tail of a chosen task, and Cancel (with confirmation)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from mlp_magics import render
from mlp_magics.client import MagicsClient, MLPError
from mlp_magics.dashboards.base import MAX_CHART_POINTS, Dashboard

__all__ = ["JobDashboard"]


@dataclass
class _JobAnswer:
    job: dict[str, Any]
    metrics: dict[str, Any] | None  # None: not asked (not started yet, or final already loaded)
    log_task: str | None
    logs: list[str] | None  # None: not asked, or the task has written nothing yet


class JobDashboard(Dashboard):
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
        super().__init__(client, interval=interval, max_interval=max_interval)
        self.job_id = job_id
        self.spec = spec
        self.job: dict[str, Any] | None = None
        self.metrics: dict[str, Any] = {"tasks": {}, "latest": {}}
        self.logs: deque[str] = deque(maxlen=max(1, log_lines))
        self.log_lines = log_lines
        self.log_task: str | None = None
        self.states: list[str] = []  # each state seen, in order (tests and debugging)
        self._final_fetched = False

    # ------------------------------------------------------------------ lifecycle
    def _needs_submit(self) -> bool:
        return self.job_id is None

    def submit(self) -> bool:
        assert self.spec is not None
        try:
            job = self.client.submit(self.spec)
        except MLPError as e:
            self._set_error(e)
            return False
        with self._lock:
            self._newest()
            self.job_id = int(job["id"])
            self.error = None
            self._apply_job(job)
        self._render()
        return True

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the job has ended (or `timeout`); returns the job's last state."""
        self._wait(timeout)
        return self.job

    @property
    def ended(self) -> bool:
        return self.state in render.TERMINAL and self._final_fetched

    @property
    def state(self) -> str | None:
        return None if self.job is None else self.job.get("state")

    def _poller_name(self) -> str:
        return f"mlp-job-{self.job_id}"

    def _retry_note(self) -> str:
        return " Reconnecting automatically…" if self.job_id is not None else ""

    # ------------------------------------------------------------------ server state
    def _fetch(self) -> _JobAnswer | None:
        """The job; once it has started (and until its final state is loaded) its metrics and
        the log tail of the task shown."""
        job_id = self.job_id
        if job_id is None:
            return None
        job = self.client.job(job_id)
        started = job.get("state") not in ("Queued", "Preempted") or job.get("started_at")
        answer = _JobAnswer(job, None, None, None)
        if started and not self._final_fetched:
            answer.metrics = self.client.metrics(job_id, max_points=MAX_CHART_POINTS)
            task = self.log_task or self._default_log_task(job)
            if task is not None:
                answer.logs = self._fetch_logs(task)
                answer.log_task = task if answer.logs is not None else None
        return answer

    def _apply(self, answer: _JobAnswer | None) -> bool:
        if answer is None:
            return False
        before = (self.job or {}).get("updated_at"), self.state, self._latest_step()
        self._apply_job(answer.job)
        if answer.metrics is not None:
            self.metrics = answer.metrics
        if answer.logs is not None:
            self.log_task = answer.log_task
            self.logs.clear()
            self.logs.extend(answer.logs)
        if not self.error or self.retryable:  # a refused submission stays visible
            self.error = None
        if answer.job.get("state") in render.TERMINAL:
            self._final_fetched = True
        return before != ((self.job or {}).get("updated_at"), self.state,
                          self._latest_step()) or answer.logs is not None

    def _fetch_logs(self, task: str) -> list[str] | None:
        try:
            logs = self.client.logs(self.job_id or 0, task=task, tail=self.log_lines)
        except MLPError as e:
            if e.status == 404:  # the task has not written anything yet
                return None
            raise
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
            self._newest()
            self._apply_job(job)
        self._render()
        self._follow()
        return job

    def show_logs_of(self, task: str) -> None:
        """Show the log tail of another task (the task dropdown)."""
        if task == self.log_task or self.job_id is None:
            return
        try:
            lines = self._fetch_logs(task)
        except MLPError as e:
            self._set_error(e)
            return
        with self._lock:
            if lines is not None:
                self.log_task = task
            self.logs.clear()
            self.logs.extend(lines or [])
        self._render()

    # ------------------------------------------------------------------ widgets
    def _build(self) -> dict[str, Any]:
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
            if change["new"]:
                self.show_logs_of(change["new"])

        cancel.on_click(on_cancel)
        keep.on_click(on_keep)
        confirm.on_click(on_confirm)
        retry.on_click(lambda _: self.retry())
        task.observe(on_task, names="value")
        metric.observe(lambda _: self._render(), names="value")
        box = w.VBox([
            header, error, queue, w.HBox([progress, values]), metric, chart, task, logs,
            w.HBox([cancel, retry]), confirm_box,
        ], layout=w.Layout(border="1px solid #d0d7de", padding="6px"))
        return dict(box=box, header=header, error=error, queue=queue, progress=progress,
                    values=values, metric=metric, chart=chart, task=task, logs=logs,
                    cancel=cancel, retry=retry, confirm_box=confirm_box)

    def _render_ui(self, ui: dict[str, Any]) -> None:
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
    def text(self) -> str:
        with self._lock:
            return render.job_text(self.job, self.metrics, list(self.logs), self.log_task,
                                   self.error, self.spec)

    def html(self) -> str:
        with self._lock:
            return render.job_html(self.job, self.metrics, list(self.logs), self.error,
                                   self.spec)
