"""The OpenAPI 3.1 document of the REST API (tests check it against the handlers' routes)."""

from __future__ import annotations

from typing import Any

from mlp.api.base import APIHandler
from mlp.api.metrics import openapi_paths as metrics_openapi_paths
from mlp.core.states import JobState

_ERR = {"$ref": "#/components/responses/Error"}


def _resp(
    description: str, schema: dict[str, Any] | None = None, media: str = "application/json"
) -> dict[str, Any]:
    r: dict[str, Any] = {"description": description}
    if schema is not None:
        r["content"] = {media: {"schema": schema}}
    return r


JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
    "description": "A job id.",
}


def build_openapi(server_url: str, version: str) -> dict[str, Any]:
    resources = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "count": {"type": "integer", "minimum": 1, "default": 1},
            "cpu": {
                "oneOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "examples": ["2", "500m"]},
                ]
            },
            "memory": {
                "oneOf": [
                    {"type": "integer", "minimum": 1},
                    {"type": "string", "examples": ["4Gi", "512Mi"]},
                ]
            },
            "gpu": {"type": "integer", "minimum": 0, "default": 0},
        },
    }
    job_spec = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "source"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
            "source": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["inline"],
                        "additionalProperties": False,
                        "properties": {"inline": {"type": "string", "description": "Python code"}},
                    },
                    {
                        "type": "object",
                        "required": ["path"],
                        "additionalProperties": False,
                        "properties": {
                            "path": {
                                "type": "string",
                                "description": "relative to your home folder",
                            }
                        },
                    },
                    {
                        "type": "object",
                        "required": ["git"],
                        "additionalProperties": False,
                        "properties": {
                            "git": {"type": "string"},
                            "ref": {"type": "string", "default": "HEAD"},
                            "path": {"type": "string", "default": "train.py"},
                        },
                    },
                ]
            },
            "args": {"type": "array", "items": {"type": "string"}},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "params": {"type": "object", "description": "given to the code as JSON in $MLP_PARAMS"},
            "runtime": {"type": "string", "description": "a runtime configured by the admin"},
            "tasks": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"chief": resources, "ps": resources, "worker": resources},
                "description": "With ps tasks a chief (the coordinator) is added by default.",
            },
            "batch": {"type": "string", "description": "a label grouping a grid's jobs"},
            "pool": {"type": "string", "description": "default, or production once promoted"},
            "priority": {"type": "integer", "minimum": -100, "maximum": 100, "default": 0},
            "group": {"type": "string", "description": "quota group, if you are in several"},
            "depends_on": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "run after all these jobs succeed",
            },
            "alerts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["on"],
                    "properties": {
                        "on": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "enum": [
                                    "failed",
                                    "timed_out",
                                    "succeeded",
                                    "preempted",
                                    "cancelled",
                                ],
                            },
                        },
                        "webhook": {"type": "string", "format": "uri"},
                        "email": {"type": "string", "format": "email"},
                    },
                },
            },
            "max_runtime": {
                "oneOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "examples": ["30m", "2h"]},
                ]
            },
        },
    }
    task = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string"},
            "index": {"type": "integer"},
            "state": {"type": "string", "enum": ["running", "exited", "stopped"]},
            "exit_code": {"type": ["integer", "null"]},
            "signal": {"type": ["integer", "null"]},
            "pid": {"type": ["integer", "null"]},
            "address": {"type": ["string", "null"]},
        },
    }
    job = {
        "type": "object",
        "required": ["id", "user", "name", "state", "reason"],
        "properties": {
            "id": {"type": "integer"},
            "user": {"type": "string"},
            "name": {"type": "string"},
            "batch": {"type": ["string", "null"]},
            "group": {"type": ["string", "null"]},
            "pool": {"type": ["string", "null"]},
            "priority": {"type": "integer"},
            "queue": {
                "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/QueueEntry"}],
                "description": "while Queued: position, score and what blocks it",
            },
            "state": {"type": "string", "enum": [s.value for s in JobState]},
            "reason": {"type": "string", "description": "why the job is in its state"},
            "attempt": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "spec": job_spec,
            "tasks": {"type": "array", "items": task},
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "at": {"type": "string", "format": "date-time"},
                        "from": {"type": ["string", "null"]},
                        "to": {"type": "string"},
                        "reason": {"type": "string"},
                    },
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jupyterhub-mlp",
            "version": version,
            "description": "Submit, follow and cancel distributed TensorFlow training jobs. "
            "Authenticate with a JupyterHub API token: `Authorization: token <token>`.",
        },
        "servers": [{"url": server_url}],
        "security": [{"hubToken": []}],
        "paths": {
            "/jobs": {
                "get": {
                    "summary": "List your jobs (admins: ?user=NAME or ?user=* for everyone's)",
                    "operationId": "listJobs",
                    "parameters": [
                        {"name": "user", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "comma-separated states",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                    ],
                    "responses": {
                        "200": _resp(
                            "jobs",
                            {
                                "type": "object",
                                "properties": {
                                    "jobs": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Job"},
                                    }
                                },
                            },
                        ),
                        "400": _ERR,
                        "401": _ERR,
                        "403": _ERR,
                    },
                },
                "post": {
                    "summary": "Submit a job",
                    "operationId": "submitJob",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}
                        },
                    },
                    "responses": {
                        "201": _resp("the queued job", {"$ref": "#/components/schemas/Job"}),
                        "400": _ERR,
                        "401": _ERR,
                        "403": _ERR,
                    },
                },
            },
            "/jobs/{job_id}": {
                "get": {
                    "summary": "A job with its tasks and state history",
                    "operationId": "getJob",
                    "parameters": [JOB_ID],
                    "responses": {
                        "200": _resp("the job", {"$ref": "#/components/schemas/Job"}),
                        "401": _ERR,
                        "403": _ERR,
                        "404": _ERR,
                    },
                },
                "delete": {
                    "summary": "Cancel a job (ends all its processes); a no-op once it ended",
                    "operationId": "cancelJob",
                    "parameters": [JOB_ID],
                    "responses": {
                        "200": _resp("the job", {"$ref": "#/components/schemas/Job"}),
                        "401": _ERR,
                        "403": _ERR,
                        "404": _ERR,
                    },
                },
            },
            "/jobs/{job_id}/logs": {
                "get": {
                    "summary": "Task logs; with follow=true a server-sent-events stream",
                    "operationId": "getJobLogs",
                    "description": "Events: `log` {task, line}, `state` {state, reason}, and "
                    "`end` {state, reason} once the job has ended; `: keepalive` comments.",
                    "parameters": [
                        JOB_ID,
                        {
                            "name": "task",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "e.g. worker:0, ps:1, chief:0 or setup",
                        },
                        {
                            "name": "tail",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 200},
                        },
                        {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "logs per task, or an event stream when following",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "job": {"type": "integer"},
                                            "state": {"type": "string"},
                                            "logs": {
                                                "type": "object",
                                                "additionalProperties": {
                                                    "type": "array",
                                                    "items": {"type": "string"},
                                                },
                                            },
                                        },
                                    }
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _ERR,
                        "401": _ERR,
                        "403": _ERR,
                        "404": _ERR,
                    },
                },
            },
            **metrics_openapi_paths(JOB_ID, _ERR),
            **quota_paths(),
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "security": [],
                    "responses": {"200": _resp("OpenAPI 3.1 document", {"type": "object"})},
                },
            },
        },
        "components": {
            "securitySchemes": {
                "hubToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <JupyterHub API token>`",
                }
            },
            "schemas": {
                "JobSpec": job_spec,
                "Job": job,
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string", "description": "the invalid field, for 400s"},
                    },
                },
            },
            "responses": {"Error": _resp("an error", {"$ref": "#/components/schemas/Error"})},
        },
    }


