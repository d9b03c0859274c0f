"""REST handlers for quotas: the queue, my quota, notebook-server reservations, and the admin API
(groups, pools, expansions, promotions, usage). Thin: parse, authorize, call QuotaService."""

from __future__ import annotations

import time
from typing import Any

from tornado import web

from mlp.handlers import ApiError, APIHandler, iso
from mlp.quota import QuotaService
from mlp.scheduling import QuotaExceeded, UnknownNameError, parse_resources, resolve_group
from mlp.spec import NAME_RE, SpecError, parse_duration
from mlp.states import JobState


class QuotaAPIHandler(APIHandler):
    @property
    def quota(self) -> QuotaService:
        return self.manager.quota

    def require_admin(self) -> dict[str, Any]:
        user = self.require_user()
        if not self.is_admin(user):
            raise ApiError(
                403, "forbidden", f"admins only (needs the {self.settings['admin_scope']} scope)"
            )
        return user

    def refuse(self, e: Exception, field: str | None = None) -> ApiError:
        if isinstance(e, QuotaExceeded):
            reasons = "; ".join(b.reason for b in e.blocking)
            return ApiError(
                409, "over_quota", reasons or str(e), blocking=[b.to_dict() for b in e.blocking]
            )
        if isinstance(e, UnknownNameError):
            return ApiError(404, "not_found", str(e))
        extra = {"field": field} if field else {}
        return ApiError(400, "bad_request", str(e), **extra)

    def preempt(self, preemptions: list[Any]) -> list[str]:
        self.manager.apply_preemptions(preemptions)
        self.manager.kick()
        return [p.holder_id for p in preemptions]


def _name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ApiError(
            400,
            "bad_request",
            f"{what} {value!r} is not a valid name (lowercase letters, digits and '-')",
        )
    return value


# ----------------------------------------------------------------------------- users
class QueueHandler(QuotaAPIHandler):
    async def get(self) -> None:
        user = self.require_user()
        asked = self.get_argument("user", None)
        everyone = self.is_admin(user) and asked in (None, "*")
        if asked not in (None, user["name"]) and not self.is_admin(user):
            raise ApiError(403, "forbidden", "only admins may see other users' queue entries")
        now = time.time()
        entries = []
        for job in self.manager.store.list_jobs(states=[JobState.QUEUED]):
            if not everyone and job.user != (asked or user["name"]):
                continue
            info = self.manager.queue_info(job)
            if info is None:
                continue
            entries.append(
                {
                    "id": job.id,
                    "user": job.user,
                    "name": job.name,
                    "group": job.group,
                    "pool": job.pool,
                    **info,
                }
            )
        entries.sort(key=lambda e: (e["position"] is None, e["position"] or 0, e["id"]))
        self.write_json({"now": iso(now), "queue": entries})


class MyQuotaHandler(QuotaAPIHandler):
    async def get(self) -> None:
        user = self.require_user()
        ledger = self.quota.ledger
        default = self.quota.config.default_group
        mine = sorted(g for g in user.get("groups", []) if g in ledger.groups) or [default]
        groups = {}
        for name in mine:
            group = ledger.groups.get(name)
            if group is None:
                continue
            cap = group.cap_of(user["name"])
            groups[name] = {
                "cohort": group.cohort,
                "personal_cap": None if cap is None else cap.to_dict(),
                "my_usage": ledger.user_usage(name, user["name"]).to_dict(),
                "pools": {
                    pool: {
                        "limit": group.limit(pool).to_dict(),
                        "with_expansions": ledger.nominal(name, pool, ledger.now).to_dict(),
                        "used_by_group": ledger.group_usage(name, pool).to_dict(),
                        "idle": ledger.idle(name, pool).to_dict(),
                    }
                    for pool in sorted(ledger.pools)
                },
            }
        jobs = self.manager.store.list_jobs(
            user=user["name"], states=[JobState.QUEUED, JobState.STARTING, JobState.RUNNING]
        )
        self.write_json(
            {
                "user": user["name"],
                "groups": groups,
                "active_jobs": [
                    {"id": j.id, "name": j.name, "state": j.state, "group": j.group, "pool": j.pool}
                    for j in jobs
                ],
            }
        )


