"""Admission: may an amount be held now, and which part of it is borrowed?

`evaluate` answers for a job or a notebook server by running small checks in this order, each
returning the `Blocker` s it finds (with the numbers):

1. `promotion_blocker`: the production pool runs promoted jobs only (nothing else is checked);
2. `pool_blockers`: the pool's free capacity;
3. `cap_blockers`: the user's personal cap in the group, summed over pools;
4. the split into own and borrowed quota: own idle quota first, counting only expansions that
   outlast the job (`own_idle`); a split given by the caller is re-validated instead
   (`split_blockers`, and nothing else is checked when it fails);
5. `borrowing_blockers`: notebook servers and groups outside a cohort never borrow
   (`cannot_borrow_blockers`); otherwise the cohort must be able to lend what is borrowed, and
   taking own quota that is lent out needs the borrowed jobs preempted first
   (`cohort_blockers`).

Everything here reads `Accounts` and changes nothing. `validate_fits_ever` asks the question
at submit time without the ledger: could the job start at all, with everything else idle?
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mlp.scheduling.accounting import Accounts
from mlp.scheduling.model import (
    Blocker,
    Demand,
    Expansion,
    HolderKind,
    Pool,
    QuotaGroup,
    Scope,
    UnknownNameError,
)
from mlp.scheduling.resources import Resources, format_amount

__all__ = [
    "Request",
    "blocker",
    "borrowing_blockers",
    "cannot_borrow_blockers",
    "cap_blockers",
    "cohort_blockers",
    "evaluate",
    "evaluate_demand",
    "fits_own_quota",
    "own_idle",
    "pool_blockers",
    "promotion_blocker",
    "split_blockers",
    "validate_fits_ever",
]

_INF = math.inf


@dataclass(slots=True)
class Request:
    """One question to admission: `amount` for `user` of `group` in `pool`, as `kind`.

    ``start`` is the ledger's clock, ``now`` the time asked about (never before ``start``),
    ``end`` when the holder will have released at the latest (infinite for a server).
    """

    group: QuotaGroup
    pool: Pool
    user: str
    amount: Resources
    kind: HolderKind
    start: float
    now: float
    end: float


def blocker(
    scope: Scope,
    name: str,
    resource: str,
    requested: float,
    available: float,
    template: str,
    capacity: float,
) -> Blocker:
    """A blocker whose reason is `template` with ``{available}`` and ``{capacity}`` filled in."""
    reason = template.format(
        available=format_amount(resource, available), capacity=format_amount(resource, capacity)
    )
    if resource:
        reason += f"; needs {format_amount(resource, requested)}"
    return Blocker(reason, scope, name, resource, float(requested), float(available))


def evaluate(
    accounts: Accounts,
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
    """The borrowed part of `amount` and no blockers, or None and every blocker found."""
    group, pool = accounts.require_known(group_name, pool_name)
    if pool.requires_promotion and not promoted:
        return None, (promotion_blocker(pool, kind),)
    # the clock never runs backwards: a late caller is judged at the ledger's time
    now = max(now, accounts.now)
    end = _INF if runtime is None else now + runtime
    request = Request(group, pool, user, amount, kind, accounts.now, now, end)
    blockers = pool_blockers(accounts, request)
    blockers += cap_blockers(accounts, request)
    idle_own = own_idle(accounts, request)
    if forced_borrow is None:
        own_part = amount.min(idle_own)
        borrow = amount - own_part
    else:
        borrow = forced_borrow
        own_part = amount - borrow
        if not own_part.is_nonnegative() or not own_part.fits(idle_own):
            blockers += split_blockers(request, own_part, borrow, idle_own)
            return None, tuple(blockers)
    blockers += borrowing_blockers(accounts, request, own_part, borrow, idle_own)
    if blockers:
        return None, tuple(blockers)
    return borrow, ()


def evaluate_demand(
    accounts: Accounts, demand: Demand, now: float
) -> tuple[Resources | None, tuple[Blocker, ...]]:
    """`evaluate` for a pending job's whole gang."""
    return evaluate(
        accounts,
        demand.group,
        demand.user,
        demand.pool,
        demand.total,
        now,
        demand.max_runtime,
        "job",
        demand.promoted,
    )


def fits_own_quota(accounts: Accounts, demand: Demand, now: float) -> bool:
    """Cheap test: does the demand fit its group's own idle quota (no borrowing)?"""
    nominal = accounts.nominal(
        demand.group, demand.pool, accounts.now, max(now, accounts.now) + demand.max_runtime
    )
    return demand.total.fits_after(accounts.group_own_usage(demand.group, demand.pool), nominal)


