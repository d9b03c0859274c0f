"""REST API v1 handlers: parse, authorize, call the job manager, serialize (no logic here)."""

from __future__ import annotations

import asyncio
import html
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthenticated
from tornado import web
from tornado.iostream import StreamClosedError

from mlp.manager import JobManager, JobNotFound, RuntimeNotConfigured
from mlp.quota import QuotaError
from mlp.spec import SpecError
from mlp.states import JobState
from mlp.store import Job

MAX_BODY = 4 * 1024 * 1024


class ApiError(web.HTTPError):
    def __init__(self, status: int, error: str, message: str, **extra: Any):
        super().__init__(status, log_message=message)
        self.error = error
        self.message = message
        self.extra = extra


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


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
        obs = manager.observe(job) if job.job_state.active else None
        tasks: list[dict[str, Any]] = []
        if obs is not None:
            tasks = [t.to_dict() for t in obs.tasks]
        elif job.backend_state:
            tasks = [
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
                for t in job.backend_state.get("tasks", [])
            ]
        model["tasks"] = tasks
        model["events"] = [
            {"at": iso(e.at), "from": e.from_state, "to": e.to_state, "reason": e.reason}
            for e in manager.store.events(job.id)
        ]
    return model


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def manager(self) -> JobManager:
        return self.settings["mlp_manager"]

    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]


class APIHandler(BaseHandler):
    """JSON in, JSON out; errors as {"error", "message"}; authentication by hub tokens."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        # Only token authentication (an Authorization header) may change state; a cookie alone
        # is refused in `require_user`, so there is no cross-site request to forge.
        return

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            body = {"error": exc.error, "message": exc.message, **exc.extra}
        elif isinstance(exc, web.HTTPError):
            body = {
                "error": _ERROR_NAMES.get(status_code, "error"),
                "message": exc.log_message or self._reason,
            }
        else:
            body = {"error": "internal", "message": "internal error; see the mlp service log"}
        self.finish(json.dumps(body))

    def require_user(self) -> dict[str, Any]:
        user = self.current_user
        if not user:
            raise ApiError(
                401,
                "unauthorized",
                "missing or invalid token: send 'Authorization: token <hub API token>' "
                "(create one at /hub/token)",
            )
        if self.request.method not in ("GET", "HEAD") and not self.request.headers.get(
            "Authorization"
        ):
            raise ApiError(
                403, "forbidden", "changes need token authentication (an Authorization header)"
            )
        return user

    def is_admin(self, user: dict[str, Any]) -> bool:
        return self.settings["admin_scope"] in set(user.get("scopes", ()))

    def json_body(self) -> Any:
        if len(self.request.body) > MAX_BODY:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
        try:
            return json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "malformed_json", f"request body is not valid JSON: {e}") from None

    def load_job(self, job_id: str, user: dict[str, Any]) -> Job:
        if not job_id.isdigit() or len(job_id) > 18:
            raise ApiError(404, "not_found", f"{job_id!r} is not a job id (job ids are numbers)")
        try:
            job = self.manager.get(int(job_id))
        except JobNotFound:
            raise ApiError(404, "not_found", f"job {job_id} does not exist") from None
        if job.user != user["name"] and not self.is_admin(user):
            raise ApiError(403, "forbidden", f"job {job_id} belongs to another user")
        return job

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(obj))


_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
}


class JobsHandler(APIHandler):
    async def get(self) -> None:
        user = self.require_user()
        target: str | None = user["name"]
        asked = self.get_argument("user", None)
        if asked is not None and asked != user["name"]:
            if not self.is_admin(user):
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
        limit = _int_arg(self, "limit", 500, 1, 10_000)
        batch = self.get_argument("batch", None)
        jobs = self.manager.store.list_jobs(user=target, states=states, limit=limit, batch=batch)
        self.write_json({"jobs": [job_model(j, self.manager) for j in jobs]})

    async def post(self) -> None:
        user = self.require_user()
        raw = self.json_body()
        try:
            job = self.manager.submit(user["name"], raw, hub_groups=user.get("groups", []))
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
        user = self.require_user()
        job = self.load_job(job_id, user)
        self.write_json(job_model(job, self.manager, detail=True))

    async def delete(self, job_id: str) -> None:
        user = self.require_user()
        job = self.load_job(job_id, user)
        job = await self.manager.cancel(job.id, by=user["name"])
        self.write_json(job_model(job, self.manager, detail=True))


def _int_arg(handler: web.RequestHandler, name: str, default: int, lo: int, hi: int) -> int:
    raw = handler.get_argument(name, None)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, "bad_request", f"{name}: expected a whole number, got {raw!r}"
        ) from None
    if not lo <= value <= hi:
        raise ApiError(400, "bad_request", f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def tail_lines(path: Path, n: int) -> tuple[list[str], int]:
    """The last n lines of a file and the offset just after them (for following)."""
    if not path.exists():
        return [], 0
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        block = 64 * 1024
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    # A trailing partial line is left for the follower to complete.
    complete = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
    lines = complete.decode("utf-8", "replace").splitlines()
    return lines[-n:] if n else [], end - (len(data) - len(complete))


class LogsHandler(APIHandler):
    closed = False

    def on_connection_close(self) -> None:
        self.closed = True

    async def get(self, job_id: str) -> None:
        user = self.require_user()
        job = self.load_job(job_id, user)
        paths = self.manager.backend.log_paths(job.id, job.backend_state or {})
        task = self.get_argument("task", None)
        if task is not None:
            if task not in paths:
                known = ", ".join(paths) or "none yet (the job has not started)"
                raise ApiError(
                    404, "not_found", f"job {job.id} has no task {task!r}; tasks with logs: {known}"
                )
            paths = {task: paths[task]}
        tail = _int_arg(self, "tail", 200, 0, 100_000)
        follow = self.get_argument("follow", "false").lower() in ("1", "true", "yes")
        if not follow:
            logs = {name: tail_lines(Path(p), tail)[0] for name, p in paths.items()}
            self.write_json({"job": job.id, "state": job.state, "logs": logs})
            return
        await self.follow(job, paths, tail)

    async def follow(self, job: Job, paths: dict[str, str], tail: int) -> None:
        """Server-sent events: `log` per line, `state` on changes, `end` once the job ended."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        keepalive = float(self.settings["sse_keepalive_interval"])
        queue = self.manager.subscribe(job.id)
        offsets: dict[str, int] = {}
        partial: dict[str, bytes] = {}
        last_write = time.monotonic()
        try:
            for name, p in paths.items():
                lines, offsets[name] = tail_lines(Path(p), tail)
                for line in lines:
                    self._event("log", {"task": name, "line": line})
            self._event("state", {"state": job.state, "reason": job.reason})
            wanted = self.get_argument("task", None)
            await self.flush()
            while not self.closed:
                # New tasks' logs appear once a queued job starts.
                current = self.manager.get(job.id)
                for name, p in self.manager.backend.log_paths(
                    job.id, current.backend_state or {}
                ).items():
                    if name not in paths and wanted in (None, name):
                        paths[name] = p
                        offsets[name] = 0
                wrote = self._drain(paths, offsets, partial)
                while not queue.empty():
                    changed = queue.get_nowait()
                    self._event("state", {"state": changed.state, "reason": changed.reason})
                    wrote = True
                if current.job_state.terminal:
                    self._drain(paths, offsets, partial, final=True)
                    self._event("end", {"state": current.state, "reason": current.reason})
                    await self.flush()
                    break
                if not wrote and time.monotonic() - last_write > keepalive:
                    self.write(": keepalive\n\n")
                    wrote = True
                if wrote:
                    await self.flush()
                    last_write = time.monotonic()
                await asyncio.sleep(self.settings["sse_poll_interval"])
        except StreamClosedError:
            pass  # the client went away; nothing to clean up but our subscription
        finally:
            self.manager.unsubscribe(job.id, queue)
        if not self.closed:
            self.finish()

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        self.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n")

    def _drain(
        self,
        paths: dict[str, str],
        offsets: dict[str, int],
        partial: dict[str, bytes],
        final: bool = False,
    ) -> bool:
        wrote = False
        for name, p in paths.items():
            try:
                with open(p, "rb") as f:
                    f.seek(offsets.get(name, 0))
                    chunk = f.read(1024 * 1024)
            except FileNotFoundError:
                continue
            if not chunk and not (final and partial.get(name)):
                continue
            offsets[name] = offsets.get(name, 0) + len(chunk)
            data = partial.pop(name, b"") + chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            if rest and not final:
                partial[name] = rest
            elif rest:
                lines.append(rest)
            for line in lines:
                self._event("log", {"task": name, "line": line.decode("utf-8", "replace")})
                wrote = True
        return wrote