# ----------------------------------------------------------------------------- reservations
def _reservation(holder: Any) -> dict[str, Any]:
    return {
        "id": holder.id.partition(":")[2],
        "user": holder.user,
        "group": holder.group,
        "pool": holder.pool,
        "amount": holder.amount.to_dict(),
        "since": iso(holder.admitted_at),
    }


class ReservationsHandler(QuotaAPIHandler):
    """Notebook servers reserve through the same ledger as jobs (the spawner calls this)."""

    async def get(self) -> None:
        user = self.require_user()
        admin = self.is_admin(user)
        held = [
            h
            for h in self.quota.ledger.holders()
            if h.kind == "server" and (admin or h.user == user["name"])
        ]
        self.write_json({"reservations": [_reservation(h) for h in held]})

    async def post(self) -> None:
        caller = self.require_user()
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "expected a JSON object")
        unknown = set(body) - {"user", "server", "group", "pool", "resources"}
        if unknown:
            raise ApiError(
                400,
                "bad_request",
                f"{sorted(unknown)[0]}: unknown field; valid "
                "fields are: group, pool, resources, server, user",
                field=sorted(unknown)[0],
            )
        name = body.get("user", caller["name"])
        if name != caller["name"] and not self.is_admin(caller):
            raise ApiError(403, "forbidden", "only admins may reserve for another user")
        server = body.get("server", "")
        if not isinstance(server, str) or len(server) > 255 or "/" in server:
            raise ApiError(400, "bad_request", "server: expected a server name", field="server")
        try:
            amount = parse_resources(
                body.get("resources") or {}, self.quota.config.extra_resources, "resources"
            )
        except ValueError as e:
            raise ApiError(400, "bad_request", str(e), field="resources") from None
        if amount.is_zero():
            raise ApiError(
                400,
                "bad_request",
                "resources: reserve at least some cpu or memory",
                field="resources",
            )
        for key in ("group", "pool"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(
                    400, "bad_request", f"{key}: expected the name of a {key}", field=key
                )
        groups = caller.get("groups", []) if name == caller["name"] else await self.hub_groups(name)
        ledger = self.quota.ledger
        try:
            group = resolve_group(
                name,
                groups,
                ledger.groups,
                self.quota.config.default_group,
                requested=body.get("group"),
            )
        except ValueError as e:
            raise self.refuse(e, field="group") from None
        pool = body.get("pool", "default")
        holder_id = f"server:{name}/{server}"
        if holder_id in ledger:
            raise ApiError(
                409,
                "conflict",
                f"{name}'s server {server!r} already holds a reservation; release it first",
            )
        try:
            holder = self.quota.reserve_server(holder_id, name, group, pool, amount, time.time())
        except (QuotaExceeded, UnknownNameError, ValueError) as e:
            raise self.refuse(e) from None
        self.write_json(_reservation(holder), status=201)

    async def hub_groups(self, name: str) -> list[str]:
        """A user's JupyterHub groups, asked with the service's own token."""
        auth = self.hub_auth
        r = await auth._api_request(
            "GET",
            f"{auth.api_url}/users/{name}",
            headers={"Authorization": f"token {auth.api_token}"},
            allow_404=True,
        )
        if r is None:
            raise ApiError(404, "not_found", f"user {name!r} does not exist in the hub")
        return list(r.get("groups", []))


class ReservationHandler(QuotaAPIHandler):
    async def delete(self, reservation: str) -> None:
        caller = self.require_user()
        holder_id = f"server:{reservation}"
        if holder_id not in self.quota.ledger:
            raise ApiError(404, "not_found", f"no reservation {reservation!r}")
        holder = self.quota.ledger.holder(holder_id)
        if holder.user != caller["name"] and not self.is_admin(caller):
            raise ApiError(403, "forbidden", f"reservation {reservation!r} is another user's")
        self.quota.release(holder_id)
        self.manager.kick()  # queued jobs may fit now
        self.write_json(_reservation(holder))


# ----------------------------------------------------------------------------- admin
class AdminGroupsHandler(QuotaAPIHandler):
    async def get(self) -> None:
        self.require_admin()
        ledger = self.quota.ledger
        self.write_json(
            {
                "groups": {
                    name: {
                        "cohort": g.cohort,
                        "limits": {p: r.to_dict() for p, r in g.limits.items()},
                        "member_cap": None if g.member_cap is None else g.member_cap.to_dict(),
                        "member_caps": {u: r.to_dict() for u, r in g.member_caps.items()},
                        "lend_limit": {p: r.to_dict() for p, r in g.lend_limit.items()},
                    }
                    for name, g in sorted(ledger.groups.items())
                },
                "default_group": self.quota.config.default_group,
            }
        )


class AdminGroupHandler(QuotaAPIHandler):
    async def put(self, name: str) -> None:
        admin = self.require_admin()
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "expected a JSON object describing the group")
        try:
            preempted = self.quota.set_group(name, body, by=admin["name"])
        except (UnknownNameError, ValueError) as e:
            raise self.refuse(e) from None
        self.write_json({"group": name, "preempted": self.preempt(preempted)})