def promotion_blocker(pool: Pool, kind: HolderKind) -> Blocker:
    """The production pool refuses anything an admin did not promote."""
    what = "notebook servers" if kind == "server" else "jobs not promoted by an admin"
    return Blocker(
        f"pool {pool.name!r} is for promoted production jobs; {what} cannot run there",
        "pool",
        pool.name,
        "",
        0.0,
        0.0,
    )


def pool_blockers(accounts: Accounts, request: Request) -> list[Blocker]:
    """The pool's free capacity, per resource the request exceeds."""
    pool, amount = request.pool, request.amount
    free = pool.capacity - accounts.pool_usage(pool.name)
    if amount.fits(free):
        return []
    return [
        blocker(
            "pool",
            pool.name,
            r,
            amount[r],
            max(free[r], 0),
            f"pool {pool.name!r} has {{available}} {r} free of {{capacity}}",
            pool.capacity[r],
        )
        for r in amount.exceeding(free)
    ]


def cap_blockers(accounts: Accounts, request: Request) -> list[Blocker]:
    """The user's personal cap in the group (usage summed over pools)."""
    group, user, amount = request.group, request.user, request.amount
    cap = group.cap_of(user)
    if cap is None:
        return []
    free = cap - accounts.user_usage(group.name, user)
    if amount.fits(free):
        return []
    return [
        blocker(
            "user",
            user,
            r,
            amount[r],
            max(free[r], 0),
            f"user {user!r} has {{available}} {r} left of a personal cap of "
            f"{{capacity}} in group {group.name!r}",
            cap[r],
        )
        for r in amount.exceeding(free)
    ]


def own_idle(accounts: Accounts, request: Request) -> Resources:
    """The group's own quota left idle, counting only expansions that outlast the request."""
    group, pool = request.group.name, request.pool.name
    nominal = accounts.nominal(group, pool, request.start, request.end)
    return (nominal - accounts.group_own_usage(group, pool)).clamp()


def split_blockers(
    request: Request, own_part: Resources, borrow: Resources, idle_own: Resources
) -> list[Blocker]:
    """Why a caller's own/borrowed split does not hold (own part over the idle quota)."""
    group, pool = request.group, request.pool.name
    return [
        blocker(
            "group",
            group.name,
            r,
            own_part[r],
            idle_own[r],
            f"group {group.name!r} has {{available}} {r} of its quota free "
            f"in pool {pool!r} (limit {{capacity}})",
            group.limit(pool)[r],
        )
        for r in sorted(set(own_part.exceeding(idle_own)) | set(borrow.exceeding(request.amount)))
    ]


def borrowing_blockers(
    accounts: Accounts,
    request: Request,
    own_part: Resources,
    borrow: Resources,
    idle_own: Resources,
) -> list[Blocker]:
    """Whether the group may borrow `borrow`, and may take `own_part` while it lends."""
    cohort = request.group.cohort
    if not borrow.is_zero() and (cohort is None or request.kind == "server"):
        return cannot_borrow_blockers(request, borrow, idle_own)
    if cohort is not None and (
        not borrow.is_zero() or not accounts.cohort_borrowed(cohort, request.pool.name).is_zero()
    ):
        # taking own quota shrinks what this group lends, so check the cohort either way
        return cohort_blockers(accounts, request, cohort, own_part, borrow, idle_own)
    return []


def cannot_borrow_blockers(
    request: Request, borrow: Resources, idle_own: Resources
) -> list[Blocker]:
    """A notebook server, or a group in no cohort, that lacks own quota."""
    group, pool = request.group, request.pool.name
    why = (
        "notebook servers are never preemptible, so they cannot borrow"
        if request.kind == "server"
        else "it is in no cohort, so it cannot borrow"
    )
    return [
        blocker(
            "group",
            group.name,
            r,
            request.amount[r],
            idle_own[r],
            f"group {group.name!r} has {{available}} {r} of its quota free in pool "
            f"{pool!r} (limit {{capacity}}) and {why}",
            group.limit(pool)[r],
        )
        for r in borrow.names()
    ]


