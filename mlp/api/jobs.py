"""`/jobs` and `/jobs/{id}`: submit, list, show and cancel jobs."""

from __future__ import annotations

from typing import Any

from mlp.api.base import ApiError, APIHandler, int_arg, iso
from mlp.core.manager import JobManager, RuntimeNotConfigured
from mlp.core.quota import QuotaError
from mlp.core.spec import SpecError
from mlp.core.states import JobState
from mlp.store import Job


def job_model(job: Job, manager: JobManager, *, detail: bool = False) -> dict[str, Any]:
    model: dict[str, Any] = {
        "id": job.id,
        "user": job.user,
        "name": job.name,
        "batch": job.batch,
        "state": job.state,
        "reason": job.reason,
        "attempt": job.attempt,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "group": job.group,
        "pool": job.pool,
        "priority": job.priority,
    }
    if job.job_state == JobState.QUEUED:
        model["queue"] = manager.queue_info(job)
    held = manager.holding(job)
    if held is not None:
        model["reservation"] = held
    if detail:
        model["spec"] = job.spec
        model["tasks"] = _task_models(job, manager)
        model["events"] = [
            {"at": iso(e.at), "from": e.from_state, "to": e.to_state, "reason": e.reason}
            for e in manager.store.events(job.id)
        ]
    return model


def _task_models(job: Job, manager: JobManager) -> list[dict[str, Any]]:
    obs = manager.observe(job) if job.job_state.active else None
    if obs is not None:
        return [t.to_dict() for t in obs.tasks]
    return [
        {
            "name": t["name"],
            "type": t["type"],
            "index": t["index"],
            "state": "stopped",
            "exit_code": None,
            "signal": None,
            "pid": t["pid"],
            "address": t.get("address"),
        }
        for t in (job.backend_state or {}).get("tasks", [])
    ]


class JobsHandler(APIHandler):
    async def get(self) -> None:
        target: str | None = self.user["name"]
        asked = self.get_argument("user", None)
        if asked is not None and asked != self.user["name"]:
            if not self.is_admin:
                raise ApiError(403, "forbidden", "only admins may list other users' jobs")
            target = None if asked == "*" else asked
        states = None
        state_arg = self.get_argument("state", None)
        if state_arg:
            try:
                states = [JobState(s) for s in state_arg.split(",")]
            except ValueError:
                raise ApiError(
                    400,
                    "bad_request",
                    f"state: unknown state in {state_arg!r}; "
                    f"valid: {', '.join(s.value for s in JobState)}",
                ) from None
        limit = int_arg(self, "limit", 500, 1, 10_000)
        batch = self.get_argument("batch", None)
        jobs = self.manager.store.list_jobs(user=target, states=states, limit=limit, batch=batch)
        self.write_json({"jobs": [job_model(j, self.manager) for j in jobs]})

    async def post(self) -> None:
        raw = self.json_body()
        try:
            job = self.manager.submit(
                self.user["name"], raw, hub_groups=self.user.get("groups", [])
            )
        except SpecError as e:
            raise ApiError(400, "invalid_spec", str(e), field=e.field) from None
        except QuotaError as e:
            extra: dict[str, Any] = {"blocking": e.blocking} if e.blocking else {}
            if e.field:
                extra["field"] = e.field
            raise ApiError(e.status, e.error, e.message, **extra) from None
        except RuntimeNotConfigured as e:
            raise ApiError(400, "invalid_spec", f"runtime: {e}", field="runtime") from None
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{job.id}")
        self.write_json(job_model(job, self.manager, detail=True), status=201)


class JobHandler(APIHandler):
    async def get(self, job_id: str) -> None:
        job = self.load_job(job_id)
        self.write_json(job_model(job, self.manager, detail=True))

    async def delete(self, job_id: str) -> None:
        job = self.load_job(job_id)
        job = await self.manager.cancel(job.id, by=self.user["name"])
        self.write_json(job_model(job, self.manager, detail=True))
