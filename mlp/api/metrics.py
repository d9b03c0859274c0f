"""`/jobs/{id}/metrics`: a job's training metric series per task (read off the event loop)."""

from __future__ import annotations

import asyncio
from typing import Any

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


def openapi_paths(job_id_param: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI path item of the metrics route (merged into mlp/api/openapi.py's `paths`)."""
    point = {
        "type": "array",
        "prefixItems": [
            {"type": "integer", "description": "step"},
            {"type": "number", "description": "value"},
            {"type": "number", "description": "unix time of the report"},
        ],
    }
    return {
        "/jobs/{job_id}/metrics": {
            "get": {
                "summary": "Metric time series reported by the job's tasks",
                "operationId": "getJobMetrics",
                "description": "Series per task and metric, from the reports of `vlps.report`, "
                "`vlps.MetricsCallback`, `mlp_magics.report` or the Keras callback of "
                "mlp_magics. Each series holds at most `max_points` points, thinned uniformly "
                "over the run; the latest point is always present. Non-finite values appear "
                "as null in `latest` and are left out of series.",
                "parameters": [
                    job_id_param,
                    {
                        "name": "task",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "only this task, e.g. chief:0 or worker:1",
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "integer"},
                        "description": "only points with a step after this one (polling)",
                    },
                    {
                        "name": "name",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "comma-separated metric names to return",
                    },
                    {
                        "name": "max_points",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 2, "maximum": 10000,
                                   "default": MAX_POINTS},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "metric series",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "job": {"type": "integer"},
                                        "state": {"type": "string"},
                                        "tasks": {
                                            "type": "object",
                                            "description": "task -> metric -> points",
                                            "additionalProperties": {
                                                "type": "object",
                                                "additionalProperties": {
                                                    "type": "array",
                                                    "items": point,
                                                },
                                            },
                                        },
                                        "latest": {
                                            "type": "object",
                                            "description": "task -> {step, time, metrics}",
                                        },
                                        "skipped_lines": {"type": "integer"},
                                        "truncated": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "400": error,
                    "401": error,
                    "403": error,
                    "404": error,
                },
            }
        }
    }