class OpenAPIHandler(APIHandler):
    async def get(self) -> None:
        self.write_json(self.settings["openapi"])


class NotFoundHandler(APIHandler):
    def prepare(self) -> None:
        raise ApiError(
            404,
            "not_found",
            f"no such API route: {self.request.path}; see openapi.json for the routes",
        )


class HomeHandler(BaseHandler):
    """A small HTML page for people who follow the hub's Services menu."""

    @web.authenticated
    async def get(self) -> None:
        user: dict[str, Any] = self.current_user
        jobs = self.manager.store.list_jobs(user=user["name"], limit=50)
        rows = "".join(
            f"<tr><td>{j.id}</td><td>{_esc(j.name)}</td><td>{j.state}</td>"
            f"<td>{_esc(j.reason)}</td></tr>"
            for j in jobs
        )
        api = self.settings["api_prefix"]
        self.finish(
            "<!doctype html><title>mlp</title><h1>mlp: jobs of " + _esc(user["name"]) + "</h1>"
            "<table border=1 cellpadding=4><tr><th>id</th><th>name</th><th>state</th>"
            f"<th>reason</th></tr>{rows}</table>"
            f"<p>REST API: <a href='{api}/openapi.json'>{api}/openapi.json</a></p>"
        )


def _esc(s: str) -> str:
    return html.escape(s)


def _metrics_handler() -> type[web.RequestHandler]:
    from mlp.metrics import MetricsHandler  # mlp.metrics builds on this module's APIHandler

    return MetricsHandler


def route_table(api_prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    from mlp.quota_handlers import quota_routes  # it builds on this module's APIHandler

    return [
        (rf"{api_prefix}/jobs/?", JobsHandler),
        (rf"{api_prefix}/jobs/(?P<job_id>[^/]+)/?", JobHandler),
        (rf"{api_prefix}/jobs/(?P<job_id>[^/]+)/logs/?", LogsHandler),
        (rf"{api_prefix}/jobs/(?P<job_id>[^/]+)/metrics/?", _metrics_handler()),
        *quota_routes(api_prefix),
        (rf"{api_prefix}/openapi.json", OpenAPIHandler),
        (rf"{api_prefix}/.*", NotFoundHandler),
    ]


def documented_methods(handler: type[web.RequestHandler]) -> Iterable[str]:
    for method in ("get", "post", "put", "patch", "delete"):
        if method in vars(handler):
            yield method
