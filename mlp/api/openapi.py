"""The OpenAPI 3.1 document of the REST API, generated: operations from the table below, every
schema from the pydantic models of `mlp.api.schemas` and `mlp.core.spec` (tests check the table
against the routes, and schemathesis checks a real service against the document)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mlp.api import schemas as s
from mlp.api.base import APIHandler
from mlp.core.metrics import MAX_POINTS
from mlp.core.spec import JobSpecModel

REF = "#/components/schemas/{model}"
WIRE_NAMES = {"JobSpecModel": "JobSpec", "TaskModel": "Resources", "TasksModel": "Tasks"}
ERROR = {"$ref": "#/components/responses/Error"}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        p["description"] = description
    return p


def _path(name: str, schema: dict[str, Any] | None = None, description: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema or {"type": "string", "pattern": "^[^/]+$"},
    }
    if description:
        p["description"] = description
    return p


JOB_ID = _path("job_id", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "A job id.")
MODEL = _path("name", {"type": "string", "pattern": "^[^/]+$"}, "A model name.")
VERSION = _path("version", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "A version number.")
DEPLOYMENT_ID = _path("deployment_id", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                      "A deployment id.")


@dataclass
class Operation:
    path: str
    method: str
    op_id: str
    summary: str
    response: type[BaseModel] | None
    status: str = "200"
    body: type[BaseModel] | None = None
    params: list[dict[str, Any]] = field(default_factory=list)
    errors: tuple[str, ...] = ("401", "403")
    admin: bool = False
    description: str = ""
    extra_media: dict[str, Any] = field(default_factory=dict)


_ADMIN_ERRORS = ("400", "401", "403", "404")
OPERATIONS = [
    Operation(
        "/jobs", "get", "listJobs",
        "List your jobs (admins: ?user=NAME or ?user=* for everyone's)", s.JobList,
        params=[
            _query("user", {"type": "string"}),
            _query("state", {"type": "string"}, "comma-separated states"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
            _query("batch", {"type": "string"}, "only the jobs of this batch"),
        ],
        errors=("400", "401", "403"),
    ),
    Operation(
        "/jobs", "post", "submitJob", "Submit a job", s.Job, status="201", body=JobSpecModel,
        errors=("400", "401", "403", "409"),
        description="400 `invalid_spec` names the field; 400 `never_fits` when the job is "
        "larger than anything its group could ever get (with `blocking`).",
    ),
    Operation(
        "/jobs/{job_id}", "get", "getJob", "A job with its tasks and state history", s.Job,
        params=[JOB_ID], errors=("401", "403", "404"),
    ),
    Operation(
        "/jobs/{job_id}", "delete", "cancelJob",
        "Cancel a job (ends all its processes); a no-op once it ended", s.Job,
        params=[JOB_ID], errors=("401", "403", "404"),
    ),
    Operation(
        "/jobs/{job_id}/logs", "get", "getJobLogs",
        "Task logs; with follow=true a server-sent-events stream", s.Logs,
        description="Events: `log` {task, line}, `state` {state, reason}, and `end` "
        "{state, reason} once the job has ended; `: keepalive` comments.",
        params=[
            JOB_ID,
            _query("task", {"type": "string"}, "e.g. worker:0, ps:1, chief:0 or setup"),
            _query("tail", {"type": "integer", "minimum": 0, "maximum": 100000, "default": 200}),
            _query("follow", {"type": "boolean"}),
        ],
        errors=("400", "401", "403", "404"),
        extra_media={"text/event-stream": {"schema": {"type": "string"}}},
    ),
    Operation(
        "/jobs/{job_id}/metrics", "get", "getJobMetrics",
        "Metric time series reported by the job's tasks", s.Metrics,
        description="Series per task and metric, from `vlps.report`, `vlps.MetricsCallback`, "
        "`mlp_magics.report` or the Keras callback of mlp_magics. Each series holds at most "
        "`max_points` points, thinned uniformly; the latest point is always present. "
        "Non-finite values appear as null in `latest` and are left out of series.",
        params=[
            JOB_ID,
            _query("task", {"type": "string"}, "only this task, e.g. chief:0 or worker:1"),
            _query("since", {"type": "integer", "minimum": -1, "maximum": 2**62},
                   "only points with a step after this one (polling)"),
            _query("name", {"type": "string"}, "comma-separated metric names to return"),
            _query("max_points",
                   {"type": "integer", "minimum": 2, "maximum": 10000, "default": MAX_POINTS}),
        ],
        errors=("400", "401", "403", "404"),
    ),
    Operation(
        "/queue", "get", "getQueue",
        "Queued jobs in order with score and blocking reasons (yours; admins all or ?user=)",
        s.Queue, params=[_query("user", {"type": "string"})],
    ),
    Operation("/quota", "get", "getQuota",
              "Your quota groups, limits, personal cap and usage (admins: ?user=)",
              s.MyQuota),
    Operation("/reservations", "get", "listReservations",
              "Notebook-server reservations (yours; admins all)", s.ReservationList),
    Operation(
        "/reservations", "post", "reserve",
        "Reserve resources for a notebook server through the quota ledger; 409 with "
        "`blocking` when over quota", s.Reservation, status="201", body=s.ReservationRequest,
        errors=("400", "401", "403", "404", "409"),
    ),
    Operation(
        "/reservations/{user}/{server}", "delete", "release",
        "Release a reservation", s.Reservation,
        params=[_path("user"), _path("server", {"type": "string", "pattern": "^[^/]*$"})],
        errors=_ADMIN_ERRORS,
    ),
    Operation("/admin/groups", "get", "listGroups", "Quota groups", s.GroupList, admin=True),
    Operation(
        "/admin/groups/{name}", "put", "setGroup",
        "Create or change a quota group; answers the jobs preempted", s.Changed,
        body=s.GroupRequest, params=[_path("name")], errors=_ADMIN_ERRORS, admin=True,
    ),
    Operation("/admin/pools", "get", "listPools", "Pools", s.PoolList, admin=True),
    Operation(
        "/admin/pools/{name}", "put", "setPool", "Create or change a pool", s.Changed,
        body=s.PoolRequest, params=[_path("name")], errors=_ADMIN_ERRORS, admin=True,
    ),
    Operation("/admin/expansions", "get", "listExpansions", "Temporary quota expansions",
              s.ExpansionList, admin=True),
    Operation(
        "/admin/expansions", "post", "grantExpansion",
        "Grant an expansion; it expires by itself", s.Expansion, status="201",
        body=s.ExpansionRequest, errors=_ADMIN_ERRORS, admin=True,
    ),
    Operation(
        "/admin/expansions/{expansion_id}", "delete", "revokeExpansion",
        "Revoke an expansion early", s.Revoked, params=[_path("expansion_id")],
        errors=_ADMIN_ERRORS, admin=True,
    ),
    Operation("/admin/promotions", "get", "listPromotions",
              "Models promoted to the production pool", s.PromotionList, admin=True),
    Operation(
        "/admin/promotions", "post", "promote",
        "Promote a model (a user's job name) to production", s.Promoted, status="201",
        body=s.PromotionRequest, errors=_ADMIN_ERRORS, admin=True,
    ),
    Operation(
        "/admin/promotions/{user}/{name}", "delete", "demote", "Withdraw a promotion",
        s.Demoted, params=[_path("user"), _path("name")], errors=_ADMIN_ERRORS, admin=True,
    ),
    Operation("/admin/usage", "get", "usage", "Usage per pool, group, user and cohort",
              s.Usage, admin=True),
    Operation("/models", "get", "listModels",
              "Registered models you may see (yours, your groups'; admins all)", s.ModelList),
    Operation(
        "/models/{name}", "get", "getModel", "A model: owner, group, versions, live deployments",
        s.Model, params=[MODEL], errors=("401", "403", "404"),
    ),
    Operation(
        "/models/{name}", "delete", "deleteModel",
        "Delete a model with its versions; 409 while it has live deployments unless force=true",
        s.ModelDeleted, params=[MODEL, _query("force", {"type": "boolean"})],
        errors=("401", "403", "404", "409"),
    ),
    Operation(
        "/models/{name}/versions", "get", "listModelVersions",
        "A model's versions with job, parameters, final metrics and signature",
        s.ModelVersionList, params=[MODEL], errors=("401", "403", "404"),
    ),
    Operation(
        "/models/{name}/versions", "post", "registerModelVersion",
        "Register a new immutable version from a job's SavedModel export folder",
        s.ModelVersion, status="201", body=s.RegisterRequest, params=[MODEL],
        errors=("400", "401", "403", "404"),
        description="400 names the problem when the folder is missing, leaves your folder, "
        "holds links or is not a loadable SavedModel with a `serving_default` signature.",
    ),
    Operation(
        "/models/{name}/versions/{version}/stage", "post", "setModelVersionStage",
        "Set a version's stage; `production` also promotes the model to the production pool",
        s.ModelVersion, body=s.StageRequest, params=[MODEL, VERSION], errors=_ADMIN_ERRORS,
        admin=True,
    ),
    Operation(
        "/models/{name}/deployments", "get", "listDeployments", "A model's deployments",
        s.DeploymentList, params=[MODEL], errors=("401", "403", "404"),
    ),
    Operation(
        "/models/{name}/deployments", "post", "deployModel",
        "Serve a version with KServe's model server, reserved in the quota ledger; 409 with "
        "`blocking` when over quota", s.Deployment, status="201", body=s.DeployRequest,
        params=[MODEL], errors=("400", "401", "403", "404", "409", "503"),
        description="Queries go through the hub: `/services/models/{name}/v1/models/{name}"
        ":predict` and `/services/models/{name}/v2/models/{name}/infer`.",
    ),
    Operation(
        "/models/{name}/deployments/{deployment_id}", "get", "getDeployment",
        "A deployment: state, replicas, events, request metrics and log tails", s.Deployment,
        params=[MODEL, DEPLOYMENT_ID], errors=("401", "403", "404"),
    ),
    Operation(
        "/models/{name}/deployments/{deployment_id}", "patch", "rollDeployment",
        "Roll a running deployment to another version without dropping requests",
        s.Deployment, body=s.RolloutRequest, params=[MODEL, DEPLOYMENT_ID],
        errors=("400", "401", "403", "404", "409"),
    ),
    Operation(
        "/models/{name}/deployments/{deployment_id}", "delete", "deleteDeployment",
        "Stop a deployment and release its reservation", s.Deployment,
        params=[MODEL, DEPLOYMENT_ID], errors=("401", "403", "404"),
    ),
    Operation(
        "/models/{name}/deployments/{deployment_id}/manifest", "get", "deploymentManifest",
        "The deployment as a KServe InferenceService manifest (for Kubernetes)", s.Manifest,
        params=[MODEL, DEPLOYMENT_ID, _query("storage_uri", {"type": "string"})],
        errors=("401", "403", "404"),
    ),
]


def _drop_null_defaults(node: Any) -> Any:
    """pydantic writes `"default": null` for optional inputs whose schema excludes null."""
    if isinstance(node, dict):
        return {
            k: _drop_null_defaults(v)
            for k, v in node.items()
            if not (k == "default" and v is None)
        }
    if isinstance(node, list):
        return [_drop_null_defaults(v) for v in node]
    return node


def component_schemas() -> dict[str, Any]:
    models: set[type[BaseModel]] = {s.Error}
    for op in OPERATIONS:
        models.update(m for m in (op.response, op.body) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "validation") for m in ordered], ref_template=REF
    )
    defs = _drop_null_defaults(top.get("$defs", {}))
    # The core's class names say what they are in Python; the document uses the wire names.
    text = json.dumps(defs)
    for python_name, wire_name in WIRE_NAMES.items():
        text = text.replace(f'"{REF.format(model=python_name)}"', f'"{_ref_to(wire_name)}"')
    return {WIRE_NAMES.get(k, k): v for k, v in json.loads(text).items()}


def _ref_to(name: str) -> str:
    return REF.format(model=name)


def _ref(model: type[BaseModel]) -> str:
    return REF.format(model=WIRE_NAMES.get(model.__name__, model.__name__))


def _operation(op: Operation) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "ok"}
    if op.response is not None:
        ok["content"] = {
            "application/json": {"schema": {"$ref": _ref(op.response)}},
            **op.extra_media,
        }
    doc: dict[str, Any] = {
        "summary": op.summary + (" (admins only)" if op.admin else ""),
        "operationId": op.op_id,
        "responses": {op.status: ok, **{e: ERROR for e in op.errors}},
    }
    if op.description:
        doc["description"] = op.description
    if op.params:
        doc["parameters"] = op.params
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _ref(op.body)}}
            },
        }
    return doc


def build_openapi(server_url: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "security": [],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1 document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jupyterhub-mlp",
            "version": version,
            "description": "Submit, follow and cancel distributed TensorFlow training jobs; "
            "quotas, the queue, reservations and the admin API. Authenticate with a JupyterHub "
            "API token: `Authorization: token <token>`.",
        },
        "servers": [{"url": server_url}],
        "security": [{"hubToken": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "hubToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <JupyterHub API token>`",
                }
            },
            "schemas": component_schemas(),
            "responses": {
                "Error": {
                    "description": "an error",
                    "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="Error")}}
                    },
                }
            },
        },
    }


class OpenAPIHandler(APIHandler):
    public = True

    async def get(self) -> None:
        self.write_json(self.settings["openapi"])
