"""The ledger: the single, in-memory account of every reservation against every limit.

One writer (the mlp service) owns one `Ledger`. Every job and every notebook server reserves
through it, and no method can leave it in a state that breaks a limit:

* per pool: usage <= capacity;
* per group and pool: own usage <= limit + active expansions (the rest of its usage is borrowed);
* per cohort and pool: what its groups borrowed <= the idle quota its groups may lend
  (each group lends at most ``lend_limit`` and only quota it is not using);
* per member of a group: usage summed over pools <= personal cap.

The service persists holders in its store and rebuilds the ledger at start with
`Ledger.from_holders`; time only moves through `advance`, which ends expansions and, if a limit
shrank under running work, returns the jobs it had to preempt (never a notebook server).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

from mlp.scheduling.model import (
    Blocker,
    Decision,
    Demand,
    Expansion,
    Holder,
    HolderKind,
    Pool,
    Preemption,
    QuotaExceeded,
    QuotaGroup,
    Scope,
    UnknownNameError,
)
from mlp.scheduling.resources import Resources, format_amount

__all__ = ["Ledger"]

_ZERO = Resources.zero()
_INF = math.inf


def _fmt(name: str, value: float) -> str:
    return format_amount(name, value)


def _victim_order(holder: Holder) -> tuple[bool, int, float, str]:
    """Preempt borrowed jobs first, then the lowest priority, then the youngest."""
    return (not holder.preemptible, holder.priority, -holder.admitted_at, holder.id)


class Ledger:
    """Reservations of jobs and notebook servers against pools, groups, cohorts and users."""

    def __init__(
        self,
        pools: Iterable[Pool],
        groups: Iterable[QuotaGroup],
        expansions: Iterable[Expansion] = (),
        now: float = 0.0,
    ) -> None:
        self.now = float(now)
        self._pools: dict[str, Pool] = {}
        self._groups: dict[str, QuotaGroup] = {}
        self._cohorts: dict[str, list[str]] = {}
        self._expansions: dict[str, Expansion] = {}
        self._expansions_of: dict[tuple[str, str], list[Expansion]] = {}
        self._holders: dict[str, Holder] = {}
        self._pool_used: dict[str, Resources] = {}
        self._own: dict[tuple[str, str], Resources] = {}
        self._borrowed: dict[tuple[str, str], Resources] = {}
        self._cohort_borrowed: dict[tuple[str, str], Resources] = {}
        self._user_used: dict[tuple[str, str], Resources] = {}
        self._server_own: dict[tuple[str, str], Resources] = {}
        self._holders_in: dict[tuple[str, str], dict[str, Holder]] = {}
        # lendable supply per (cohort, pool): recomputed only when that cohort's state changes
        self._supply_cache: dict[tuple[str, str], dict[tuple[float, float], Resources]] = {}
        # set when a limit may have shrunk under running work (config change, restart); reserve
        # and release never break a limit, so only then, or when an expansion ends, does
        # `advance` need to look for something to repair
        self._dirty = True
        for pool in pools:
            if pool.name in self._pools:
                raise ValueError(f"pool {pool.name!r} is declared twice")
            self._pools[pool.name] = pool
        for group in groups:
            if group.name in self._groups:
                raise ValueError(f"group {group.name!r} is declared twice")
            self._check_group_pools(group)
            self._groups[group.name] = group
        self._rebuild_cohorts()
        for expansion in expansions:
            self.add_expansion(expansion)

    # -- construction ----------------------------------------------------------------------
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
        """
        ledger = cls(pools, groups, expansions, now=now)
        for holder in holders:
            ledger._require_known(holder.group, holder.pool)
            if holder.id in ledger._holders:
                raise ValueError(f"holder {holder.id!r} is listed twice")
            ledger._holders[holder.id] = holder
            ledger._apply(holder, 1)
        return ledger

    def _check_group_pools(self, group: QuotaGroup) -> None:
        for what, mapping in (("limits", group.limits), ("lend_limit", group.lend_limit)):
            for pool in mapping:
                if pool not in self._pools:
                    raise UnknownNameError(
                        f"group {group.name!r} {what}: unknown pool {pool!r}; "
                        f"pools are {', '.join(sorted(self._pools))}"
                    )

    def _rebuild_cohorts(self) -> None:
        self._cohorts = {}
        for name in sorted(self._groups):
            cohort = self._groups[name].cohort
            if cohort is not None:
                self._cohorts.setdefault(cohort, []).append(name)
        self._supply_cache.clear()

    def _require_known(self, group: str, pool: str) -> tuple[QuotaGroup, Pool]:
        try:
            quota_group = self._groups[group]
        except KeyError:
            raise UnknownNameError(
                f"unknown group {group!r}; groups are {', '.join(sorted(self._groups))}"
            ) from None
        try:
            quota_pool = self._pools[pool]
        except KeyError:
            raise UnknownNameError(
                f"unknown pool {pool!r}; pools are {', '.join(sorted(self._pools))}"
            ) from None
        return quota_group, quota_pool

    # -- reading ---------------------------------------------------------------------------
    @property
    def pools(self) -> Mapping[str, Pool]:
        return self._pools

    @property
    def groups(self) -> Mapping[str, QuotaGroup]:
        return self._groups

    @property
    def expansions(self) -> Mapping[str, Expansion]:
        return self._expansions

    def cohort_members(self, cohort: str) -> tuple[str, ...]:
        return tuple(self._cohorts.get(cohort, ()))

    def holders(self) -> Iterator[Holder]:
        return iter(self._holders.values())

    def holder(self, holder_id: str) -> Holder:
        try:
            return self._holders[holder_id]
        except KeyError:
            raise UnknownNameError(f"unknown holder {holder_id!r}") from None

    def __contains__(self, holder_id: object) -> bool:
        return holder_id in self._holders

    def holders_in(self, group: str, pool: str) -> Iterator[Holder]:
        return iter(self._holders_in.get((group, pool), {}).values())

    def pool_usage(self, pool: str) -> Resources:
        return self._pool_used.get(pool, _ZERO)

    def pool_free(self, pool: str) -> Resources:
        return self._pools[pool].capacity - self.pool_usage(pool)

    def group_usage(self, group: str, pool: str) -> Resources:
        """Everything the group holds in the pool, its own quota and borrowed alike."""
        key = (group, pool)
        return self._own.get(key, _ZERO) + self._borrowed.get(key, _ZERO)

    def group_own_usage(self, group: str, pool: str) -> Resources:
        return self._own.get((group, pool), _ZERO)

    def group_borrowed(self, group: str, pool: str) -> Resources:
        return self._borrowed.get((group, pool), _ZERO)

    def user_usage(self, group: str, user: str) -> Resources:
        return self._user_used.get((group, user), _ZERO)

    def cohort_usage(self, cohort: str, pool: str) -> Resources:
        total = _ZERO
        for name in self._cohorts.get(cohort, ()):
            total = total + self.group_usage(name, pool)
        return total

    def cohort_borrowed(self, cohort: str, pool: str) -> Resources:
        return self._cohort_borrowed.get((cohort, pool), _ZERO)

    def nominal(self, group: str, pool: str, start: float, end: float | None = None) -> Resources:
        """The group's limit plus the expansions active during the whole ``[start, end]``."""
        end = start if end is None else end
        total = self._groups[group].limit(pool)
        for expansion in self._expansions_of.get((group, pool), ()):
            if expansion.covers(start, end):
                total = total + expansion.amount
        return total

    def idle(self, group: str, pool: str, now: float | None = None) -> Resources:
        """Quota the group holds but does not use, at `now` (default: the ledger's clock)."""
        at = self.now if now is None else now
        return (self.nominal(group, pool, at) - self.group_own_usage(group, pool)).clamp()

    def lendable_supply(self, cohort: str, pool: str, start: float, end: float) -> Resources:
        """What the groups of `cohort` may lend in `pool`: sum of min(lend_limit, idle).

        Cached per cohort and pool until a holder of that cohort and pool changes.
        """
        per_window = self._supply_cache.setdefault((cohort, pool), {})
        cached = per_window.get((start, end))
        if cached is not None:
            return cached
        total = _ZERO
        for name in self._cohorts.get(cohort, ()):
            total = total + self._offer(name, pool, start, end)
        if len(per_window) > 64:  # windows differ by clock only; keep the cache small
            per_window.clear()
        per_window[(start, end)] = total
        return total

    def _offer(
        self, name: str, pool: str, start: float, end: float, own: Resources | None = None
    ) -> Resources:
        """What group `name` may lend: min(lend_limit, idle), idle from `own` if given."""
        lendable = self._groups[name].lendable(pool)
        if lendable.is_zero():
            return _ZERO
        used = self._own.get((name, pool), _ZERO) if own is None else own
        return lendable.min((self.nominal(name, pool, start, end) - used).clamp())

    def lent_out(self, group: str, pool: str) -> Resources:
        """The part of the cohort's borrowing attributed to `group` as a lender.

        Borrowing is pooled per cohort; for reporting it is attributed to lenders in name
        order, each up to min(lend_limit, idle), so the figure never exceeds its lend_limit.
        """
        cohort = self._groups[group].cohort
        if cohort is None:
            return _ZERO
        remaining = self.cohort_borrowed(cohort, pool)
        for name in self._cohorts[cohort]:
            offer = self._groups[name].lendable(pool).min(self.idle(name, pool))
            taken = remaining.min(offer)
            if name == group:
                return taken
            remaining = (remaining - taken).clamp()
        return _ZERO

    def usage_report(self) -> dict[str, object]:
        """Usage per pool, group, user and cohort in plain numbers, for the admin API."""
        pools = {
            name: {
                "capacity": pool.capacity.to_dict(),
                "used": self.pool_usage(name).to_dict(),
            }
            for name, pool in sorted(self._pools.items())
        }
        groups: dict[str, object] = {}
        for name, group in sorted(self._groups.items()):
            groups[name] = {
                "cohort": group.cohort,
                "pools": {
                    pool: {
                        "limit": group.limit(pool).to_dict(),
                        "nominal": self.nominal(name, pool, self.now).to_dict(),
                        "used": self.group_usage(name, pool).to_dict(),
                        "borrowed": self.group_borrowed(name, pool).to_dict(),
                        "lent_out": self.lent_out(name, pool).to_dict(),
                    }
                    for pool in sorted(self._pools)
                },
            }
        users = {
            f"{group}/{user}": used.to_dict()
            for (group, user), used in sorted(self._user_used.items())
            if not used.is_zero()
        }
        cohorts = {
            cohort: {
                pool: self.cohort_usage(cohort, pool).to_dict() for pool in sorted(self._pools)
            }
            for cohort in sorted(self._cohorts)
        }
        return {
            "now": self.now,
            "pools": pools,
            "groups": groups,
            "users": users,
            "cohorts": cohorts,
        }

    # -- admission -------------------------------------------------------------------------
    def check(self, demand: Demand, now: float) -> Decision:
        """May `demand` start now? Gang semantics: the whole of its tasks or nothing."""
        borrowed, blocking = self._evaluate(
            demand.group,
            demand.user,
            demand.pool,
            demand.total,
            now,
            demand.max_runtime,
            "job",
            demand.promoted,
        )
        return Decision(admit=not blocking, borrowed=borrowed, blocking=blocking)

    def fits_own_quota(self, demand: Demand, now: float) -> bool:
        """Cheap test: does the demand fit its group's own idle quota (no borrowing)?"""
        nominal = self.nominal(
            demand.group, demand.pool, self.now, max(now, self.now) + demand.max_runtime
        )
        return demand.total.fits_after(self._own.get((demand.group, demand.pool), _ZERO), nominal)

    def _evaluate(
        self,
        group_name: str,
        user: str,
        pool_name: str,
        amount: Resources,
        now: float,
        runtime: float | None,
        kind: HolderKind,
        promoted: bool,
        forced_borrow: Resources | None = None,
    ) -> tuple[Resources | None, tuple[Blocker, ...]]:
        group, pool = self._require_known(group_name, pool_name)
        # the clock never runs backwards: a late caller is judged at the ledger's time
        now = max(now, self.now)
        blockers: list[Blocker] = []
        if pool.requires_promotion and not promoted:
            what = "notebook servers" if kind == "server" else "jobs not promoted by an admin"
            blockers.append(
                Blocker(
                    f"pool {pool_name!r} is for promoted production jobs; {what} cannot run there",
                    "pool",
                    pool_name,
                    "",
                    0.0,
                    0.0,
                )
            )
            return None, tuple(blockers)
        # pool capacity
        free_pool = pool.capacity - self._pool_used.get(pool_name, _ZERO)
        if not amount.fits(free_pool):
            for r in amount.exceeding(free_pool):
                blockers.append(
                    self._blocker(
                        "pool",
                        pool_name,
                        r,
                        amount[r],
                        max(free_pool[r], 0),
                        f"pool {pool_name!r} has {{available}} {r} free of {{capacity}}",
                        pool.capacity[r],
                    )
                )
        # personal cap
        cap = group.cap_of(user)
        if cap is not None:
            free_user = cap - self._user_used.get((group_name, user), _ZERO)
            if not amount.fits(free_user):
                for r in amount.exceeding(free_user):
                    blockers.append(
                        self._blocker(
                            "user",
                            user,
                            r,
                            amount[r],
                            max(free_user[r], 0),
                            f"user {user!r} has {{available}} {r} left of a personal cap of "
                            f"{{capacity}} in group {group_name!r}",
                            cap[r],
                        )
                    )
        # the group's own quota, counting only expansions that outlast the job
        start = self.now
        end = _INF if runtime is None else now + runtime
        key = (group_name, pool_name)
        own_used = self._own.get(key, _ZERO)
        idle_own = (self.nominal(group_name, pool_name, start, end) - own_used).clamp()
        if forced_borrow is None:
            own_part = amount.min(idle_own)
            borrow = amount - own_part
        else:
            borrow = forced_borrow
            own_part = amount - borrow
            if not own_part.is_nonnegative() or not own_part.fits(idle_own):
                for r in sorted(set(own_part.exceeding(idle_own)) | set(borrow.exceeding(amount))):
                    blockers.append(
                        self._blocker(
                            "group",
                            group_name,
                            r,
                            own_part[r],
                            idle_own[r],
                            f"group {group_name!r} has {{available}} {r} of its quota free "
                            f"in pool {pool_name!r} (limit {{capacity}})",
                            group.limit(pool_name)[r],
                        )
                    )
                return None, tuple(blockers)
        cohort = group.cohort
        if not borrow.is_zero() and (cohort is None or kind == "server"):
            why = (
                "notebook servers are never preemptible, so they cannot borrow"
                if kind == "server"
                else "it is in no cohort, so it cannot borrow"
            )
            for r in borrow.names():
                blockers.append(
                    self._blocker(
                        "group",
                        group_name,
                        r,
                        amount[r],
                        idle_own[r],
                        f"group {group_name!r} has {{available}} {r} of its quota free in pool "
                        f"{pool_name!r} (limit {{capacity}}) and {why}",
                        group.limit(pool_name)[r],
                    )
                )
        elif cohort is not None and (
            not borrow.is_zero()
            or not self._cohort_borrowed.get((cohort, pool_name), _ZERO).is_zero()
        ):
            # taking own quota shrinks what this group lends, so check the cohort either way
            supply = self.lendable_supply(cohort, pool_name, start, now)
            if not own_part.is_zero() and not group.lendable(pool_name).is_zero():
                supply = (
                    supply
                    - self._offer(group_name, pool_name, start, now)
                    + self._offer(group_name, pool_name, start, now, own=own_used + own_part)
                )
            free_cohort = supply - self._cohort_borrowed.get((cohort, pool_name), _ZERO)
            if not borrow.fits(free_cohort):
                for r in borrow.exceeding(free_cohort):
                    if borrow[r] > 0:
                        reason = (
                            f"group {group_name!r} has {_fmt(r, idle_own[r])} {r} of its quota "
                            f"free in pool {pool_name!r}; cohort {cohort!r} can lend "
                            f"{{available}} more of the {_fmt(r, borrow[r])} {r} it lacks"
                        )
                    else:
                        reason = (
                            f"quota of group {group_name!r} in pool {pool_name!r} is lent out "
                            f"inside cohort {cohort!r}; borrowed jobs must be preempted first"
                        )
                    blockers.append(
                        self._blocker(
                            "cohort",
                            cohort,
                            r,
                            borrow[r] if borrow[r] > 0 else own_part[r],
                            max(free_cohort[r], 0),
                            reason,
                            supply[r],
                        )
                    )
        if blockers:
            return None, tuple(blockers)
        return borrow, ()

    def _supply_uncached(self, cohort: str, pool: str, start: float, end: float) -> Resources:
        total = _ZERO
        for name in self._cohorts.get(cohort, ()):
            idle = (
                self.nominal(name, pool, start, end) - self._own.get((name, pool), _ZERO)
            ).clamp()
            total = total + self._groups[name].lendable(pool).min(idle)
        return total

    @staticmethod
    def _blocker(
        scope: Scope,
        name: str,
        resource: str,
        requested: float,
        available: float,
        template: str,
        capacity: float,
    ) -> Blocker:
        reason = template.format(
            available=_fmt(resource, available), capacity=_fmt(resource, capacity)
        )
        if resource:
            reason += f"; needs {_fmt(resource, requested)}"
        return Blocker(reason, scope, name, resource, float(requested), float(available))

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
        if holder_id in self._holders:
            raise ValueError(f"holder {holder_id!r} already holds resources")
        if kind not in ("job", "server"):
            raise ValueError(f"kind: expected 'job' or 'server', got {kind!r}")
        if not isinstance(amount, Resources) or not amount.is_nonnegative():
            raise ValueError(f"amount: expected non-negative Resources, got {amount!r}")
        runtime = None if kind == "server" else (3600.0 if max_runtime is None else max_runtime)
        split, blocking = self._evaluate(
            group, user, pool, amount, now, runtime, kind, promoted, forced_borrow=borrowed
        )
        if blocking or split is None:
            raise QuotaExceeded(holder_id, blocking)
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
        )
        self._holders[holder_id] = holder
        self._apply(holder, 1)
        return holder

    def release(self, holder_id: str) -> Holder:
        """Give back what a holder reserved (job finished, server stopped, job preempted)."""
        holder = self.holder(holder_id)
        del self._holders[holder_id]
        self._apply(holder, -1)
        return holder

    def _apply(self, holder: Holder, sign: int) -> None:
        def bump(
            table: dict[tuple[str, str], Resources], key: tuple[str, str], v: Resources
        ) -> None:
            if v.is_zero():
                return
            current = table.get(key, _ZERO)
            table[key] = current + v if sign > 0 else current - v

        key = (holder.group, holder.pool)
        amount, borrowed = holder.amount, holder.borrowed
        own = amount - borrowed
        used = self._pool_used.get(holder.pool, _ZERO)
        self._pool_used[holder.pool] = used + amount if sign > 0 else used - amount
        bump(self._own, key, own)
        bump(self._borrowed, key, borrowed)
        bump(self._user_used, (holder.group, holder.user), amount)
        if holder.kind == "server":
            bump(self._server_own, key, own)
        cohort = self._groups[holder.group].cohort
        if cohort is not None:
            bump(self._cohort_borrowed, (cohort, holder.pool), borrowed)
        members = self._holders_in.setdefault(key, {})
        if sign > 0:
            members[holder.id] = holder
        else:
            members.pop(holder.id, None)
        if cohort is not None:
            self._supply_cache.pop((cohort, holder.pool), None)

    # -- configuration at runtime ----------------------------------------------------------
    def add_expansion(self, expansion: Expansion) -> None:
        """Grant a temporary expansion; it takes effect at its start and ends by itself."""
        self._require_known(expansion.group, expansion.pool)
        if expansion.id in self._expansions:
            raise ValueError(f"expansion {expansion.id!r} already exists")
        self._expansions[expansion.id] = expansion
        self._expansions_of.setdefault((expansion.group, expansion.pool), []).append(expansion)
        self._supply_cache.clear()

    def revoke_expansion(self, expansion_id: str) -> list[Preemption]:
        """End an expansion early; returns the jobs preempted to fit the smaller limit."""
        try:
            expansion = self._expansions.pop(expansion_id)
        except KeyError:
            raise UnknownNameError(f"unknown expansion {expansion_id!r}") from None
        self._expansions_of[(expansion.group, expansion.pool)].remove(expansion)
        self._supply_cache.clear()
        return self._repair(f"expansion {expansion_id!r} was revoked")

    def set_pool(self, pool: Pool) -> list[Preemption]:
        """Add or change a pool; refused if its notebook servers alone would not fit."""
        servers = _ZERO
        for (_, pool_name), used in self._server_own.items():
            if pool_name == pool.name:
                servers = servers + used
        if not servers.fits(pool.capacity):
            raise ValueError(
                f"pool {pool.name!r}: capacity {pool.capacity!r} is below what notebook servers "
                f"already hold there ({servers!r}); stop servers first"
            )
        self._pools[pool.name] = pool
        self._supply_cache.clear()
        return self._repair(f"pool {pool.name!r} capacity changed")

    def set_group(self, group: QuotaGroup) -> list[Preemption]:
        """Add or change a group; refused if its notebook servers alone would not fit."""
        self._check_group_pools(group)
        for (name, pool), used in self._server_own.items():
            if name == group.name and not used.fits(group.limit(pool)):
                raise ValueError(
                    f"group {group.name!r}: limit {group.limit(pool)!r} in pool {pool!r} is "
                    f"below what its notebook servers already hold ({used!r})"
                )
        # moving cohorts would strand borrowed accounting; require the group to be quiet first
        if (
            group.name in self._groups
            and group.cohort != self._groups[group.name].cohort
            and any(
                not h.borrowed.is_zero() for h in self._holders.values() if h.group == group.name
            )
        ):
            raise ValueError(
                f"group {group.name!r}: cannot change cohort while it runs borrowed jobs"
            )
        old = self._groups.get(group.name)
        if old is not None and old.cohort is not None:
            for pool in self._pools:
                borrowed = self._borrowed.get((group.name, pool), _ZERO)
                key = (old.cohort, pool)
                self._cohort_borrowed[key] = self._cohort_borrowed.get(key, _ZERO) - borrowed
        self._groups[group.name] = group
        if group.cohort is not None:
            for pool in self._pools:
                borrowed = self._borrowed.get((group.name, pool), _ZERO)
                key = (group.cohort, pool)
                self._cohort_borrowed[key] = self._cohort_borrowed.get(key, _ZERO) + borrowed
        self._rebuild_cohorts()
        return self._repair(f"quota of group {group.name!r} changed")

    def remove_group(self, name: str) -> None:
        if name not in self._groups:
            raise UnknownNameError(f"unknown group {name!r}")
        if any(h.group == name for h in self._holders.values()):
            raise ValueError(f"group {name!r} still holds resources")
        del self._groups[name]
        self._rebuild_cohorts()

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
        ended = [e for e in self._expansions.values() if e.expiry <= now]
        for expansion in ended:
            del self._expansions[expansion.id]
            self._expansions_of[(expansion.group, expansion.pool)].remove(expansion)
        if not ended and not self._dirty:
            return []
        self._supply_cache.clear()
        return self._repair("an expansion ended" if ended else "limits changed")

    def violations(self) -> list[str]:
        """Every broken limit at the ledger's clock; empty in every reachable state."""
        found: list[str] = []
        for name, pool_obj in self._pools.items():
            used = self.pool_usage(name)
            if not used.fits(pool_obj.capacity):
                found.append(f"pool {name!r}: {used!r} > capacity {pool_obj.capacity!r}")
        for (group, pool), own in self._own.items():
            nominal = self.nominal(group, pool, self.now)
            if not own.fits(nominal):
                found.append(f"group {group!r} pool {pool!r}: own {own!r} > {nominal!r}")
        for cohort in self._cohorts:
            for pool in self._pools:
                borrowed = self.cohort_borrowed(cohort, pool)
                supply = self._supply_uncached(cohort, pool, self.now, self.now)
                if not borrowed.fits(supply):
                    found.append(f"cohort {cohort!r} pool {pool!r}: {borrowed!r} > {supply!r}")
        for (group, user), used in self._user_used.items():
            cap = self._groups[group].cap_of(user)
            if cap is not None and not used.fits(cap):
                found.append(f"user {user!r} in {group!r}: {used!r} > cap {cap!r}")
        for holder in self._holders.values():
            if holder.kind == "server" and not holder.borrowed.is_zero():
                found.append(f"server {holder.id!r} borrows {holder.borrowed!r}")
            if holder.borrowed and self._groups[holder.group].cohort is None:
                found.append(f"holder {holder.id!r} borrows outside any cohort")
        return found

    def _repair(self, why: str) -> list[Preemption]:
        """Preempt jobs until no limit is broken: borrowed first, low priority, youngest."""
        preempted: list[Preemption] = []
        while True:
            scope = self._first_violation()
            if scope is None:
                self._dirty = False
                return preempted
            description, candidates = scope
            jobs = sorted((h for h in candidates if h.kind == "job"), key=_victim_order)
            if not jobs:  # only servers left: cannot happen, config changes guard it
                raise AssertionError(f"cannot restore {description} without stopping servers")
            victim = jobs[0]
            self.release(victim.id)
            preempted.append(Preemption(victim.id, f"{why}: {description}"))

    def _first_violation(self) -> tuple[str, list[Holder]] | None:
        for name, pool_obj in self._pools.items():
            used = self.pool_usage(name)
            if not used.fits(pool_obj.capacity):
                over = used.exceeding(pool_obj.capacity)
                return f"pool {name!r} is over capacity in {', '.join(over)}", [
                    h
                    for h in self._holders.values()
                    if h.pool == name and any(h.amount[r] > 0 for r in over)
                ]
        for cohort, members in self._cohorts.items():
            for pool in self._pools:
                borrowed = self.cohort_borrowed(cohort, pool)
                if borrowed.is_zero():
                    continue
                supply = self._supply_uncached(cohort, pool, self.now, self.now)
                if not borrowed.fits(supply):
                    over = borrowed.exceeding(supply)
                    return f"cohort {cohort!r} lends more than its idle quota", [
                        h
                        for m in members
                        for h in self.holders_in(m, pool)
                        if h.preemptible and any(h.borrowed[r] > 0 for r in over)
                    ]
        for (group, pool), own in self._own.items():
            nominal = self.nominal(group, pool, self.now)
            if not own.fits(nominal):
                over = own.exceeding(nominal)
                return f"group {group!r} is over its limit in pool {pool!r}", [
                    h for h in self.holders_in(group, pool) if any(h.own[r] > 0 for r in over)
                ]
        for (group, user), used in self._user_used.items():
            cap = self._groups[group].cap_of(user)
            if cap is not None and not used.fits(cap):
                over = used.exceeding(cap)
                return f"user {user!r} is over the personal cap in {group!r}", [
                    h
                    for h in self._holders.values()
                    if h.group == group and h.user == user and any(h.amount[r] > 0 for r in over)
                ]
        return None

    # -- reclaim ---------------------------------------------------------------------------
    def plan_reclaim(self, demand: Demand, now: float) -> list[Preemption] | None:
        """The borrowed jobs to preempt so a lender's own demand fits, or None if none would do.

        Only jobs running on borrowed quota in the demand's cohort and pool are candidates,
        taken lowest priority first, then youngest first, until the demand fits; the set is
        then pruned so that no victim could be spared. A demand that would itself need to
        borrow, or that a personal cap blocks, gets None: reclaim only returns quota to its
        owner.
        """
        decision = self.check(demand, now)
        if decision.admit:
            return []
        if any(b.scope in ("user", "group") for b in decision.blocking):
            return None
        group = self._groups[demand.group]
        if group.cohort is None:
            return None
        start = min(self.now, now)
        idle_own = (
            self.nominal(demand.group, demand.pool, start, now + demand.max_runtime)
            - self.group_own_usage(demand.group, demand.pool)
        ).clamp()
        if not demand.total.fits(idle_own):
            return None
        candidates = sorted(
            (
                h
                for name in self._cohorts[group.cohort]
                if name != demand.group
                for h in self.holders_in(name, demand.pool)
                if h.preemptible
            ),
            key=_victim_order,
        )
        chosen: list[Holder] = []
        try:
            for holder in candidates:
                self._apply(holder, -1)
                chosen.append(holder)
                if self._fits_own(demand, now):
                    break
            else:
                return None
            # prune: put back every victim the demand can do without
            kept: list[Holder] = []
            for holder in reversed(chosen):
                self._apply(holder, 1)
                if self._fits_own(demand, now):
                    continue
                self._apply(holder, -1)
                kept.append(holder)
            chosen = kept
        finally:
            for holder in chosen:
                self._apply(holder, 1)
        return [
            Preemption(
                h.id,
                f"group {demand.group!r} reclaims its quota lent inside cohort "
                f"{group.cohort!r} for job {demand.id!r}",
            )
            for h in sorted(chosen, key=_victim_order)
        ]

    def _fits_own(self, demand: Demand, now: float) -> bool:
        borrow, blocking = self._evaluate(
            demand.group,
            demand.user,
            demand.pool,
            demand.total,
            now,
            demand.max_runtime,
            "job",
            demand.promoted,
        )
        return not blocking and borrow is not None and borrow.is_zero()
