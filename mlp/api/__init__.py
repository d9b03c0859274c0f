"""The REST API v1 of the mlp service: one module per resource over `base.APIHandler`.

Handlers parse, authorize, call the core (`mlp.core`), serialize; no platform logic lives here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel
from tornado import web

from mlp.api import admin, jobs, logs, metrics, models, queue, reservations
from mlp.api.base import NotFoundHandler
from mlp.api.openapi import OPERATIONS, OpenAPIHandler


def route_table(api_prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    p = api_prefix
    return [
        (rf"{p}/jobs/?", jobs.JobsHandler),
        (rf"{p}/jobs/(?P<job_id>[^/]+)/?", jobs.JobHandler),
        (rf"{p}/jobs/(?P<job_id>[^/]+)/logs/?", logs.LogsHandler),
        (rf"{p}/jobs/(?P<job_id>[^/]+)/metrics/?", metrics.MetricsHandler),
        (rf"{p}/queue/?", queue.QueueHandler),
        (rf"{p}/quota/?", queue.MyQuotaHandler),
        (rf"{p}/reservations/?", reservations.ReservationsHandler),
        (
            rf"{p}/reservations/(?P<user>[^/]+)/(?P<server>[^/]*)",
            reservations.ReservationHandler,
        ),
        (rf"{p}/admin/groups/?", admin.AdminGroupsHandler),
        (rf"{p}/admin/groups/(?P<name>[^/]+)", admin.AdminGroupHandler),
        (rf"{p}/admin/pools/?", admin.AdminPoolsHandler),
        (rf"{p}/admin/pools/(?P<name>[^/]+)", admin.AdminPoolHandler),
        (rf"{p}/admin/expansions/?", admin.AdminExpansionsHandler),
        (rf"{p}/admin/expansions/(?P<expansion_id>[^/]+)", admin.AdminExpansionHandler),
        (rf"{p}/admin/promotions/?", admin.AdminPromotionsHandler),
        (rf"{p}/admin/promotions/(?P<user>[^/]+)/(?P<name>[^/]+)", admin.AdminPromotionHandler),
        (rf"{p}/admin/usage/?", admin.AdminUsageHandler),
        (rf"{p}/models/?", models.ModelsHandler),
        (rf"{p}/models/(?P<name>[^/]+)/?", models.ModelHandler),
        (rf"{p}/models/(?P<name>[^/]+)/versions/?", models.VersionsHandler),
        (rf"{p}/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/stage", models.StageHandler),
        (rf"{p}/models/(?P<name>[^/]+)/deployments/?", models.DeploymentsHandler),
        (
            rf"{p}/models/(?P<name>[^/]+)/deployments/(?P<deployment_id>[^/]+)/?",
            models.DeploymentHandler,
        ),
        (
            rf"{p}/models/(?P<name>[^/]+)/deployments/(?P<deployment_id>[^/]+)/manifest",
            models.ManifestHandler,
        ),
        (rf"{p}/openapi.json", OpenAPIHandler),
        (rf"{p}/.*", NotFoundHandler),
    ]


def documented_methods(handler: type[web.RequestHandler]) -> Iterable[str]:
    for method in ("get", "post", "put", "patch", "delete"):
        if method in vars(handler):
            yield method


def route_template(pattern: str, api_prefix: str) -> str:
    """The OpenAPI path of a route pattern: `<prefix>/jobs/(?P<job_id>[^/]+)/?` is
    `/jobs/{job_id}`."""
    path = pattern[len(api_prefix):].replace("/?", "")
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)


def response_models(
    api_prefix: str,
) -> dict[tuple[type[web.RequestHandler], str, int], type[BaseModel]]:
    """(handler class, method, status) -> the response model the OpenAPI document names for it;
    `APIHandler.write_json` checks every answer against it."""
    handlers = {route_template(p, api_prefix): h for p, h in route_table(api_prefix)}
    return {
        (handlers[op.path], op.method, int(op.status)): op.response
        for op in OPERATIONS
        if op.response is not None and op.path in handlers
    }
