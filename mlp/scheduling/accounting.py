"""Accounting: what is declared (pools, groups, expansions), who holds what, and the sums.

`Accounts` is the state the ledger's rules read: the declared pools, quota groups and their
cohorts, the granted expansions, every holder, and running totals kept over the holders (per
pool; per group and pool split into own and borrowed quota; per cohort and pool borrowed; per
group and user). Only `add_holder`, `remove_holder` and `apply` change the totals, always by a
holder's whole amount, so they always equal a recount from the holders.

GPU devices are accounted one by one: each pool's `Pool.device_ids` are owned by at most one
holder at a time (`device_owners`), and a holder owns exactly as many as the gpus it reserved.
`add_holder` and `remove_holder` take and give back a holder's devices (never `apply`, whose
what-if removals must not hand a device out); `settle_devices` rebuilds the table after a
restart or a change of a pool's device list.

The arithmetic of quota lives here too: a group's nominal quota in a time window (its limit plus
the expansions active during the whole window), its idle quota, and what the groups of a cohort
may lend (`lendable_supply`). No method here refuses a reservation or preempts anything; that is
`mlp.scheduling.admission` and `mlp.scheduling.reclaim`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

from mlp.scheduling.model import Expansion, Holder, Pool, QuotaGroup, UnknownNameError
from mlp.scheduling.resources import Resources

__all__ = ["Accounts"]

_ZERO = Resources.zero()

_Key = tuple[str, str]


class Accounts:
    """Declared pools, groups and expansions; the holders; usage totals over the holders."""

    def __init__(self, pools: Iterable[Pool], groups: Iterable[QuotaGroup], now: float) -> None:
        self.now = float(now)
        self._pools: dict[str, Pool] = {}
        self._groups: dict[str, QuotaGroup] = {}
        self._cohorts: dict[str, list[str]] = {}
        self._expansions: dict[str, Expansion] = {}
        self._expansions_of: dict[_Key, list[Expansion]] = {}
        self._holders: dict[str, Holder] = {}
        self._pool_used: dict[str, Resources] = {}
        self._own: dict[_Key, Resources] = {}
        self._borrowed: dict[_Key, Resources] = {}
        self._cohort_borrowed: dict[_Key, Resources] = {}
        self._user_used: dict[_Key, Resources] = {}
        self._server_own: dict[_Key, Resources] = {}
        self._holders_in: dict[_Key, dict[str, Holder]] = {}
        self._device_owner: dict[str, dict[str, str]] = {}  # pool -> device -> holder id
        # lendable supply per (cohort, pool): recomputed only when that cohort's state changes
        self._supply_cache: dict[_Key, dict[tuple[float, float], Resources]] = {}
        for pool in pools:
            if pool.name in self._pools:
                raise ValueError(f"pool {pool.name!r} is declared twice")
            self._pools[pool.name] = pool
        for group in groups:
            if group.name in self._groups:
                raise ValueError(f"group {group.name!r} is declared twice")
            self.check_group_pools(group)
            self._groups[group.name] = group
        self._rebuild_cohorts()

    # -- declarations ----------------------------------------------------------------------
    @property
    def pools(self) -> Mapping[str, Pool]:
        return self._pools

    @property
    def groups(self) -> Mapping[str, QuotaGroup]:
        return self._groups

    @property
    def expansions(self) -> Mapping[str, Expansion]:
        return self._expansions

    @property
    def cohorts(self) -> Mapping[str, list[str]]:
        """Each cohort's member groups, in name order."""
        return self._cohorts

    def cohort_members(self, cohort: str) -> tuple[str, ...]:
        return tuple(self._cohorts.get(cohort, ()))

    def check_group_pools(self, group: QuotaGroup) -> None:
        """Refuse a group whose limits or lend limits name a pool that is not declared."""
        for what, mapping in (("limits", group.limits), ("lend_limit", group.lend_limit)):
            for pool in mapping:
                if pool not in self._pools:
                    raise UnknownNameError(
                        f"group {group.name!r} {what}: unknown pool {pool!r}; "
                        f"pools are {', '.join(sorted(self._pools))}"
                    )

    def require_known(self, group: str, pool: str) -> tuple[QuotaGroup, Pool]:
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

    def put_pool(self, pool: Pool) -> None:
        self._pools[pool.name] = pool
        self._supply_cache.clear()

    def put_group(self, group: QuotaGroup) -> None:
        """Add or replace a group, moving its borrowed totals to its new cohort."""
        old = self._groups.get(group.name)
        if old is not None and old.cohort is not None:
            self._move_cohort_borrowing(group.name, old.cohort, -1)
        self._groups[group.name] = group
        if group.cohort is not None:
            self._move_cohort_borrowing(group.name, group.cohort, 1)
        self._rebuild_cohorts()

    def drop_group(self, name: str) -> None:
        del self._groups[name]
        self._rebuild_cohorts()

    def _move_cohort_borrowing(self, group: str, cohort: str, sign: int) -> None:
        for pool in self._pools:
            borrowed = self._borrowed.get((group, pool), _ZERO)
            key = (cohort, pool)
            current = self._cohort_borrowed.get(key, _ZERO)
            self._cohort_borrowed[key] = current + borrowed if sign > 0 else current - borrowed

    def _rebuild_cohorts(self) -> None:
        self._cohorts = {}
        for name in sorted(self._groups):
            cohort = self._groups[name].cohort
            if cohort is not None:
                self._cohorts.setdefault(cohort, []).append(name)
        self._supply_cache.clear()

    # -- expansions ------------------------------------------------------------------------
    def add_expansion(self, expansion: Expansion) -> None:
        """Grant a temporary expansion; it takes effect at its start and ends by itself."""
        self.require_known(expansion.group, expansion.pool)
        if expansion.id in self._expansions:
            raise ValueError(f"expansion {expansion.id!r} already exists")
        self._expansions[expansion.id] = expansion
        self._expansions_of.setdefault((expansion.group, expansion.pool), []).append(expansion)
        self._supply_cache.clear()

    def remove_expansion(self, expansion_id: str) -> Expansion:
        try:
            expansion = self._expansions.pop(expansion_id)
        except KeyError:
            raise UnknownNameError(f"unknown expansion {expansion_id!r}") from None
        self._expansions_of[(expansion.group, expansion.pool)].remove(expansion)
        self._supply_cache.clear()
        return expansion

    def end_expansions(self, now: float) -> list[Expansion]:
        """Drop the expansions whose expiry is at or before `now`; returns them."""
        ended = [e for e in self._expansions.values() if e.expiry <= now]
        for expansion in ended:
            del self._expansions[expansion.id]
            self._expansions_of[(expansion.group, expansion.pool)].remove(expansion)
        if ended:
            self._supply_cache.clear()
        return ended

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

    # -- lending ---------------------------------------------------------------------------
    def offer(
        self, name: str, pool: str, start: float, end: float, own: Resources | None = None
    ) -> Resources:
        """What group `name` may lend: min(lend_limit, idle), idle from `own` if given."""
        lendable = self._groups[name].lendable(pool)
        if lendable.is_zero():
            return _ZERO
        used = self._own.get((name, pool), _ZERO) if own is None else own
        return lendable.min((self.nominal(name, pool, start, end) - used).clamp())

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
            total = total + self.offer(name, pool, start, end)
        if len(per_window) > 64:  # windows differ by clock only; keep the cache small
            per_window.clear()
        per_window[(start, end)] = total
        return total

    def lendable_supply_uncached(
        self, cohort: str, pool: str, start: float, end: float
    ) -> Resources:
        """`lendable_supply` recomputed from scratch (for checks that must not trust a cache)."""
        total = _ZERO
        for name in self._cohorts.get(cohort, ()):
            idle = (
                self.nominal(name, pool, start, end) - self._own.get((name, pool), _ZERO)
            ).clamp()
            total = total + self._groups[name].lendable(pool).min(idle)
        return total

    # -- holders ---------------------------------------------------------------------------
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

    def add_holder(self, holder: Holder, *, take_devices: bool = True) -> None:
        """Record a holder and count it in every total (no limit is checked here).

        Its devices must be declared in its pool and free. ``take_devices`` False (rebuilding
        from the store) leaves the device table to `settle_devices`, called next.
        """
        if holder.id in self._holders:
            raise ValueError(f"holder {holder.id!r} is listed twice")
        if take_devices:
            owners = self._device_owner.setdefault(holder.pool, {})
            declared = set(self._pools[holder.pool].device_ids)
            for device in holder.devices:
                if device not in declared or device in owners:
                    raise ValueError(
                        f"holder {holder.id!r}: device {device!r} of pool {holder.pool!r} is "
                        f"{'held by ' + repr(owners[device]) if device in owners else 'unknown'}"
                    )
            for device in holder.devices:
                owners[device] = holder.id
        self._holders[holder.id] = holder
        self.apply(holder, 1)

    def remove_holder(self, holder_id: str) -> Holder:
        holder = self.holder(holder_id)
        del self._holders[holder_id]
        self.apply(holder, -1)
        owners = self._device_owner.get(holder.pool, {})
        for device in holder.devices:
            if owners.get(device) == holder_id:
                del owners[device]
        return holder

    # -- devices ---------------------------------------------------------------------------
    def free_devices(self, pool: str) -> list[str]:
        """The pool's devices no holder owns, in the pool's order."""
        owners = self._device_owner.get(pool, {})
        return [d for d in self._pools[pool].device_ids if d not in owners]

    def device_owners(self, pool: str) -> Mapping[str, str]:
        """Device -> holder id for the pool's devices that are held."""
        return self._device_owner.get(pool, {})

    def settle_devices(self) -> list[Holder]:
        """Rebuild the device table from the holders; returns the holders whose devices changed.

        Older holders first (admission time, then id) keep the devices they name that are
        declared in their pool and not yet taken; a holder left short (a row from before
        devices were recorded, a device dropped from the pool's list) gets the first free ones.
        A holder stays short only while its pool is over its gpu capacity, which repair ends.
        """
        self._device_owner = {name: {} for name in self._pools}
        ordered = sorted(self._holders.values(), key=lambda h: (h.admitted_at, h.id))
        kept: dict[str, list[str]] = {}
        for holder in ordered:
            owners = self._device_owner[holder.pool]
            declared = set(self._pools[holder.pool].device_ids)
            mine = kept[holder.id] = []
            for device in holder.devices:
                if device in declared and device not in owners and len(mine) < holder.amount.gpu:
                    owners[device] = holder.id
                    mine.append(device)
        changed: list[Holder] = []
        for holder in ordered:
            mine = kept[holder.id]
            short = holder.amount.gpu - len(mine)
            if short > 0:
                extra = self.free_devices(holder.pool)[:short]
                for device in extra:
                    self._device_owner[holder.pool][device] = holder.id
                mine += extra
            if tuple(mine) != holder.devices:
                settled = replace(holder, devices=tuple(mine))
                self._holders[holder.id] = settled
                self._holders_in[(holder.group, holder.pool)][holder.id] = settled
                changed.append(settled)
        return changed

    def apply(self, holder: Holder, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) a holder's amounts in every total.

        The holder table itself is left alone, so a caller may take a holder out of the totals
        for a moment ("what if it stopped?") and put it back.
        """

        def bump(table: dict[_Key, Resources], key: _Key, v: Resources) -> None:
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

    # -- usage -----------------------------------------------------------------------------
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

    def own_usages(self) -> Mapping[_Key, Resources]:
        """Own-quota usage per (group, pool), for walks over every group limit."""
        return self._own

    def user_usages(self) -> Mapping[_Key, Resources]:
        """Usage per (group, user) summed over pools, for walks over every personal cap."""
        return self._user_used

    def server_usage_in_pool(self, pool: str) -> Resources:
        """What notebook servers of every group hold in `pool`."""
        servers = _ZERO
        for (_, pool_name), used in self._server_own.items():
            if pool_name == pool:
                servers = servers + used
        return servers

    def server_usage_of(self, group: str) -> Iterator[tuple[str, Resources]]:
        """(pool, amount) that notebook servers of `group` hold, per pool they use."""
        for (name, pool), used in self._server_own.items():
            if name == group:
                yield pool, used
