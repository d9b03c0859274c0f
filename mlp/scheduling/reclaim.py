"""Reclaim and repair: choosing the running jobs to preempt so that every limit holds.

Two situations preempt jobs, and both pick victims by `victim_order` (borrowed jobs first, then
the lowest priority, then the youngest); notebook servers are never preempted.

* **Repair** (`repair`): a limit shrank under running work (a pool's capacity or a group's
  limit changed, an expansion ended or was revoked, the service restarted with a smaller
  configuration). `first_violation` finds a broken limit, in a fixed order (pool capacity,
  cohort lending, group limit, personal cap), with the holders that could restore it; one is
  released and the walk starts again until nothing is broken.
* **Reclaim** (`plan_reclaim`): a lender's own job is blocked only because its idle quota is
  lent out inside its cohort. The borrowed jobs of the other groups are the candidates; the
  fewest that let the job run on its own quota are chosen. The plan is returned, not carried
  out: the caller releases the victims.

`violations` lists every broken limit; it is empty in every state the ledger can reach.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mlp.scheduling.accounting import Accounts
from mlp.scheduling.admission import evaluate_demand
from mlp.scheduling.model import Demand, Holder, Preemption

__all__ = [
    "device_violations",
    "first_violation",
    "plan_reclaim",
    "repair",
    "victim_order",
    "violations",
]

_Found = tuple[str, list[Holder]]


def victim_order(holder: Holder) -> tuple[bool, int, float, str]:
    """Preempt borrowed jobs first, then the lowest priority, then the youngest."""
    return (not holder.preemptible, holder.priority, -holder.admitted_at, holder.id)


# -- what is broken ----------------------------------------------------------------------------
def violations(accounts: Accounts) -> list[str]:
    """Every broken limit at the ledger's clock; empty in every reachable state."""
    now = accounts.now
    found: list[str] = []
    for name, pool_obj in accounts.pools.items():
        used = accounts.pool_usage(name)
        if not used.fits(pool_obj.capacity):
            found.append(f"pool {name!r}: {used!r} > capacity {pool_obj.capacity!r}")
    for (group, pool), own in accounts.own_usages().items():
        nominal = accounts.nominal(group, pool, now)
        if not own.fits(nominal):
            found.append(f"group {group!r} pool {pool!r}: own {own!r} > {nominal!r}")
    for cohort in accounts.cohorts:
        for pool in accounts.pools:
            borrowed = accounts.cohort_borrowed(cohort, pool)
            supply = accounts.lendable_supply_uncached(cohort, pool, now, now)
            if not borrowed.fits(supply):
                found.append(f"cohort {cohort!r} pool {pool!r}: {borrowed!r} > {supply!r}")
    for (group, user), used in accounts.user_usages().items():
        cap = accounts.groups[group].cap_of(user)
        if cap is not None and not used.fits(cap):
            found.append(f"user {user!r} in {group!r}: {used!r} > cap {cap!r}")
    found += device_violations(accounts)
    for holder in accounts.holders():
        if holder.kind == "server" and not holder.borrowed.is_zero():
            found.append(f"server {holder.id!r} borrows {holder.borrowed!r}")
        if holder.borrowed and accounts.groups[holder.group].cohort is None:
            found.append(f"holder {holder.id!r} borrows outside any cohort")
    return found


def device_violations(accounts: Accounts) -> list[str]:
    """No GPU device held twice; each holder owns exactly its gpu count of declared devices."""
    found: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for holder in accounts.holders():
        declared = set(accounts.pools[holder.pool].device_ids)
        if len(holder.devices) != holder.amount.gpu:
            found.append(
                f"holder {holder.id!r} owns {len(holder.devices)} device(s) for "
                f"{holder.amount.gpu} gpu(s)"
            )
        for device in holder.devices:
            key = (holder.pool, device)
            if key in seen:
                found.append(
                    f"device {device!r} of pool {holder.pool!r} held by "
                    f"{seen[key]!r} and {holder.id!r}"
                )
            seen[key] = holder.id
            if device not in declared:
                found.append(f"holder {holder.id!r} owns undeclared device {device!r}")
    table = {(p, d): h for p in accounts.pools for d, h in accounts.device_owners(p).items()}
    if table != seen:
        found.append(f"device table {table!r} differs from the holders' devices {seen!r}")
    return found


def first_violation(accounts: Accounts) -> _Found | None:
    """The first broken limit and the holders whose release could restore it, or None."""
    for find in _FINDERS:
        found = find(accounts)
        if found is not None:
            return found
    return None


def _pool_over_capacity(accounts: Accounts) -> _Found | None:
    for name, pool_obj in accounts.pools.items():
        used = accounts.pool_usage(name)
        if not used.fits(pool_obj.capacity):
            over = used.exceeding(pool_obj.capacity)
            return f"pool {name!r} is over capacity in {', '.join(over)}", [
                h
                for h in accounts.holders()
                if h.pool == name and any(h.amount[r] > 0 for r in over)
            ]
    return None


def _cohort_over_supply(accounts: Accounts) -> _Found | None:
    now = accounts.now
    for cohort, members in accounts.cohorts.items():
        for pool in accounts.pools:
            borrowed = accounts.cohort_borrowed(cohort, pool)
            if borrowed.is_zero():
                continue
            supply = accounts.lendable_supply_uncached(cohort, pool, now, now)
            if not borrowed.fits(supply):
                over = borrowed.exceeding(supply)
                return f"cohort {cohort!r} lends more than its idle quota", [
                    h
                    for m in members
                    for h in accounts.holders_in(m, pool)
                    if h.preemptible and any(h.borrowed[r] > 0 for r in over)
                ]
    return None


