"""`/jobs/{id}/metrics`: a job's training metric series per task (read off the event loop)."""

from __future__ import annotations

import asyncio

from mlp.api.base import ApiError, APIHandler, int_arg
from mlp.core.metrics import MAX_POINTS, MetricsReport, metrics_path, read_metrics


class MetricsHandler(APIHandler):
    """GET /jobs/{id}/metrics?task=&since=&name=: the job's metric series per task."""

    async def get(self, job_id: str) -> None:
        job = self.load_job(job_id)
        task = self.get_argument("task", None) or None
        since_arg = self.get_argument("since", None)
        since = None if since_arg in (None, "") else int_arg(self, "since", 0, -1, 2**62)
        names_arg = self.get_argument("name", None)
        names = {n for n in names_arg.split(",") if n} if names_arg else None
        max_points = int_arg(self, "max_points", MAX_POINTS, 2, 10_000)
        path = metrics_path(job.backend_state)
        if path is None:
            report = MetricsReport()
        else:
            try:
                report = await asyncio.to_thread(
                    read_metrics, path, task=task, since=since, names=names,
                    max_points=max_points,
                )
            except OSError as e:
                raise ApiError(
                    500, "internal", f"cannot read the metrics of job {job.id}: {e}"
                ) from None
        self.write_json({"job": job.id, "state": job.state, **report.to_dict()})
