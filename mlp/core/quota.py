"""The service side of quotas: builds the one Ledger and QueueScheduler from configuration and
the store, keeps the store in step with every reservation, and applies admin changes.

`mlp/scheduling/` decides (pure, no I/O); this module persists and explains. Everything here
runs on the service's event loop thread only, so a check and the reservation that follows it
can never interleave with another request's: the ledger has one writer.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from typing import Any

import psutil
from sqlalchemy import delete, select

from mlp.scheduling import (
    DEFAULT_POOL,
    Blocker,
    Demand,
    Expansion,
    Holder,
    Ledger,
    Pool,
    Preemption,
    QueueScheduler,
    QuotaConfig,
    QuotaGroup,
    Resources,
    ScorePolicy,
    effective,
    parse_resources,
)
from mlp.store import (
    ExpansionRow,
    HolderRow,
    Job,
    PoolRow,
    PromotionRow,
    QuotaGroupRow,
    Store,
)


class QuotaError(ValueError):
    """A refused quota operation: HTTP status, error code, message and the blocking numbers."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
        blocking: Iterable[Blocker] = (),
    ):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.blocking = [b.to_dict() for b in blocking]


def machine_resources() -> Resources:
    """What "machine" stands for in quotas: this host's cores and memory."""
    return Resources(cpu=float(os.cpu_count() or 1), memory=psutil.virtual_memory().total)


def job_holder_id(job_id: int) -> str:
    return f"job:{job_id}"


def job_id_of(holder_id: str) -> int | None:
    kind, _, rest = holder_id.partition(":")
    return int(rest) if kind == "job" and rest.isdigit() else None


def _holder_row(h: Holder) -> HolderRow:
    return HolderRow(
        id=h.id,
        kind=h.kind,
        user=h.user,
        group=h.group,
        pool=h.pool,
        amount=h.amount.to_dict(h.amount.names()),
        borrowed=h.borrowed.to_dict(h.amount.names()),
        priority=h.priority,
        admitted_at=h.admitted_at,
        until=h.until,
        devices=list(h.devices),
    )


def _holder(row: HolderRow, extra: Iterable[str]) -> Holder:
    return Holder(
        id=row.id,
        user=row.user,
        group=row.group,
        pool=row.pool,
        amount=parse_resources(row.amount, extra, "holder amount"),
        kind="server" if row.kind == "server" else "job",
        borrowed=parse_resources(row.borrowed, extra, "holder borrowed"),
        priority=row.priority,
        admitted_at=row.admitted_at,
        until=row.until,
        devices=tuple(str(d) for d in row.devices or ()),
    )


