"""`/admin/*`: groups, pools, expansions, promotions and usage (the `custom:mlp:admin` scope)."""

from __future__ import annotations

import time
from typing import Any

from mlp.api import schemas as s
from mlp.api.base import ApiError, APIHandler, admin_only, iso
from mlp.core.spec import NAME_RE, SpecError, parse_duration
from mlp.scheduling import UnknownNameError, parse_resources


def _name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ApiError(
            400,
            "bad_request",
            f"{what} {value!r} is not a valid name (lowercase letters, digits and '-')",
        )
    return value


class AdminHandler(APIHandler):
    def preempt(self, preemptions: list[Any]) -> list[str]:
        """Stop the jobs an admin change preempts; their ids for the response."""
        self.manager.apply_preemptions(preemptions)
        self.manager.kick()
        return [p.holder_id for p in preemptions]


class AdminGroupsHandler(AdminHandler):
    @admin_only
    async def get(self) -> None:
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


class AdminGroupHandler(AdminHandler):
    @admin_only
    async def put(self, name: str) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "expected a JSON object describing the group")
        try:
            self.validated(s.GroupRequest, body)
            preempted = self.quota.set_group(name, body, by=self.user["name"])
        except (UnknownNameError, ValueError) as e:
            raise self.refuse(e) from None
        self.write_json({"group": name, "preempted": self.preempt(preempted)})


class AdminPoolsHandler(AdminHandler):
    @admin_only
    async def get(self) -> None:
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


class AdminPoolHandler(AdminHandler):
    @admin_only
    async def put(self, name: str) -> None:
        _name(name, "pool")
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "expected a JSON object describing the pool")
        try:
            self.validated(s.PoolRequest, body)
            preempted = self.quota.set_pool(name, body, by=self.user["name"])
        except (UnknownNameError, ValueError) as e:
            raise self.refuse(e) from None
        self.write_json({"pool": name, "preempted": self.preempt(preempted)})


class AdminExpansionsHandler(AdminHandler):
    @admin_only
    async def get(self) -> None:
        self.write_json(
            {
                "expansions": [
                    {**e, "start": iso(e["start"]), "expiry": iso(e["expiry"])}
                    for e in self.quota.expansions()
                ]
            }
        )

    @admin_only
    async def post(self) -> None:
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
        self.validated(s.ExpansionRequest, body)
        start = time.time() + delay
        try:
            expansion = self.quota.add_expansion(
                str(group), pool, amount, start, start + duration, reason, by=self.user["name"]
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
                "granted_by": self.user["name"],
            },
            status=201,
        )


class AdminExpansionHandler(AdminHandler):
    @admin_only
    async def delete(self, expansion_id: str) -> None:
        try:
            preempted = self.quota.revoke_expansion(expansion_id)
        except UnknownNameError:
            raise ApiError(404, "not_found", f"no active expansion {expansion_id!r}") from None
        self.write_json({"revoked": expansion_id, "preempted": self.preempt(preempted)})


class AdminPromotionsHandler(AdminHandler):
    @admin_only
    async def get(self) -> None:
        self.write_json(
            {"promotions": [{**p, "at": iso(p["at"])} for p in self.quota.promotions()]}
        )

    @admin_only
    async def post(self) -> None:
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
        self.validated(s.PromotionRequest, body)
        self.quota.promote(user, name, by=self.user["name"])
        moved = self.manager.move_to_production(user, name)
        self.write_json(
            {
                "user": user,
                "name": name,
                "promoted_by": self.user["name"],
                "moved_to_production": moved,
            },
            status=201,
        )


class AdminPromotionHandler(AdminHandler):
    @admin_only
    async def delete(self, user: str, name: str) -> None:
        if not self.quota.demote(user, name):
            raise ApiError(404, "not_found", f"{user}'s {name!r} is not promoted")
        self.write_json({"user": user, "name": name, "promoted": False})


class AdminUsageHandler(AdminHandler):
    @admin_only
    async def get(self) -> None:
        report = self.quota.ledger.usage_report()
        report["now"] = iso(float(report["now"]))  # type: ignore[arg-type]
        self.write_json(report)