def _group_over_limit(accounts: Accounts) -> _Found | None:
    for (group, pool), own in accounts.own_usages().items():
        nominal = accounts.nominal(group, pool, accounts.now)
        if not own.fits(nominal):
            over = own.exceeding(nominal)
            return f"group {group!r} is over its limit in pool {pool!r}", [
                h for h in accounts.holders_in(group, pool) if any(h.own[r] > 0 for r in over)
            ]
    return None


def _user_over_cap(accounts: Accounts) -> _Found | None:
    for (group, user), used in accounts.user_usages().items():
        cap = accounts.groups[group].cap_of(user)
        if cap is not None and not used.fits(cap):
            over = used.exceeding(cap)
            return f"user {user!r} is over the personal cap in {group!r}", [
                h
                for h in accounts.holders()
                if h.group == group and h.user == user and any(h.amount[r] > 0 for r in over)
            ]
    return None


_FINDERS: tuple[Callable[[Accounts], _Found | None], ...] = (
    _pool_over_capacity,
    _cohort_over_supply,
    _group_over_limit,
    _user_over_cap,
)


# -- repair ------------------------------------------------------------------------------------
def repair(accounts: Accounts, why: str) -> list[Preemption]:
    """Preempt jobs until no limit is broken: borrowed first, low priority, youngest."""
    preempted: list[Preemption] = []
    while True:
        found = first_violation(accounts)
        if found is None:
            return preempted
        description, candidates = found
        jobs = sorted((h for h in candidates if h.kind == "job"), key=victim_order)
        if not jobs:  # only servers left: cannot happen, config changes guard it
            raise AssertionError(f"cannot restore {description} without stopping servers")
        victim = jobs[0]
        accounts.remove_holder(victim.id)
        preempted.append(Preemption(victim.id, f"{why}: {description}"))


# -- reclaim -----------------------------------------------------------------------------------
def plan_reclaim(accounts: Accounts, demand: Demand, now: float) -> list[Preemption] | None:
    """The borrowed jobs to preempt so a lender's own demand fits, or None if none would do.

    Only jobs running on borrowed quota in the demand's cohort and pool are candidates,
    taken lowest priority first, then youngest first, until the demand fits; the set is
    then pruned so that no victim could be spared. A demand that would itself need to
    borrow, or that a personal cap blocks, gets None: reclaim only returns quota to its
    owner. Nothing is released here.
    """
    _, blocking = evaluate_demand(accounts, demand, now)
    if not blocking:
        return []
    if any(b.scope in ("user", "group") for b in blocking):
        return None
    cohort = accounts.groups[demand.group].cohort
    if cohort is None or not _own_quota_would_fit(accounts, demand, now):
        return None
    chosen = _choose_victims(accounts, demand, now, _candidates(accounts, demand, cohort))
    if chosen is None:
        return None
    return [
        Preemption(
            h.id,
            f"group {demand.group!r} reclaims its quota lent inside cohort "
            f"{cohort!r} for job {demand.id!r}",
        )
        for h in sorted(chosen, key=victim_order)
    ]


def _own_quota_would_fit(accounts: Accounts, demand: Demand, now: float) -> bool:
    """Does the demand fit the group's own idle quota (expansions that outlast it included)?"""
    start = min(accounts.now, now)
    idle_own = (
        accounts.nominal(demand.group, demand.pool, start, now + demand.max_runtime)
        - accounts.group_own_usage(demand.group, demand.pool)
    ).clamp()
    return demand.total.fits(idle_own)


def _candidates(accounts: Accounts, demand: Demand, cohort: str) -> list[Holder]:
    """Borrowed jobs of the other groups of `cohort` in the demand's pool, in victim order."""
    return sorted(
        (
            h
            for name in accounts.cohorts[cohort]
            if name != demand.group
            for h in accounts.holders_in(name, demand.pool)
            if h.preemptible
        ),
        key=victim_order,
    )


def _choose_victims(
    accounts: Accounts, demand: Demand, now: float, candidates: Iterable[Holder]
) -> list[Holder] | None:
    """The fewest candidates whose release lets `demand` run on its own quota, or None.

    Candidates are taken out of the totals one by one until the demand fits, then every one
    the demand can do without is put back; the totals are restored before returning.
    """
    chosen: list[Holder] = []
    try:
        for holder in candidates:
            accounts.apply(holder, -1)
            chosen.append(holder)
            if _fits_own(accounts, demand, now):
                break
        else:
            return None
        kept: list[Holder] = []
        for holder in reversed(chosen):
            accounts.apply(holder, 1)
            if _fits_own(accounts, demand, now):
                continue
            accounts.apply(holder, -1)
            kept.append(holder)
        chosen = kept
    finally:
        for holder in chosen:
            accounts.apply(holder, 1)
    return chosen


def _fits_own(accounts: Accounts, demand: Demand, now: float) -> bool:
    borrow, blocking = evaluate_demand(accounts, demand, now)
    return not blocking and borrow is not None and borrow.is_zero()