_BLOCKER = {
    "type": "object",
    "properties": {
        "reason": {"type": "string"},
        "scope": {"type": "string", "enum": ["pool", "group", "user", "cohort", "dependency"]},
        "resource": {"type": "string"},
        "requested": {"type": "number"},
        "available": {"type": "number"},
    },
}
_RES = {
    "type": "object",
    "additionalProperties": {"type": "number"},
    "description": "cpu (cores), memory (bytes), gpu",
}
QUOTA_SCHEMAS: dict[str, Any] = {
    "Blocker": _BLOCKER,
    "Resources": _RES,
    "QueueEntry": {
        "type": "object",
        "properties": {
            "position": {"type": ["integer", "null"]},
            "score": {"type": ["number", "null"]},
            "score_parts": {"type": "object", "additionalProperties": {"type": "number"}},
            "blocking": {"type": "array", "items": {"$ref": "#/components/schemas/Blocker"}},
        },
    },
}


def _op(
    summary: str,
    op_id: str,
    ok: str = "200",
    *,
    body: bool = False,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = ("401", "403"),
    admin: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary + (" (admins only)" if admin else ""),
        "operationId": op_id,
        "responses": {ok: _resp("ok", {"type": "object"}), **{e: _ERR for e in errors}},
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def quota_paths() -> dict[str, Any]:
    """Queue, quota, reservations and the admin API (mlp/api/: queue, reservations, admin)."""
    err = ("400", "401", "403", "404")
    return {
        "/queue": {
            "get": _op(
                "Queued jobs in order with score and blocking reasons "
                "(yours; admins all or ?user=)",
                "getQueue",
            )
        },
        "/quota": {"get": _op("Your quota groups, limits, personal cap and usage", "getQuota")},
        "/reservations": {
            "get": _op("Notebook-server reservations (yours; admins all)", "listReservations"),
            "post": _op(
                "Reserve resources for a notebook server through the quota ledger: "
                "{user?, server?, group?, pool?, resources}; 409 with `blocking` when "
                "over quota",
                "reserve",
                "201",
                body=True,
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/reservations/{reservation}": {
            "delete": _op(
                "Release a reservation (`user/server`)",
                "release",
                params=[_path_param("reservation")],
                errors=err,
            )
        },
        "/admin/groups": {"get": _op("Quota groups", "listGroups", admin=True)},
        "/admin/groups/{name}": {
            "put": _op(
                "Create or change a quota group: {cohort, limits, member_cap, "
                "member_caps, lend_limit}; answers the jobs preempted",
                "setGroup",
                body=True,
                params=[_path_param("name")],
                errors=err,
                admin=True,
            )
        },
        "/admin/pools": {"get": _op("Pools", "listPools", admin=True)},
        "/admin/pools/{name}": {
            "put": _op(
                "Create or change a pool: {capacity, priority, requires_promotion}",
                "setPool",
                body=True,
                params=[_path_param("name")],
                errors=err,
                admin=True,
            )
        },
        "/admin/expansions": {
            "get": _op("Temporary quota expansions", "listExpansions", admin=True),
            "post": _op(
                "Grant an expansion: {group, pool, amount, duration, start_in?, "
                "reason}; it expires by itself",
                "grantExpansion",
                "201",
                body=True,
                errors=err,
                admin=True,
            ),
        },
        "/admin/expansions/{expansion_id}": {
            "delete": _op(
                "Revoke an expansion early",
                "revokeExpansion",
                params=[_path_param("expansion_id")],
                errors=err,
                admin=True,
            )
        },
        "/admin/promotions": {
            "get": _op("Models promoted to the production pool", "listPromotions", admin=True),
            "post": _op(
                "Promote a model (a user's job name) to production: {user, name}",
                "promote",
                "201",
                body=True,
                errors=err,
                admin=True,
            ),
        },
        "/admin/promotions/{user}/{name}": {
            "delete": _op(
                "Withdraw a promotion",
                "demote",
                params=[_path_param("user"), _path_param("name")],
                errors=err,
                admin=True,
            )
        },
        "/admin/usage": {"get": _op("Usage per pool, group, user and cohort", "usage", admin=True)},
    }


class OpenAPIHandler(APIHandler):
    public = True

    async def get(self) -> None:
        self.write_json(self.settings["openapi"])
