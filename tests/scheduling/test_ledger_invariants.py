"""Random operation sequences never break a limit: a hypothesis state machine over the ledger.

Operations: reserve jobs and servers, release, grant and revoke expansions, advance time
(jobs past their max runtime are stopped, as the service does, then `advance` repairs),
reclaim lent quota, change a group's limits, run a scheduling pass, and restart (rebuild the
ledger from its holders, as the service does from its store). After every step the ledger must
report no violation, its aggregates must equal a recount from its holders, and no GPU device
may be held twice while the held devices are exactly the gpus reserved.
"""

import random

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from quota_fixtures import groups, pools, r

from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import Demand, Expansion, QuotaExceeded, QuotaGroup
from mlp.scheduling.resources import Resources
from mlp.scheduling.scheduler import QueueScheduler

GROUPS = ["ads", "rec", "search", "solo"]
USERS = ["ann", "bob", "boss"]
POOLS = ["default", "production"]

amounts = st.builds(
    r,
    cpu=st.integers(0, 10),
    mem_gi=st.integers(0, 40),
    gpu=st.integers(0, 3),
)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(pools(), groups())
        self.scheduler = QueueScheduler(self.ledger)
        self.now = 0.0
        self.count = 0
        self.expansion_ids: list[str] = []

    def _next_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    @rule(
        group=st.sampled_from(GROUPS),
        user=st.sampled_from(USERS),
        pool=st.sampled_from(POOLS),
        amount=amounts,
        runtime=st.integers(1, 300),
        priority=st.integers(0, 3),
        server=st.booleans(),
    )
    def reserve(
        self,
        group: str,
        user: str,
        pool: str,
        amount: Resources,
        runtime: int,
        priority: int,
        server: bool,
    ) -> None:
        try:
            self.ledger.reserve(
                self._next_id("h"),
                user,
                group,
                pool,
                amount,
                kind="server" if server else "job",
                now=self.now,
                priority=priority,
                max_runtime=runtime,
                promoted=True,
            )
        except QuotaExceeded as error:
            assert error.blocking

    @precondition(lambda self: any(True for _ in self.ledger.holders()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ids = sorted(h.id for h in self.ledger.holders())
        self.ledger.release(data.draw(st.sampled_from(ids)))

    @rule(
        group=st.sampled_from(GROUPS),
        pool=st.sampled_from(POOLS),
        amount=amounts,
        offset=st.integers(-20, 50),
        duration=st.integers(1, 300),
    )
    def expand(self, group: str, pool: str, amount: Resources, offset: int, duration: int) -> None:
        expansion = Expansion(
            self._next_id("e"),
            group,
            pool,
            amount,
            start=self.now + offset,
            expiry=self.now + offset + duration,
            reason="test",
            granted_by="admin",
        )
        self.ledger.add_expansion(expansion)
        self.expansion_ids.append(expansion.id)

    @precondition(lambda self: bool(self.ledger.expansions))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        self.ledger.revoke_expansion(data.draw(st.sampled_from(sorted(self.ledger.expansions))))

    @rule(dt=st.integers(1, 200))
    def advance(self, dt: int) -> None:
        self.now += dt
        # the service stops jobs at their max runtime; the ledger then repairs what remains
        for holder in list(self.ledger.holders()):
            if holder.until is not None and holder.until <= self.now:
                self.ledger.release(holder.id)
        for preemption in self.ledger.advance(self.now):
            assert preemption.holder_id not in self.ledger
            event("advance preempted a job")

    @rule(group=st.sampled_from(["ads", "rec", "search"]), amount=amounts)
    def reclaim(self, group: str, amount: Resources) -> None:
        if amount.is_zero():
            return
        demand = Demand(self._next_id("d"), "boss", group, "default", (amount,))
        before = {h.id: h for h in self.ledger.holders()}
        plan = self.ledger.plan_reclaim(demand, self.now)
        if plan is None:
            return
        if plan:
            event("reclaim preempted borrowed jobs")
        for preemption in plan:
            assert before[preemption.holder_id].preemptible
            assert before[preemption.holder_id].group != group
            self.ledger.release(preemption.holder_id)
        decision = self.ledger.check(demand, self.now)
        assert decision.admit
        if plan:  # quota came back to its owner: the demand runs on its own quota
            assert decision.borrowed == Resources.zero()
        self.ledger.reserve(
            demand.id,
            "boss",
            group,
            "default",
            demand.total,
            borrowed=decision.borrowed,
            now=self.now,
        )

    @rule(group=st.sampled_from(GROUPS), limit=amounts, lend=amounts)
    def change_group(self, group: str, limit: Resources, lend: Resources) -> None:
        old = self.ledger.groups[group]
        new = QuotaGroup(
            group,
            cohort=old.cohort,
            limits={"default": limit, "production": limit},
            member_cap=old.member_cap,
            member_caps=old.member_caps,
            lend_limit={"default": lend},
        )
        try:
            if self.ledger.set_group(new):
                event("quota change preempted a job")
        except ValueError as error:
            assert "notebook servers" in str(error)

    @rule(
        group=st.sampled_from(GROUPS),
        user=st.sampled_from(USERS),
        pool=st.sampled_from(POOLS),
        tasks=st.lists(amounts, min_size=1, max_size=3),
        runtime=st.integers(1, 300),
        priority=st.integers(0, 3),
    )
    def submit(
        self,
        group: str,
        user: str,
        pool: str,
        tasks: list[Resources],
        runtime: int,
        priority: int,
    ) -> None:
        if sum(tasks, Resources.zero()).is_zero():
            return
        demand = Demand(
            self._next_id("q"),
            user,
            group,
            pool,
            tuple(tasks),
            priority=priority,
            max_runtime=runtime,
            submitted_at=self.now,
            promoted=pool == "production",
        )
        self.scheduler.submit(demand)

    @rule()
    def schedule(self) -> None:
        plan = self.scheduler.schedule(self.now)
        preempted = {p.holder_id for p in plan.preempt}
        if any(borrowed for _, borrowed in plan.admitted):
            event("schedule admitted a borrowing job")
        if preempted:
            event("schedule preempted")
        for demand_id, _ in plan.admitted:
            assert demand_id in self.ledger and demand_id not in preempted
            assert demand_id not in self.scheduler
        for demand_id in preempted:
            assert demand_id not in self.ledger

    @rule(seed=st.randoms(use_true_random=False))
    def restart(self, seed: random.Random) -> None:
        held = list(self.ledger.holders())
        before = {h.id: h.devices for h in held}
        seed.shuffle(held)  # the store returns rows in any order
        self.ledger = Ledger.from_holders(
            self.ledger.pools.values(),
            self.ledger.groups.values(),
            self.ledger.expansions.values(),
            held,
            now=self.now,
        )
        assert self.ledger.advance(self.now) == []
        assert {h.id: h.devices for h in self.ledger.holders()} == before
        pending = self.scheduler.pending()
        self.scheduler = QueueScheduler(self.ledger)
        for demand in pending:
            self.scheduler.submit(demand)

    @invariant()
    def devices_held_once(self) -> None:
        for pool, declared in ((p.name, p.device_ids) for p in self.ledger.pools.values()):
            held = [d for h in self.ledger.holders() if h.pool == pool for d in h.devices]
            assert len(held) == len(set(held)), f"a device of {pool} is held twice: {held}"
            assert set(held) <= set(declared)
            assert len(held) == self.ledger.pool_usage(pool).gpu
            assert sorted(held) == sorted(self.ledger.device_owners(pool))
            assert sorted(self.ledger.free_devices(pool) + held) == sorted(declared)
        for h in self.ledger.holders():
            assert len(h.devices) == h.amount.gpu, h

    @invariant()
    def limits_hold(self) -> None:
        assert self.ledger.violations() == []

    @invariant()
    def aggregates_match_holders(self) -> None:
        pool_used: dict[str, Resources] = {}
        group_used: dict[tuple[str, str], Resources] = {}
        for h in self.ledger.holders():
            pool_used[h.pool] = pool_used.get(h.pool, Resources.zero()) + h.amount
            key = (h.group, h.pool)
            group_used[key] = group_used.get(key, Resources.zero()) + h.amount
            assert h.borrowed.fits(h.amount)
            assert h.kind == "job" or h.borrowed.is_zero()
        for pool in POOLS:
            assert self.ledger.pool_usage(pool) == pool_used.get(pool, Resources.zero())
            for group in GROUPS:
                assert self.ledger.group_usage(group, pool) == group_used.get(
                    (group, pool), Resources.zero()
                )
                assert self.ledger.lent_out(group, pool).fits(
                    self.ledger.groups[group].lendable(pool)
                )


LedgerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerInvariants = LedgerMachine.TestCase