class AdminPoolsHandler(QuotaAPIHandler):
    async def get(self) -> None:
        self.require_admin()
        self.write_json(
            {
                "pools": {
                    name: {
                        "capacity": p.capacity.to_dict(),
                        "priority": p.priority,
                        "requires_promotion": p.requires_promotion,
                    }
                    for name, p in sorted(self.quota.ledger.pools.items())
                }
            }
        )


class AdminPoolHandler(QuotaAPIHandler):
    async def put(self, name: str) -> None:
        admin = self.require_admin()
        _name(name, "pool")
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "expected a JSON object describing the pool")
        try:
            preempted = self.quota.set_pool(name, body, by=admin["name"])
        except (UnknownNameError, ValueError) as e:
            raise self.refuse(e) from None
        self.write_json({"pool": name, "preempted": self.preempt(preempted)})


class AdminExpansionsHandler(QuotaAPIHandler):
    async def get(self) -> None:
        self.require_admin()
        self.write_json(
            {
                "expansions": [
                    {**e, "start": iso(e["start"]), "expiry": iso(e["expiry"])}
                    for e in self.quota.expansions()
                ]
            }
        )

    async def post(self) -> None:
        admin = self.require_admin()
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "expected a JSON object")
        allowed = {"group", "pool", "amount", "duration", "start_in", "reason"}
        unknown = set(body) - allowed
        if unknown:
            raise ApiError(
                400,
                "bad_request",
                f"{sorted(unknown)[0]}: unknown field; valid "
                f"fields are: {', '.join(sorted(allowed))}",
                field=sorted(unknown)[0],
            )
        ledger = self.quota.ledger
        group, pool = body.get("group"), body.get("pool", "default")
        if group not in ledger.groups:
            raise ApiError(
                404,
                "not_found",
                f"unknown group {group!r}; groups are {', '.join(sorted(ledger.groups))}",
                field="group",
            )
        if pool not in ledger.pools:
            raise ApiError(
                404,
                "not_found",
                f"unknown pool {pool!r}; pools are {', '.join(sorted(ledger.pools))}",
                field="pool",
            )
        try:
            amount = parse_resources(
                body.get("amount") or {}, self.quota.config.extra_resources, "amount"
            )
            duration = parse_duration(body.get("duration"), "duration")
            delay = parse_duration(body.get("start_in", 0), "start_in", allow_zero=True)
        except ValueError as e:
            # parse_duration names its field; parse_resources (amount) raises a plain ValueError
            field = e.field if isinstance(e, SpecError) else "amount"
            raise ApiError(400, "bad_request", str(e), field=field) from None
        if amount.is_zero():
            raise ApiError(
                400, "bad_request", "amount: an expansion must add something", field="amount"
            )
        reason = body.get("reason", "")
        if not isinstance(reason, str) or not reason.strip():
            raise ApiError(
                400, "bad_request", "reason: say why the expansion is granted", field="reason"
            )
        start = time.time() + delay
        try:
            expansion = self.quota.add_expansion(
                str(group), pool, amount, start, start + duration, reason, by=admin["name"]
            )
        except ValueError as e:
            raise self.refuse(e) from None
        self.manager.kick()
        self.write_json(
            {
                "id": expansion.id,
                "group": group,
                "pool": pool,
                "amount": amount.to_dict(),
                "start": iso(expansion.start),
                "expiry": iso(expansion.expiry),
                "reason": reason,
                "granted_by": admin["name"],
            },
            status=201,
        )


