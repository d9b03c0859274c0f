"""The base of every REST handler: authentication in `prepare()`, the error contract, JSON I/O.

Every API handler derives from `APIHandler`, whose `prepare()` authenticates the request before
any handler method runs, so no route can forget it; admin-only methods carry `@admin_only`.
Errors are `{"error": <code>, "message": <what went wrong and what to do>, "field": <where>}`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from jupyterhub.services.auth import HubOAuth, HubOAuthenticated
from pydantic import BaseModel, ValidationError
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mlp.core.manager import JobManager, JobNotFound
from mlp.core.quota import QuotaService
from mlp.scheduling import QuotaExceeded, UnknownNameError
from mlp.store import Job

MAX_BODY = 4 * 1024 * 1024
M = TypeVar("M", bound=BaseModel)

ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
}


class ApiError(web.HTTPError):
    def __init__(self, status: int, error: str, message: str, **extra: Any):
        super().__init__(status, log_message=message)
        self.error = error
        self.message = message
        self.extra = extra


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def int_arg(handler: web.RequestHandler, name: str, default: int, lo: int, hi: int) -> int:
    """A bounded integer query argument, or a 400 naming it."""
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


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def manager(self) -> JobManager:
        return self.settings["mlp_manager"]

    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]

    @property
    def quota(self) -> QuotaService:
        return self.manager.quota


class APIHandler(BaseHandler):
    """JSON in, JSON out; errors as {"error", "message"}; authentication by hub tokens."""

    user: dict[str, Any]
    #: True only for documents anyone may read (the OpenAPI document); an explicit opt-out.
    public = False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        # Only token authentication (an Authorization header) may change state; a cookie alone
        # is refused in `prepare`, so there is no cross-site request to forge.
        return

    def prepare(self) -> None:
        if not self.public:
            self.user = self._authenticate()

    def _authenticate(self) -> dict[str, Any]:
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
        return dict(user)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            body = {"error": exc.error, "message": exc.message, **exc.extra}
        elif isinstance(exc, web.HTTPError):
            body = {
                "error": ERROR_NAMES.get(status_code, "error"),
                "message": exc.log_message or self._reason,
            }
        else:
            body = {"error": "internal", "message": "internal error; see the mlp service log"}
        self.finish(json.dumps(body))

    async def hub_groups(self, name: str) -> list[str]:
        """A user's JupyterHub groups, asked with the service's own token."""
        auth = self.hub_auth
        req = HTTPRequest(
            f"{auth.api_url}/users/{quote(name, safe='')}",
            headers={"Authorization": f"token {auth.api_token}"},
            request_timeout=20,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if e.code == 404:
                raise ApiError(
                    404, "not_found", f"user {name!r} does not exist in the hub"
                ) from None
            raise ApiError(
                503, "hub_unavailable", f"the hub did not answer about user {name!r}: {e}"
            ) from None
        return list(json.loads(resp.body).get("groups", []))

    @property
    def is_admin(self) -> bool:
        return self.settings["admin_scope"] in set(self.user.get("scopes", ()))

    def json_body(self) -> Any:
        if len(self.request.body) > MAX_BODY:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
        try:
            return json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "malformed_json", f"request body is not valid JSON: {e}") from None

    def json_object(self, what: str = "a JSON object") -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", f"expected {what}")
        return body

    def validated(self, model: type[M], body: dict[str, Any]) -> M:
        """`body` checked against the documented model (after the handler's own, more specific
        checks): a 400 naming the field rather than a request the document does not allow."""
        try:
            return model.model_validate(body)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or None
            message = f"{where}: {err['msg']}" if where else err["msg"]
            raise ApiError(400, "bad_request", message, field=where) from None

    def load_job(self, job_id: str) -> Job:
        """The job named in the path, if the caller may see it (404 / 403 otherwise)."""
        if not job_id.isdigit() or len(job_id) > 18:
            raise ApiError(404, "not_found", f"{job_id!r} is not a job id (job ids are numbers)")
        try:
            job = self.manager.get(int(job_id))
        except JobNotFound:
            raise ApiError(404, "not_found", f"job {job_id} does not exist") from None
        if job.user != self.user["name"] and not self.is_admin:
            raise ApiError(403, "forbidden", f"job {job_id} belongs to another user")
        return job

    def refuse(self, e: Exception, field: str | None = None) -> ApiError:
        """The API error for a refusal of the quota service."""
        if isinstance(e, QuotaExceeded):
            reasons = "; ".join(b.reason for b in e.blocking)
            return ApiError(
                409, "over_quota", reasons or str(e), blocking=[b.to_dict() for b in e.blocking]
            )
        if isinstance(e, UnknownNameError):
            return ApiError(404, "not_found", str(e))
        extra = {"field": field} if field else {}
        return ApiError(400, "bad_request", str(e), **extra)

    def write_json(self, obj: Any, status: int = 200) -> None:
        """Answer `obj`, checked against the response model the OpenAPI document names for this
        route, method and status (`mlp.api.response_models`): a response that breaks the
        documented contract is a bug of the service and answers 500 instead of reaching a client
        that relies on the document."""
        text = json.dumps(obj)
        model = self.settings.get("response_models", {}).get(
            (type(self), self.request.method.lower() if self.request.method else "", status)
        )
        if model is not None:
            try:
                model.model_validate_json(text)
            except ValidationError as e:
                err = e.errors(include_url=False)[0]
                where = ".".join(str(p) for p in err["loc"]) or "(the body)"
                self.log.error("response of %s %s breaks its schema %s: %s",
                               self.request.method, self.request.path, model.__name__, e)
                raise ApiError(
                    500, "internal",
                    f"the service built a response that does not match its documented schema "
                    f"{model.__name__} ({where}: {err['msg']}); this is a bug of the mlp service: "
                    "report it with the service log",
                ) from None
        self.set_status(status)
        self.finish(text)


def admin_only(
    method: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Refuse a handler method (403) unless the caller holds the admin scope."""

    @functools.wraps(method)
    async def wrapper(self: APIHandler, *args: Any, **kwargs: Any) -> None:
        if not self.is_admin:
            raise ApiError(
                403, "forbidden", f"admins only (needs the {self.settings['admin_scope']} scope)"
            )
        await method(self, *args, **kwargs)

    wrapper.admin_only = True  # type: ignore[attr-defined]
    return wrapper


class NotFoundHandler(APIHandler):
    def prepare(self) -> None:
        raise ApiError(
            404,
            "not_found",
            f"no such API route: {self.request.path}; see openapi.json for the routes",
        )
