"""The scheduling pass: which pending jobs start now, in score order, gang by gang.

`QueueScheduler` keeps the pending queue sorted by a clock-free key (see `mlp.scheduling.score`)
and runs `schedule(now)` against the one `Ledger`:

1. ``ledger.advance(now)``: expansions end; jobs preempted to restore limits go to
   ``Plan.preempt``.
2. Walk the queue in score order. A job whose whole gang fits is reserved at once.
3. The first job blocked in a scope (its pool, its group in that pool, its cohort in that pool
   for borrowing, or its user's personal cap) becomes that scope's *head*. The head's *shadow
   time* is the earliest time the releases of running holders in that scope (each at its
   admission + max runtime) cover what the head lacks. **Backfill rule (EASY):** a later job in
   a closed scope may start only if it ends (now + its max runtime) by the head's shadow time,
   so it never delays the head. Every other later job in the scope waits.
4. A lender whose own job is blocked only because its quota is lent out gets it back:
   `Ledger.plan_reclaim` picks the borrowed jobs to preempt, the job is admitted, and the
   victims go to ``Plan.preempt`` for the service to stop and requeue.

Within a pass availability only shrinks, so a job is skipped without a ledger check when a
closed scope already lacks more than it asks for; a pass over 10,000 pending jobs thus costs
little more than a walk over a list.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from mlp.scheduling.admission import validate_fits_ever
from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import Blocker, Demand, Holder, Preemption, UnknownNameError
from mlp.scheduling.resources import Resources
from mlp.scheduling.score import ScoreContext, ScorePolicy

# `validate_fits_ever` (the submit-time check) lives with admission; it is re-exported here
__all__ = ["Explanation", "Plan", "QueueScheduler", "schedule", "validate_fits_ever"]

_ScopeKey = tuple[str, ...]


@dataclass(frozen=True)
class Explanation:
    """Why a job is where it is: its score, the parts of it, and what blocks it."""

    position: int | None
    score: float
    score_parts: dict[str, float]
    blocking: tuple[Blocker, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "position": self.position,
            "score": self.score,
            "score_parts": dict(self.score_parts),
            "blocking": [b.to_dict() for b in self.blocking],
        }


@dataclass
class _Entry:
    demand: Demand
    key: float
    sort_key: tuple[float, float, str]
    scopes: tuple[_ScopeKey, _ScopeKey, _ScopeKey]
    cohort_scope: _ScopeKey | None
    context: ScoreContext
    units: Mapping[str, int]  # the demand's total in smallest units, for the pass's gate


@dataclass
class _Closed:
    """A scope closed by its blocked head during one pass."""

    head: str
    shadow: float
    lacking: tuple[tuple[str, int], ...]  # (resource, available units) when the head was checked
    blocking: tuple[Blocker, ...]


@dataclass
class Plan:
    """The outcome of one pass. The ledger already holds ``admitted``; ``preempt`` is released.

    ``admitted`` pairs a job id with the part of it that is borrowed (preemptible when
    non-zero). ``positions`` (0 = next) and ``explanations`` cover every job still pending and
    are computed on first access.
    """

    now: float
    admitted: list[tuple[str, Resources]] = field(default_factory=list)
    preempt: list[Preemption] = field(default_factory=list)
    _scheduler: QueueScheduler | None = field(default=None, repr=False)
    _waiting: dict[str, _Closed] = field(default_factory=dict, repr=False)
    _checked: dict[str, tuple[Blocker, ...]] = field(default_factory=dict, repr=False)
    _positions: dict[str, int] | None = field(default=None, repr=False)

    @property
    def positions(self) -> Mapping[str, int]:
        if self._positions is None:
            order = self._scheduler.pending_ids() if self._scheduler else []
            self._positions = {demand_id: i for i, demand_id in enumerate(order)}
        return self._positions

    @property
    def explanations(self) -> Mapping[str, Explanation]:
        return _Explanations(self)

    def explain(self, demand_id: str) -> Explanation:
        if self._scheduler is None:
            raise UnknownNameError(f"unknown pending job {demand_id!r}")
        entry = self._scheduler.entry(demand_id)
        score, parts = self._scheduler.policy.score(entry.demand, self.now, entry.context)
        blocking = self._checked.get(demand_id)
        if blocking is None:
            closed = self._waiting.get(demand_id)
            blocking = _behind(closed) if closed is not None else ()
        return Explanation(self.positions.get(demand_id), score, parts, blocking)


class _Explanations(Mapping[str, Explanation]):
    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def __getitem__(self, demand_id: str) -> Explanation:
        if demand_id not in self._plan.positions:
            raise KeyError(demand_id)
        return self._plan.explain(demand_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._plan.positions)

    def __len__(self) -> int:
        return len(self._plan.positions)


def _behind(closed: _Closed) -> tuple[Blocker, ...]:
    shadow = "an unknown time" if math.isinf(closed.shadow) else f"t={closed.shadow:.0f}"
    first = closed.blocking[0] if closed.blocking else None
    scope = first.scope if first else "pool"
    name = first.name if first else ""
    note = Blocker(
        f"waits behind higher-scored job {closed.head!r}, which is blocked in {scope} "
        f"{name!r}; only jobs that end by {shadow} may start before it (backfill)",
        scope,
        name,
        "",
        0.0,
        0.0,
    )
    return (note, *closed.blocking)


class QueueScheduler:
    """The pending queue and the scheduling pass over one ledger (single writer)."""

    def __init__(
        self,
        ledger: Ledger,
        policy: ScorePolicy | None = None,
        *,
        backfill: bool = True,
        reclaim: bool = True,
    ) -> None:
        self.ledger = ledger
        self.policy = policy if policy is not None else ScorePolicy()
        self.backfill = backfill
        self.reclaim = reclaim
        self._entries: dict[str, _Entry] = {}
        self._order: list[tuple[float, float, str]] = []

    # -- queue -------------------------------------------------------------------------------
    def context_for(self, demand: Demand) -> ScoreContext:
        group = self.ledger.groups.get(demand.group)
        pool = self.ledger.pools.get(demand.pool)
        if group is None or pool is None:
            raise UnknownNameError(
                f"job {demand.id!r}: unknown "
                + (f"group {demand.group!r}" if group is None else f"pool {demand.pool!r}")
            )
        return ScoreContext(pool.capacity, pool.priority, group.limit(demand.pool))

    def submit(self, demand: Demand) -> None:
        """Queue a job. Refuses unknown names and duplicate ids; see `validate_fits_ever`."""
        if demand.id in self._entries:
            raise ValueError(f"job {demand.id!r} is already queued")
        context = self.context_for(demand)
        key = self.policy.order_key(demand, context)
        sort_key = (-key, demand.submitted_at, demand.id)
        cohort = self.ledger.groups[demand.group].cohort
        entry = _Entry(
            demand=demand,
            key=key,
            sort_key=sort_key,
            scopes=(
                ("pool", demand.pool),
                ("group", demand.group, demand.pool),
                ("user", demand.group, demand.user),
            ),
            cohort_scope=("cohort", cohort, demand.pool) if cohort is not None else None,
            context=context,
            units=demand.total.unit_map(),
        )
        self._entries[demand.id] = entry
        bisect.insort(self._order, sort_key)

    def remove(self, demand_id: str) -> Demand:
        """Take a job out of the queue (cancelled, or admitted elsewhere)."""
        try:
            entry = self._entries.pop(demand_id)
        except KeyError:
            raise UnknownNameError(f"unknown pending job {demand_id!r}") from None
        index = bisect.bisect_left(self._order, entry.sort_key)
        del self._order[index]
        return entry.demand

    def rescore(self) -> None:
        """Recompute every key, after the policy's weights or groups' quotas changed."""
        demands = [self._entries[k[2]].demand for k in self._order]
        self._entries.clear()
        self._order.clear()
        for demand in demands:
            self.submit(demand)

    def entry(self, demand_id: str) -> _Entry:
        try:
            return self._entries[demand_id]
        except KeyError:
            raise UnknownNameError(f"unknown pending job {demand_id!r}") from None

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, demand_id: object) -> bool:
        return demand_id in self._entries

    def pending_ids(self) -> list[str]:
        return [k[2] for k in self._order]

    def pending(self) -> list[Demand]:
        return [self._entries[k[2]].demand for k in self._order]

    def explain_pending(self, demand_id: str, now: float) -> Explanation:
        """Score, position and current blockers of one queued job, without scheduling."""
        entry = self.entry(demand_id)
        score, parts = self.policy.score(entry.demand, now, entry.context)
        index = bisect.bisect_left(self._order, entry.sort_key)
        decision = self.ledger.check(entry.demand, now)
        return Explanation(index, score, parts, decision.blocking)

    # -- the pass ----------------------------------------------------------------------------
    def schedule(self, now: float) -> Plan:
        """Admit what fits now; see the module docstring for the rules."""
        ledger = self.ledger
        plan = Plan(now=now, _scheduler=self)
        plan.preempt.extend(ledger.advance(now))
        closed: dict[_ScopeKey, _Closed] = {}
        admitted_ids: list[str] = []
        backfill = self.backfill
        for sort_key in list(self._order):
            entry = self._entries[sort_key[2]]
            demand = entry.demand
            if closed and self._gate(entry, closed, now, backfill, plan):
                continue
            decision = ledger.check(demand, now)
            borrowed = decision.borrowed
            if decision.admit and borrowed is not None:
                cohort_head = closed.get(entry.cohort_scope) if entry.cohort_scope else None
                if (
                    cohort_head is not None
                    and not borrowed.is_zero()
                    and not (backfill and now + demand.max_runtime <= cohort_head.shadow)
                ):
                    plan._waiting[demand.id] = cohort_head
                    continue
                self._admit(demand, borrowed, now)
                plan.admitted.append((demand.id, borrowed))
                admitted_ids.append(demand.id)
                continue
            if self.reclaim and self._try_reclaim(demand, now, plan, admitted_ids):
                admitted_ids.append(demand.id)
                continue
            plan._checked[demand.id] = decision.blocking
            self._close(entry, decision.blocking, closed, now)
        for demand_id in admitted_ids:
            self.remove(demand_id)
        return plan

    def _gate(
        self,
        entry: _Entry,
        closed: dict[_ScopeKey, _Closed],
        now: float,
        backfill: bool,
        plan: Plan,
    ) -> bool:
        """True when a closed scope makes this job wait (recorded for its explanation)."""
        demand = entry.demand
        end = now + demand.max_runtime
        units = entry.units
        for scope in entry.scopes:
            head = closed.get(scope)
            if head is None:
                continue
            # availability only shrinks during a pass: more than the head found free never fits
            if (
                not backfill
                or end > head.shadow
                or any(units.get(r, 0) > available for r, available in head.lacking)
            ):
                plan._waiting[demand.id] = head
                return True
        # a job that must borrow waits behind a blocked borrower of its cohort; asking the
        # ledger whether it fits its own quota is much cheaper than a full check
        if entry.cohort_scope is not None:
            head = closed.get(entry.cohort_scope)
            if (
                head is not None
                and (not backfill or end > head.shadow)
                and not self.ledger.fits_own_quota(demand, now)
            ):
                plan._waiting[demand.id] = head
                return True
        return False

    def _close(
        self,
        entry: _Entry,
        blocking: tuple[Blocker, ...],
        closed: dict[_ScopeKey, _Closed],
        now: float,
    ) -> None:
        demand = entry.demand
        by_scope: dict[_ScopeKey, list[Blocker]] = {}
        for blocker in blocking:
            if blocker.scope == "pool":
                scope: _ScopeKey = ("pool", demand.pool)
            elif blocker.scope == "group":
                scope = ("group", demand.group, demand.pool)
            elif blocker.scope == "user":
                scope = ("user", demand.group, demand.user)
            else:
                scope = ("cohort", blocker.name, demand.pool)
            by_scope.setdefault(scope, []).append(blocker)
        for scope, blockers in by_scope.items():
            if scope in closed:
                continue
            lacking = tuple(
                (b.resource, round(b.available * (1000 if b.resource == "cpu" else 1)))
                for b in blockers
                if b.resource
            )
            if not lacking:  # a rule, not an amount (e.g. production without promotion)
                continue
            shortfall = Resources(
                {b.resource: max(0.0, b.requested - b.available) for b in blockers if b.resource}
            )
            closed[scope] = _Closed(
                head=demand.id,
                shadow=self._shadow_time(scope, shortfall, now),
                lacking=lacking,
                blocking=tuple(blockers),
            )

    def _holders_of(self, scope: _ScopeKey) -> Iterable[Holder]:
        ledger = self.ledger
        kind = scope[0]
        if kind == "pool":
            return (h for g in ledger.groups for h in ledger.holders_in(g, scope[1]))
        if kind == "group":
            return ledger.holders_in(scope[1], scope[2])
        if kind == "cohort":
            return (
                h for g in ledger.cohort_members(scope[1]) for h in ledger.holders_in(g, scope[2])
            )
        return (
            h for p in ledger.pools for h in ledger.holders_in(scope[1], p) if h.user == scope[2]
        )

    def _shadow_time(self, scope: _ScopeKey, shortfall: Resources, now: float) -> float:
        """When releases of running holders in `scope` will have covered `shortfall`.

        Each holder is assumed to release at its admission + max runtime (the service stops
        jobs there); servers never do. Infinite when no known release covers it.
        """
        if shortfall.is_zero():
            return now
        releases = sorted(
            ((h.until, h.amount) for h in self._holders_of(scope) if h.until is not None),
            key=lambda release: release[0],
        )
        freed = Resources.zero()
        for until, amount in releases:
            freed = freed + amount
            if shortfall.fits(freed):
                return max(until, now)
        return math.inf

    def _admit(self, demand: Demand, borrowed: Resources, now: float) -> None:
        self.ledger.reserve(
            demand.id,
            demand.user,
            demand.group,
            demand.pool,
            demand.total,
            borrowed=borrowed,
            now=now,
            priority=demand.priority,
            max_runtime=demand.max_runtime,
            promoted=demand.promoted,
        )

    def _try_reclaim(self, demand: Demand, now: float, plan: Plan, admitted_ids: list[str]) -> bool:
        victims = self.ledger.plan_reclaim(demand, now)
        if not victims:
            return False
        for victim in victims:
            self.ledger.release(victim.holder_id)
        # a victim admitted earlier in this very pass never started: it just stays queued
        started_now = {v.holder_id for v in victims} & set(admitted_ids)
        if started_now:
            admitted_ids[:] = [i for i in admitted_ids if i not in started_now]
            plan.admitted[:] = [a for a in plan.admitted if a[0] not in started_now]
            victims = [v for v in victims if v.holder_id not in started_now]
        decision = self.ledger.check(demand, now)
        if not decision.admit or decision.borrowed is None:  # pragma: no cover - plan guarantees
            raise AssertionError(f"reclaim for {demand.id!r} did not make room")
        self._admit(demand, decision.borrowed, now)
        plan.preempt.extend(victims)
        plan.admitted.append((demand.id, decision.borrowed))
        return True


def schedule(
    pending: Iterable[Demand],
    ledger: Ledger,
    now: float,
    policy: ScorePolicy | None = None,
    *,
    backfill: bool = True,
) -> Plan:
    """One pass over `pending` without keeping a queue (the service keeps a QueueScheduler)."""
    scheduler = QueueScheduler(ledger, policy, backfill=backfill)
    for demand in pending:
        scheduler.submit(demand)
    return scheduler.schedule(now)