class AdminExpansionHandler(QuotaAPIHandler):
    async def delete(self, expansion_id: str) -> None:
        self.require_admin()
        try:
            preempted = self.quota.revoke_expansion(expansion_id)
        except UnknownNameError:
            raise ApiError(404, "not_found", f"no active expansion {expansion_id!r}") from None
        self.write_json({"revoked": expansion_id, "preempted": self.preempt(preempted)})


class AdminPromotionsHandler(QuotaAPIHandler):
    async def get(self) -> None:
        self.require_admin()
        self.write_json(
            {"promotions": [{**p, "at": iso(p["at"])} for p in self.quota.promotions()]}
        )

    async def post(self) -> None:
        admin = self.require_admin()
        body = self.json_body()
        if not isinstance(body, dict) or set(body) != {"user", "name"}:
            raise ApiError(
                400,
                "bad_request",
                'expected {"user": ..., "name": <job name>}: the model to promote',
            )
        user, name = body["user"], body["name"]
        if not isinstance(user, str) or not isinstance(name, str) or not NAME_RE.match(name):
            raise ApiError(400, "bad_request", "user and name must be a user and a job name")
        self.quota.promote(user, name, by=admin["name"])
        moved = self.manager.move_to_production(user, name)
        self.write_json(
            {
                "user": user,
                "name": name,
                "promoted_by": admin["name"],
                "moved_to_production": moved,
            },
            status=201,
        )


class AdminPromotionHandler(QuotaAPIHandler):
    async def delete(self, user: str, name: str) -> None:
        self.require_admin()
        if not self.quota.demote(user, name):
            raise ApiError(404, "not_found", f"{user}'s {name!r} is not promoted")
        self.write_json({"user": user, "name": name, "promoted": False})


class AdminUsageHandler(QuotaAPIHandler):
    async def get(self) -> None:
        self.require_admin()
        report = self.quota.ledger.usage_report()
        report["now"] = iso(float(report["now"]))  # type: ignore[arg-type]
        self.write_json(report)


def quota_routes(api_prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (rf"{api_prefix}/queue/?", QueueHandler),
        (rf"{api_prefix}/quota/?", MyQuotaHandler),
        (rf"{api_prefix}/reservations/?", ReservationsHandler),
        (rf"{api_prefix}/reservations/(?P<reservation>[^/]+/[^/]*)", ReservationHandler),
        (rf"{api_prefix}/admin/groups/?", AdminGroupsHandler),
        (rf"{api_prefix}/admin/groups/(?P<name>[^/]+)", AdminGroupHandler),
        (rf"{api_prefix}/admin/pools/?", AdminPoolsHandler),
        (rf"{api_prefix}/admin/pools/(?P<name>[^/]+)", AdminPoolHandler),
        (rf"{api_prefix}/admin/expansions/?", AdminExpansionsHandler),
        (rf"{api_prefix}/admin/expansions/(?P<expansion_id>[^/]+)", AdminExpansionHandler),
        (rf"{api_prefix}/admin/promotions/?", AdminPromotionsHandler),
        (rf"{api_prefix}/admin/promotions/(?P<user>[^/]+)/(?P<name>[^/]+)", AdminPromotionHandler),
        (rf"{api_prefix}/admin/usage/?", AdminUsageHandler),
    ]

