"""The ledger: the single, in-memory account of every reservation against every limit.

One writer (the mlp service) owns one `Ledger`. Every job and every notebook server reserves
through it, and no method can leave it in a state that breaks a limit:

* per pool: usage <= capacity;
* per group and pool: own usage <= limit + active expansions (the rest of its usage is borrowed);
* per cohort and pool: what its groups borrowed <= the idle quota its groups may lend
  (each group lends at most ``lend_limit`` and only quota it is not using);
* per member of a group: usage summed over pools <= personal cap;
* per GPU device: at most one holder, and each holder owns exactly its reserved gpu count of
  its pool's devices (`reserve` allocates them, `release` gives them back).

The service persists holders in its store and rebuilds the ledger at start with
`Ledger.from_holders`; time only moves through `advance`, which ends expansions and, if a limit
shrank under running work, returns the jobs it had to preempt (never a notebook server).

The ledger is the writing front of four parts, each readable alone:

* `mlp.scheduling.accounting`: declarations, holders and usage totals (`Accounts`, which
  `Ledger` extends, so every reading method of the ledger is defined there);
* `mlp.scheduling.admission`: may an amount be held now, and which part is borrowed;
* `mlp.scheduling.reclaim`: which jobs to preempt to restore a limit or return lent quota;
* `mlp.scheduling.reporting`: lent-out attribution and the usage report.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlp.scheduling import admission, reclaim, reporting
from mlp.scheduling.accounting import Accounts
from mlp.scheduling.model import (
    Decision,
    Demand,
    Expansion,
    Holder,
    HolderKind,
    Pool,
    Preemption,
    QuotaExceeded,
    QuotaGroup,
    UnknownNameError,
)
from mlp.scheduling.resources import Resources

__all__ = ["Ledger"]


class Ledger(Accounts):
    """Reservations of jobs and notebook servers against pools, groups, cohorts and users."""

    def __init__(
        self,
        pools: Iterable[Pool],
        groups: Iterable[QuotaGroup],
        expansions: Iterable[Expansion] = (),
        now: float = 0.0,
    ) -> None:
        super().__init__(pools, groups, now)
        # set when a limit may have shrunk under running work (config change, restart); reserve
        # and release never break a limit, so only then, or when an expansion ends, does
        # `advance` need to look for something to repair
        self._dirty = True
        for expansion in expansions:
            self.add_expansion(expansion)

    @classmethod
    def from_holders(
        cls,
        pools: Iterable[Pool],
        groups: Iterable[QuotaGroup],
        expansions: Iterable[Expansion] = (),
        holders: Iterable[Holder] = (),
        now: float = 0.0,
    ) -> Ledger:
        """Rebuild the ledger from the store at start.

        Holders are facts (processes that run), so they are loaded even if the configuration
        shrank meanwhile; call `advance` next to learn which jobs must be preempted.
        Each holder keeps the GPU devices the store recorded for it (see
        `Accounts.settle_devices` for rows that name none or a device the pool lost).
        """
        ledger = cls(pools, groups, expansions, now=now)
        for holder in holders:
            ledger.require_known(holder.group, holder.pool)
            ledger.add_holder(holder, take_devices=False)
        ledger.settle_devices()
        return ledger

    # -- admission -------------------------------------------------------------------------
    def check(self, demand: Demand, now: float) -> Decision:
        """May `demand` start now? Gang semantics: the whole of its tasks or nothing."""
        borrowed, blocking = admission.evaluate_demand(self, demand, now)
        return Decision(admit=not blocking, borrowed=borrowed, blocking=blocking)

    def fits_own_quota(self, demand: Demand, now: float) -> bool:
        """Cheap test: does the demand fit its group's own idle quota (no borrowing)?"""
        return admission.fits_own_quota(self, demand, now)

    # -- writing ---------------------------------------------------------------------------
    def reserve(
        self,
        holder_id: str,
        user: str,
        group: str,
        pool: str,
        amount: Resources,
        kind: HolderKind = "job",
        borrowed: Resources | None = None,
        *,
        now: float,
        priority: int = 0,
        max_runtime: float | None = None,
        promoted: bool = False,
    ) -> Holder:
        """Hold `amount` for a job or a notebook server, or raise `QuotaExceeded`.

        ``borrowed`` None lets the ledger split the amount into own quota first, borrowed
        rest; passing the split from a `Decision` re-validates exactly that split. A job's
        ``max_runtime`` decides which expansions it may use (those that outlast it); a server
        has none and may use its group's permanent quota only.
        """
        if holder_id in self:
            raise ValueError(f"holder {holder_id!r} already holds resources")
        if kind not in ("job", "server"):
            raise ValueError(f"kind: expected 'job' or 'server', got {kind!r}")
        if not isinstance(amount, Resources) or not amount.is_nonnegative():
            raise ValueError(f"amount: expected non-negative Resources, got {amount!r}")
        runtime = None if kind == "server" else (3600.0 if max_runtime is None else max_runtime)
        split, blocking = admission.evaluate(
            self, group, user, pool, amount, now, runtime, kind, promoted, forced_borrow=borrowed
        )
        if blocking or split is None:
            raise QuotaExceeded(holder_id, blocking)
        devices = self.free_devices(pool)[: amount.gpu]
        if len(devices) < amount.gpu:  # cannot happen while the gpu count fits: defensive
            raise QuotaExceeded(
                holder_id,
                (
                    admission.blocker(
                        "pool",
                        pool,
                        "gpu",
                        amount.gpu,
                        len(devices),
                        f"only {{available}} of pool {pool!r}'s GPU devices are free",
                        len(self.pools[pool].device_ids),
                    ),
                ),
            )
        holder = Holder(
            id=holder_id,
            user=user,
            group=group,
            pool=pool,
            amount=amount,
            kind=kind,
            borrowed=split,
            priority=priority,
            admitted_at=now,
            until=None if runtime is None else now + runtime,
            devices=tuple(devices),
        )
        self.add_holder(holder)
        return holder

    def release(self, holder_id: str) -> Holder:
        """Give back what a holder reserved (job finished, server stopped, job preempted)."""
        return self.remove_holder(holder_id)

    # -- configuration at runtime ----------------------------------------------------------
    def revoke_expansion(self, expansion_id: str) -> list[Preemption]:
        """End an expansion early; returns the jobs preempted to fit the smaller limit."""
        self.remove_expansion(expansion_id)
        return self._repair(f"expansion {expansion_id!r} was revoked")

    def set_pool(self, pool: Pool) -> list[Preemption]:
        """Add or change a pool; refused if its notebook servers alone would not fit."""
        servers = self.server_usage_in_pool(pool.name)
        if not servers.fits(pool.capacity):
            raise ValueError(
                f"pool {pool.name!r}: capacity {pool.capacity!r} is below what notebook servers "
                f"already hold there ({servers!r}); stop servers first"
            )
        self.put_pool(pool)
        return self._repair(f"pool {pool.name!r} capacity changed")

    def set_group(self, group: QuotaGroup) -> list[Preemption]:
        """Add or change a group; refused if its notebook servers alone would not fit."""
        self.check_group_pools(group)
        for pool, used in self.server_usage_of(group.name):
            if not used.fits(group.limit(pool)):
                raise ValueError(
                    f"group {group.name!r}: limit {group.limit(pool)!r} in pool {pool!r} is "
                    f"below what its notebook servers already hold ({used!r})"
                )
        # moving cohorts would strand borrowed accounting; require the group to be quiet first
        old = self.groups.get(group.name)
        if (
            old is not None
            and group.cohort != old.cohort
            and any(not h.borrowed.is_zero() for h in self.holders() if h.group == group.name)
        ):
            raise ValueError(
                f"group {group.name!r}: cannot change cohort while it runs borrowed jobs"
            )
        self.put_group(group)
        return self._repair(f"quota of group {group.name!r} changed")

    def remove_group(self, name: str) -> None:
        if name not in self.groups:
            raise UnknownNameError(f"unknown group {name!r}")
        if any(h.group == name for h in self.holders()):
            raise ValueError(f"group {name!r} still holds resources")
        self.drop_group(name)

    # -- time ------------------------------------------------------------------------------
    def advance(self, now: float) -> list[Preemption]:
        """Move the clock: expansions that ended are dropped, limits restored by preemption.

        Jobs only use expansion quota when the expansion outlasts their max runtime, so an
        expansion's end normally preempts nothing; what remains is a lender whose quota
        shrank under borrowed jobs, or a job that overran its declared runtime.
        """
        if now < self.now:
            return []
        self.now = float(now)
        ended = self.end_expansions(now)
        if not ended and not self._dirty:
            return []
        self._supply_cache.clear()
        return self._repair("an expansion ended" if ended else "limits changed")

    # -- limits: repair, reclaim, reports --------------------------------------------------
    def violations(self) -> list[str]:
        """Every broken limit at the ledger's clock; empty in every reachable state."""
        return reclaim.violations(self)

    def _repair(self, why: str) -> list[Preemption]:
        preempted = reclaim.repair(self, why)
        # capacity holds again: holders a restart or a new device list left short get devices
        self.settle_devices()
        self._dirty = False
        return preempted

    def plan_reclaim(self, demand: Demand, now: float) -> list[Preemption] | None:
        """The borrowed jobs to preempt so a lender's own demand fits, or None if none would do.

        See `mlp.scheduling.reclaim.plan_reclaim`; the caller releases the victims.
        """
        return reclaim.plan_reclaim(self, demand, now)

    def lent_out(self, group: str, pool: str) -> Resources:
        """The part of the cohort's borrowing attributed to `group` as a lender."""
        return reporting.lent_out(self, group, pool)

    def usage_report(self) -> dict[str, object]:
        """Usage per pool, group, user and cohort in plain numbers, for the admin API."""
        return reporting.usage_report(self)