def cohort_blockers(
    accounts: Accounts,
    request: Request,
    cohort: str,
    own_part: Resources,
    borrow: Resources,
    idle_own: Resources,
) -> list[Blocker]:
    """What the cohort can still lend once the group takes `own_part` of its own quota."""
    group, pool = request.group.name, request.pool.name
    supply = _supply_after(accounts, request, cohort, own_part)
    free = supply - accounts.cohort_borrowed(cohort, pool)
    if borrow.fits(free):
        return []
    blockers: list[Blocker] = []
    for r in borrow.exceeding(free):
        if borrow[r] > 0:
            reason = (
                f"group {group!r} has {format_amount(r, idle_own[r])} {r} of its quota "
                f"free in pool {pool!r}; cohort {cohort!r} can lend "
                f"{{available}} more of the {format_amount(r, borrow[r])} {r} it lacks"
            )
        else:
            reason = (
                f"quota of group {group!r} in pool {pool!r} is lent out "
                f"inside cohort {cohort!r}; borrowed jobs must be preempted first"
            )
        requested = borrow[r] if borrow[r] > 0 else own_part[r]
        blockers.append(blocker("cohort", cohort, r, requested, max(free[r], 0), reason, supply[r]))
    return blockers


def _supply_after(
    accounts: Accounts, request: Request, cohort: str, own_part: Resources
) -> Resources:
    """The cohort's lendable supply, less what the group stops lending by taking `own_part`."""
    group, pool = request.group, request.pool.name
    start, now = request.start, request.now
    supply = accounts.lendable_supply(cohort, pool, start, now)
    if own_part.is_zero() or group.lendable(pool).is_zero():
        return supply
    own = accounts.group_own_usage(group.name, pool) + own_part
    return (
        supply
        - accounts.offer(group.name, pool, start, now)
        + accounts.offer(group.name, pool, start, now, own=own)
    )


def validate_fits_ever(
    demand: Demand,
    groups: Mapping[str, QuotaGroup],
    pools: Mapping[str, Pool],
    expansions: Iterable[Expansion] = (),
) -> list[Blocker]:
    """Blockers for a job larger than anything its group could ever get; empty if it may fit.

    "Ever" means with everything else idle: the pool's capacity, the group's permanent limit
    plus the most its cohort may lend it plus the expansions granted to it that last beyond
    the job's submission, and the user's personal cap. Checked at submit so an impossible
    job is refused with the numbers instead of waiting forever.
    """
    if demand.group not in groups:
        raise UnknownNameError(
            f"job {demand.id!r}: unknown group {demand.group!r}; "
            f"groups are {', '.join(sorted(groups))}"
        )
    if demand.pool not in pools:
        raise UnknownNameError(
            f"job {demand.id!r}: unknown pool {demand.pool!r}; pools are {', '.join(sorted(pools))}"
        )
    group = groups[demand.group]
    pool = pools[demand.pool]
    total = demand.total
    blockers: list[Blocker] = []
    if pool.requires_promotion and not demand.promoted:
        blockers.append(
            Blocker(
                f"pool {pool.name!r} runs only jobs an admin promoted to production",
                "pool",
                pool.name,
                "",
                0.0,
                0.0,
            )
        )
    blockers += _never_fits(
        total, "pool", pool.name, pool.capacity, f"the capacity of pool {pool.name!r}"
    )
    blockers += _never_fits(
        total,
        "group",
        group.name,
        _most_ever(demand, groups, expansions),
        f"the most group {group.name!r} can get in pool {demand.pool!r} "
        "(limit + expansions + what its cohort may lend)",
    )
    cap = group.cap_of(demand.user)
    if cap is not None:
        blockers += _never_fits(
            total, "user", demand.user, cap, f"the personal cap of {demand.user!r}"
        )
    return blockers


def _most_ever(
    demand: Demand, groups: Mapping[str, QuotaGroup], expansions: Iterable[Expansion]
) -> Resources:
    """The group's limit, its expansions that outlast the job, and all its cohort may lend."""
    group = groups[demand.group]
    reach = group.limit(demand.pool)
    for expansion in expansions:
        if (
            expansion.group == demand.group
            and expansion.pool == demand.pool
            and expansion.expiry > demand.submitted_at + demand.max_runtime
        ):
            reach = reach + expansion.amount
    if group.cohort is not None:
        for other in groups.values():
            if other.cohort == group.cohort and other.name != group.name:
                reach = reach + other.lendable(demand.pool).min(other.limit(demand.pool))
    return reach


def _never_fits(
    total: Resources, scope: Scope, name: str, limit: Resources, what: str
) -> list[Blocker]:
    return [
        Blocker(
            f"job needs {format_amount(r, total[r])} {r} but {what} is "
            f"{format_amount(r, limit[r])}; it could never start",
            scope,
            name,
            r,
            float(total[r]),
            float(limit[r]),
        )
        for r in total.exceeding(limit)
    ]