class QuotaService:
    def __init__(
        self, store: Store, config: QuotaConfig, policy: ScorePolicy, backfill: bool = True
    ):
        self.store = store
        self.config = config
        self.policy = policy
        self.backfill = backfill
        self.machine = machine_resources()
        self.ledger: Ledger
        self.scheduler: QueueScheduler

    # ------------------------------------------------------------------ loading
    def _derive(self, **changes: Any) -> QuotaConfig:
        """A copy of the configured quotas with some tables replaced (store rows, one change)."""
        values: dict[str, Any] = {
            name: getattr(self.config, name)
            for name in (
                "pools",
                "groups",
                "default_group",
                "default_group_quota",
                "extra_resources",
            )
        }
        values.update(changes)
        return QuotaConfig(**values)

    def build_pools(self) -> dict[str, Pool]:
        with self.store.session() as s:
            stored = {r.name: r.spec for r in s.scalars(select(PoolRow))}
        return self._derive(pools=effective(self.config.pools, stored)).build_pools(self.machine)

    def build_groups(self, pools: Iterable[str]) -> dict[str, QuotaGroup]:
        with self.store.session() as s:
            stored = {r.name: r.spec for r in s.scalars(select(QuotaGroupRow))}
        cfg = self._derive(groups=effective(self.config.groups, stored))
        return cfg.build_groups(self.machine, pools)

    def load(self, now: float, running: Iterable[Job]) -> list[Preemption]:
        """Rebuild the ledger from config + store; running jobs without a holder get one."""
        pools = self.build_pools()
        groups = self.build_groups(pools)
        extra = self.config.extra_resources
        with self.store.session() as s:
            rows = list(s.scalars(select(HolderRow)))
            expansions = [
                Expansion(
                    id=e.id,
                    group=e.group,
                    pool=e.pool,
                    amount=parse_resources(e.amount, extra, "expansion amount"),
                    start=e.start,
                    expiry=e.expiry,
                    reason=e.reason,
                    granted_by=e.granted_by,
                )
                for e in s.scalars(select(ExpansionRow).where(ExpansionRow.revoked.is_(False)))
                if e.expiry > now and e.group in groups and e.pool in pools
            ]
        holders = [_holder(r, extra) for r in rows if r.group in groups and r.pool in pools]
        known = {h.id for h in holders}
        for job in running:
            hid = job_holder_id(job.id)
            if hid in known or job.group not in groups or job.pool not in pools:
                continue
            # A fact from before quotas were recorded: its processes hold the resources.
            holders.append(
                Holder(
                    id=hid,
                    user=job.user,
                    group=job.group or "",
                    pool=job.pool or DEFAULT_POOL,
                    amount=self.demand_for(job).total,
                    priority=job.priority,
                    admitted_at=job.started_at or now,
                    until=(job.started_at or now) + float(job.spec.get("max_runtime", 3600)),
                )
            )
        self.ledger = Ledger.from_holders(
            pools.values(), groups.values(), expansions, holders, now=now
        )
        self.scheduler = QueueScheduler(self.ledger, self.policy, backfill=self.backfill)
        preempted = self.ledger.advance(now)
        self._store_devices()
        return preempted

    def _store_devices(self) -> None:
        """Record devices the ledger (re)allocated: rows from before devices were kept, or
        naming a device its pool no longer lists."""
        with self.store.session() as s:
            stored = {r.id: r.devices for r in s.scalars(select(HolderRow))}
            for holder in self.ledger.holders():
                if holder.id in stored and stored[holder.id] != list(holder.devices):
                    s.merge(_holder_row(holder))

    # ------------------------------------------------------------------ demands
    def demand_for(self, job: Job) -> Demand:
        return self.demand(
            job_holder_id(job.id),
            job.user,
            job.name,
            job.spec,
            job.group or "",
            job.pool or DEFAULT_POOL,
            job.priority,
            job.created_at,
        )

    def demand(
        self,
        demand_id: str,
        user: str,
        name: str,
        spec: dict[str, Any],
        group: str,
        pool: str,
        priority: int,
        submitted_at: float,
    ) -> Demand:
        """The gang a job asks the ledger for: one Resources entry per task."""
        tasks = tuple(
            Resources(cpu=t["cpu"], memory=t["memory"], gpu=t["gpu"])
            for t in spec["tasks"].values()
            for _ in range(t["count"])
        )
        return Demand(
            id=demand_id,
            user=user,
            group=group,
            pool=pool,
            tasks=tasks,
            priority=priority,
            max_runtime=float(spec.get("max_runtime", 3600)),
            submitted_at=submitted_at,
            promoted=self.is_promoted(user, name),
        )

    def is_promoted(self, user: str, name: str) -> bool:
        with self.store.session() as s:
            return s.get(PromotionRow, (user, name)) is not None

    # ------------------------------------------------------------------ holders
    def persist_admitted(self, holder_id: str) -> Holder:
        holder = self.ledger.holder(holder_id)
        with self.store.session() as s:
            s.merge(_holder_row(holder))
        return holder

    def release(self, holder_id: str) -> None:
        if holder_id in self.ledger:
            self.ledger.release(holder_id)
        self.forget(holder_id)

    def forget(self, holder_id: str) -> None:
        """Drop a holder's row (the ledger already released it, e.g. a preemption)."""
        with self.store.session() as s:
            s.execute(delete(HolderRow).where(HolderRow.id == holder_id))

    def reserve_server(
        self, holder_id: str, user: str, group: str, pool: str, amount: Resources, now: float,
        promoted: bool = False,
    ) -> Holder:
        """A holder without a runtime limit: a notebook server, or a model deployment (which
        may run in the production pool when an admin promoted the model: `promoted`)."""
        holder = self.ledger.reserve(holder_id, user, group, pool, amount, kind="server",
                                     now=now, promoted=promoted)
        with self.store.session() as s:
            s.merge(_holder_row(holder))
        return holder

    # ------------------------------------------------------------------ admin changes
    def set_group(self, name: str, spec: dict[str, Any], by: str) -> list[Preemption]:
        cfg = self._derive(groups={name: spec}, default_group=name)  # build only this one
        group = cfg.build_groups(self.machine, self.ledger.pools)[name]
        preempted = self.ledger.set_group(group)
        with self.store.session() as s:
            s.merge(QuotaGroupRow(name=name, spec=spec, updated_at=time.time(), updated_by=by))
        self.scheduler.rescore()
        return preempted

    def set_pool(self, name: str, spec: dict[str, Any], by: str) -> list[Preemption]:
        old = self.ledger.pools.get(name)
        if "devices" not in spec and old is not None and old.devices is not None:
            # the admin API sets capacities only: a configured device list stays while the
            # gpu count does not change (else the indices 0..n-1 apply, as without a list)
            gpu = (
                parse_resources(spec.get("capacity") or {}, self.config.extra_resources).gpu
                if isinstance(spec.get("capacity"), dict)
                else 0
            )
            if gpu == len(old.devices):
                spec = {**spec, "devices": list(old.devices)}
        # build_pools insists on a default pool; only `name` is taken from the result.
        cfg = self._derive(pools={DEFAULT_POOL: {"capacity": "machine"}, name: spec})
        pool = cfg.build_pools(self.machine)[name]
        preempted = self.ledger.set_pool(pool)
        with self.store.session() as s:
            s.merge(PoolRow(name=name, spec=spec, updated_at=time.time(), updated_by=by))
        self._store_devices()
        self.scheduler.rescore()
        return preempted

    def add_expansion(
        self,
        group: str,
        pool: str,
        amount: Resources,
        start: float,
        expiry: float,
        reason: str,
        by: str,
    ) -> Expansion:
        expansion = Expansion(
            id=f"exp-{secrets.token_hex(4)}",
            group=group,
            pool=pool,
            amount=amount,
            start=start,
            expiry=expiry,
            reason=reason,
            granted_by=by,
        )
        self.ledger.add_expansion(expansion)
        with self.store.session() as s:
            s.add(
                ExpansionRow(
                    id=expansion.id,
                    group=group,
                    pool=pool,
                    amount=amount.to_dict(amount.names()),
                    start=start,
                    expiry=expiry,
                    reason=reason,
                    granted_by=by,
                    revoked=False,
                )
            )
        return expansion

    def revoke_expansion(self, expansion_id: str) -> list[Preemption]:
        preempted = self.ledger.revoke_expansion(expansion_id)
        with self.store.session() as s:
            row = s.get(ExpansionRow, expansion_id)
            if row is not None:
                row.revoked = True
        return preempted

    def expansions(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            rows = list(s.scalars(select(ExpansionRow).order_by(ExpansionRow.start)))
        now = time.time()
        return [
            {
                "id": r.id,
                "group": r.group,
                "pool": r.pool,
                "amount": r.amount,
                "start": r.start,
                "expiry": r.expiry,
                "reason": r.reason,
                "granted_by": r.granted_by,
                "state": "revoked"
                if r.revoked
                else "expired"
                if r.expiry <= now
                else "active"
                if r.start <= now
                else "scheduled",
            }
            for r in rows
        ]

    def promote(self, user: str, name: str, by: str) -> None:
        with self.store.session() as s:
            s.merge(PromotionRow(user=user, name=name, promoted_by=by, at=time.time()))

    def demote(self, user: str, name: str) -> bool:
        with self.store.session() as s:
            row = s.get(PromotionRow, (user, name))
            if row is None:
                return False
            s.delete(row)
            return True

    def promotions(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            return [
                {"user": r.user, "name": r.name, "promoted_by": r.promoted_by, "at": r.at}
                for r in s.scalars(select(PromotionRow).order_by(PromotionRow.at))
            ]


__all__ = ["QuotaError", "QuotaService", "job_holder_id", "job_id_of"]
