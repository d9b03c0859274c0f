"""The model registry and deployments: `/models`, `/models/{name}`, `.../versions`,
`.../versions/{version}/stage` (admins: promotion), `.../deployments`, `.../deployments/{id}`
(PATCH rolls to another version) and `.../deployments/{id}/manifest` (KServe InferenceService).
The logic lives in `mlp.serving`; handlers parse, authorize and serialize."""

from __future__ import annotations

import json
import time
from typing import Any

from mlp.api import schemas as s
from mlp.api.base import ApiError, APIHandler, admin_only, iso
from mlp.core.manager import JobNotFound
from mlp.scheduling import PRODUCTION_POOL, QuotaExceeded, UnknownNameError, resolve_group
from mlp.scheduling.resources import parse_cpu, parse_memory
from mlp.serving.manifest import inference_service
from mlp.serving.registry import Caller, RegistryError, version_dict
from mlp.serving.service import ModelServing
from mlp.serving.supervisor import DeploymentSupervisor

NAME_PATTERN = r"[^/]+"


def _times(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {**d, **{k: iso(d[k]) for k in keys}}


class ModelsBase(APIHandler):
    @property
    def serving(self) -> ModelServing:
        return self.settings["mlp_serving"]

    @property
    def supervisor(self) -> DeploymentSupervisor:
        return self.serving.supervisor

    @property
    def caller(self) -> Caller:
        return Caller(self.user["name"], tuple(self.user.get("groups") or ()), self.is_admin)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, RegistryError):
            extra = {"field": exc.field} if exc.field else {}
            self.finish(json.dumps({"error": exc.error, "message": exc.message, **extra}))
            return
        super().write_error(status_code, **kwargs)

    def version_arg(self, raw: str) -> int:
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError(404, "not_found", f"{raw!r} is not a version number")
        return int(raw)

    def deployment(self, name: str, raw_id: str) -> Any:
        if not raw_id.isdigit() or len(raw_id) > 18:
            raise ApiError(404, "not_found", f"{raw_id!r} is not a deployment id")
        row = self.supervisor.get(int(raw_id))
        if row.model != name:
            raise ApiError(404, "not_found", f"deployment {raw_id} is not one of {name!r}")
        return row

    def deployment_json(self, row: Any, logs: bool = False) -> dict[str, Any]:
        return _times(self.supervisor.describe(row, logs=logs), "created_at", "updated_at")


def version_json(v: Any) -> dict[str, Any]:
    return _times(version_dict(v), "created_at")


class ModelsHandler(ModelsBase):
    async def get(self) -> None:
        models = self.serving.registry.visible(self.caller)
        self.write_json({"models": [_times(m, "created_at") for m in models]})


class ModelHandler(ModelsBase):
    async def get(self, name: str) -> None:
        row = self.serving.registry.readable(name, self.caller)
        self.write_json(_times(self.serving.registry.describe(row), "created_at"))

    async def delete(self, name: str) -> None:
        registry = self.serving.registry
        registry.owned(name, self.caller)
        force = self.get_argument("force", "false").lower() in ("1", "true", "yes")
        live = registry.live_deployments(name)
        if live and not force:
            raise ApiError(409, "conflict", f"model {name!r} has live deployments {live}; "
                           "delete them first or add ?force=true to stop them with the model")
        for deployment_id in live:
            await self.supervisor.delete(deployment_id)
        registry.delete(name)
        self.manager.kick()
        self.write_json({"name": name, "deleted": True, "stopped_deployments": live})


class VersionsHandler(ModelsBase):
    async def get(self, name: str) -> None:
        self.serving.registry.readable(name, self.caller)
        versions = self.serving.registry.versions(name)
        self.write_json({"versions": [version_json(v) for v in versions]})

    async def post(self, name: str) -> None:
        body = self.json_object()
        req = self.validated(s.RegisterRequest, body)
        job = None
        if req.job_id is not None:
            try:
                job = self.manager.get(req.job_id)
            except JobNotFound:
                raise ApiError(404, "not_found", f"job {req.job_id} does not exist",
                               field="job_id") from None
            if job.user != self.user["name"] and not self.is_admin:
                raise ApiError(403, "forbidden", f"job {req.job_id} belongs to another user")
        v = await self.serving.registry.register(
            self.caller, name, job=job, path=req.path, group=req.group,
            description=req.description,
        )
        self.write_json(version_json(v), status=201)


