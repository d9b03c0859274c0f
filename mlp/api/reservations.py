"""`/reservations`: notebook servers reserve through the same ledger as jobs.

A reservation with gpus gets its own devices of the pool (``devices``), as a job does; the
spawner sets the server's ``CUDA_VISIBLE_DEVICES`` from them.
"""

from __future__ import annotations

import time
from typing import Any

from mlp.api.base import ApiError, APIHandler, iso
from mlp.api.schemas import ReservationRequest
from mlp.scheduling import QuotaExceeded, UnknownNameError, parse_resources, resolve_group


def _reservation(holder: Any) -> dict[str, Any]:
    return {
        "id": holder.id.partition(":")[2],
        "user": holder.user,
        "group": holder.group,
        "pool": holder.pool,
        "amount": holder.amount.to_dict(),
        "since": iso(holder.admitted_at),
        "devices": list(holder.devices),
    }


class ReservationsHandler(APIHandler):
    """Notebook servers reserve through the same ledger as jobs (the spawner calls this)."""

    async def get(self) -> None:
        admin = self.is_admin
        held = [
            h
            for h in self.quota.ledger.holders()
            if h.kind == "server" and (admin or h.user == self.user["name"])
        ]
        self.write_json({"reservations": [_reservation(h) for h in held]})

    async def post(self) -> None:
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
        name = body.get("user") or self.user["name"]
        if name != self.user["name"] and not self.is_admin:
            raise ApiError(403, "forbidden", "only admins may reserve for another user")
        server = body.get("server") or ""
        if not isinstance(server, str) or len(server) > 255 or "/" in server:
            raise ApiError(400, "bad_request", "server: expected a server name", field="server")
        if not server.isprintable():
            raise ApiError(
                400,
                "bad_request",
                "server: only printable characters are allowed in a server name",
                field="server",
            )
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
        if name == self.user["name"]:
            groups = self.user.get("groups", [])
        else:
            groups = await self.hub_groups(name)
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
        pool = body.get("pool") or "default"
        self.validated(ReservationRequest, body)
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


class ReservationHandler(APIHandler):
    async def delete(self, user: str, server: str) -> None:
        reservation = f"{user}/{server}"
        holder_id = f"server:{reservation}"
        if holder_id not in self.quota.ledger:
            raise ApiError(404, "not_found", f"no reservation {reservation!r}")
        holder = self.quota.ledger.holder(holder_id)
        if holder.user != self.user["name"] and not self.is_admin:
            raise ApiError(403, "forbidden", f"reservation {reservation!r} is another user's")
        self.quota.release(holder_id)
        self.manager.kick()  # queued jobs may fit now
        self.write_json(_reservation(holder))