class StageHandler(ModelsBase):
    @admin_only
    async def post(self, name: str, version: str) -> None:
        req = self.validated(s.StageRequest, self.json_object())
        registry = self.serving.registry
        row = registry.get(name)
        v = registry.set_stage(name, self.version_arg(version), req.stage)
        if req.stage == "production":
            # The model's training jobs and deployments run in the production pool.
            self.quota.promote(row.owner, name, by=self.user["name"])
            self.manager.move_to_production(row.owner, name)
        self.write_json(version_json(v))


class DeploymentsHandler(ModelsBase):
    async def get(self, name: str) -> None:
        self.serving.registry.readable(name, self.caller)
        rows = self.supervisor.of_model(name)
        self.write_json({"deployments": [self.deployment_json(r) for r in rows]})

    async def post(self, name: str) -> None:
        body = self.json_object()
        req = self.validated(s.DeployRequest, body)
        registry = self.serving.registry
        model = registry.readable(name, self.caller)
        versions = registry.versions(name)
        production = [v for v in versions if v.stage == "production"]
        version = registry.version(
            name, req.version if req.version is not None
            else (production[-1].version if production else None))
        try:
            cpu = parse_cpu(req.cpu if req.cpu is not None else self.serving.default_cpu)
            memory = parse_memory(
                req.memory if req.memory is not None else self.serving.default_memory)
        except ValueError as e:
            raise ApiError(400, "bad_request", str(e), field="cpu/memory") from None
        if cpu <= 0 or memory <= 0:
            raise ApiError(400, "bad_request", "cpu and memory must be more than 0",
                           field="cpu" if cpu <= 0 else "memory")
        if req.replicas > self.serving.max_replicas:
            raise ApiError(400, "bad_request", f"replicas: at most "
                           f"{self.serving.max_replicas}", field="replicas")
        missing = self.serving.serving_ready()
        if missing:
            raise ApiError(503, "serving_unavailable", missing)
        ledger = self.quota.ledger
        try:
            group = resolve_group(self.user["name"], self.user.get("groups", []), ledger.groups,
                                  self.quota.config.default_group, requested=req.group)
        except ValueError as e:
            raise self.refuse(e, field="group") from None
        promoted = self.quota.is_promoted(model.owner, name)
        pool = PRODUCTION_POOL if promoted and PRODUCTION_POOL in ledger.pools else "default"
        try:
            row = self.supervisor.create(self.user["name"], name, version.version, cpu, memory,
                                         req.replicas, group, pool)
        except (QuotaExceeded, UnknownNameError) as e:
            raise self.refuse(e) from None
        self.supervisor.start(row)
        self.write_json(self.deployment_json(row), status=201)


class DeploymentHandler(ModelsBase):
    async def get(self, name: str, deployment_id: str) -> None:
        self.serving.registry.readable(name, self.caller)
        row = self.deployment(name, deployment_id)
        self.write_json(self.deployment_json(row, logs=True))

    async def patch(self, name: str, deployment_id: str) -> None:
        req = self.validated(s.RolloutRequest, self.json_object())
        self.serving.registry.readable(name, self.caller)
        row = self.deployment(name, deployment_id)
        if row.user != self.user["name"] and not self.is_admin:
            raise ApiError(403, "forbidden", f"deployment {row.id} is {row.user}'s")
        try:
            row = self.supervisor.roll(row.id, req.version)
        except (QuotaExceeded, UnknownNameError) as e:
            raise self.refuse(e) from None
        self.write_json(self.deployment_json(row))

    async def delete(self, name: str, deployment_id: str) -> None:
        self.serving.registry.readable(name, self.caller)
        row = self.deployment(name, deployment_id)
        if row.user != self.user["name"] and not self.is_admin:
            raise ApiError(403, "forbidden", f"deployment {row.id} is {row.user}'s")
        row = await self.supervisor.delete(row.id)
        self.manager.kick()  # queued jobs may fit now
        self.write_json(self.deployment_json(row))


class ManifestHandler(ModelsBase):
    async def get(self, name: str, deployment_id: str) -> None:
        self.serving.registry.readable(name, self.caller)
        row = self.deployment(name, deployment_id)
        storage = self.get_argument("storage_uri", "") or None
        self.write_json(inference_service(row, storage_uri=storage, now=time.time()))
