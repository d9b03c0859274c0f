"""The ledger's rules, one test per rule, and the bad input issue 4 lists for the core."""

from collections.abc import Callable

import pytest
from quota_fixtures import groups, pools, r

from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import (
    Demand,
    Expansion,
    Holder,
    Pool,
    QuotaExceeded,
    QuotaGroup,
    UnknownNameError,
)
from mlp.scheduling.resources import Resources

MakeDemand = Callable[..., Demand]


def test_own_quota_first_then_borrow_inside_cohort(
    cluster: Ledger, make_demand: MakeDemand
) -> None:
    d = make_demand(tasks=[r(6, 8)])
    decision = cluster.check(d, now=0)
    assert decision.admit and decision.borrowed == Resources.zero()
    cluster.reserve("a1", "ann", "ads", "default", d.total, now=0)
    # ads has 2 cpu of its own left; 4 more must come from rec/search idle quota
    d2 = make_demand(user="bob", tasks=[r(3, 4), r(3, 4)])
    decision = cluster.check(d2, now=0)
    assert decision.admit
    assert decision.borrowed == r(4)
    holder = cluster.reserve(
        "a2", "bob", "ads", "default", d2.total, borrowed=decision.borrowed, now=0
    )
    assert holder.preemptible
    assert cluster.group_borrowed("ads", "default") == r(4)
    assert cluster.violations() == []
    # rec lends first in name order (ads has nothing idle in cpu)
    assert cluster.lent_out("rec", "default") == r(4)


def test_group_without_cohort_cannot_borrow(cluster: Ledger, make_demand: MakeDemand) -> None:
    decision = cluster.check(make_demand(group="solo", tasks=[r(5, 4)]), now=0)
    assert not decision.admit
    (blocker,) = decision.blocking
    assert (blocker.scope, blocker.name, blocker.resource) == ("group", "solo", "cpu")
    assert (blocker.requested, blocker.available) == (5.0, 4.0)
    assert "no cohort" in blocker.reason and "needs 5" in blocker.reason


def test_lend_limit_bounds_borrowing(cluster: Ledger, make_demand: MakeDemand) -> None:
    # search may borrow at most rec's 8 + ads' 4 cpu
    d = make_demand(group="search", user="sue", tasks=[r(16, 8)])
    assert cluster.check(d, now=0).admit
    d = make_demand(group="search", user="sue", tasks=[r(17, 8)])
    decision = cluster.check(d, now=0)
    assert not decision.admit
    blocker = decision.blocking[0]
    assert (blocker.scope, blocker.name, blocker.resource) == ("cohort", "ml", "cpu")
    assert blocker.available == 12.0 and blocker.requested == 13.0


def test_pool_capacity_blocks(cluster: Ledger, make_demand: MakeDemand) -> None:
    big = Ledger([Pool("default", r(4, 64, 0)), *pools()[1:]], groups())
    decision = big.check(make_demand(tasks=[r(5, 4)]), now=0)
    assert (decision.blocking[0].scope, decision.blocking[0].resource) == ("pool", "cpu")


def test_personal_cap_and_override(cluster: Ledger, make_demand: MakeDemand) -> None:
    decision = cluster.check(make_demand(user="ann", tasks=[r(7, 4)]), now=0)
    assert [(b.scope, b.name) for b in decision.blocking] == [("user", "ann")]
    assert "personal cap of 6" in decision.blocking[0].reason
    assert cluster.check(make_demand(user="boss", tasks=[r(7, 4)]), now=0).admit


def test_personal_cap_sums_over_pools(cluster: Ledger) -> None:
    cluster.reserve("p1", "ann", "ads", "production", r(4, 4), now=0, promoted=True)
    with pytest.raises(QuotaExceeded, match="personal cap"):
        cluster.reserve("d1", "ann", "ads", "default", r(3, 4), now=0)


def test_production_needs_promotion(cluster: Ledger, make_demand: MakeDemand) -> None:
    decision = cluster.check(make_demand(pool="production"), now=0)
    assert not decision.admit and decision.blocking[0].scope == "pool"
    assert "promoted" in decision.blocking[0].reason
    assert cluster.check(make_demand(pool="production", promoted=True), now=0).admit
    with pytest.raises(QuotaExceeded, match="notebook servers"):
        cluster.reserve("s", "ann", "ads", "production", r(1, 1), kind="server", now=0)


def test_servers_share_limits_but_never_borrow(cluster: Ledger, make_demand: MakeDemand) -> None:
    cluster.reserve("s1", "ann", "ads", "default", r(4, 8), kind="server", now=0)
    assert cluster.group_usage("ads", "default") == r(4, 8)
    with pytest.raises(QuotaExceeded, match="never preemptible"):
        cluster.reserve("s2", "boss", "ads", "default", r(5, 8), kind="server", now=0)
    assert not cluster.holder("s1").preemptible
    decision = cluster.check(make_demand(user="bob", tasks=[r(5, 4)]), now=0)
    assert decision.admit and decision.borrowed == r(1)


def test_release_and_unknown_holder(cluster: Ledger) -> None:
    cluster.reserve("a", "ann", "ads", "default", r(2, 2), now=0)
    cluster.release("a")
    assert cluster.group_usage("ads", "default").is_zero()
    with pytest.raises(UnknownNameError, match="unknown holder 'a'"):
        cluster.release("a")
    with pytest.raises(ValueError, match="already holds"):
        cluster.reserve("b", "ann", "ads", "default", r(1), now=0)
        cluster.reserve("b", "ann", "ads", "default", r(1), now=0)


def test_unknown_group_and_pool(cluster: Ledger, make_demand: MakeDemand) -> None:
    with pytest.raises(UnknownNameError, match="unknown group 'nope'; groups are ads"):
        cluster.check(make_demand(group="nope"), now=0)
    with pytest.raises(UnknownNameError, match="unknown pool 'gpu'; pools are default"):
        cluster.check(make_demand(pool="gpu"), now=0)
    with pytest.raises(UnknownNameError, match="unknown pool 'gpu'"):
        Ledger(pools(), [QuotaGroup("x", limits={"gpu": r(1)})])
    with pytest.raises(UnknownNameError):
        cluster.add_expansion(Expansion("e", "nope", "default", r(1), 0, 10))


@pytest.mark.parametrize(
    "build",
    [
        lambda: QuotaGroup("x", limits={"default": Resources(cpu=-1)}),
        lambda: QuotaGroup("x", limits={"default": "4"}),  # type: ignore[dict-item]
        lambda: QuotaGroup("x", member_cap=Resources(gpu=-1)),
        lambda: QuotaGroup(""),
        lambda: Pool("p", Resources(memory=-5)),
        lambda: Expansion("e", "ads", "default", r(1), start=100, expiry=50),
        lambda: Expansion("e", "ads", "default", r(1), start=100, expiry=100),
        lambda: Expansion("e", "ads", "default", Resources(cpu=-2), start=0, expiry=10),
        lambda: Expansion("e", "ads", "default", r(1), start=float("nan"), expiry=10),
        lambda: Demand("d", "u", "g", "p", tasks=()),
        lambda: Demand("d", "u", "g", "p", tasks=(Resources(cpu=-1),)),
        lambda: Demand("d", "u", "g", "p", tasks=(r(1),), max_runtime=0),
        lambda: Demand("d", "u", "g", "p", tasks=(Resources(),)),
    ],
)
def test_bad_quota_input_is_refused(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_expansion_error_names_the_numbers() -> None:
    with pytest.raises(ValueError, match="expiry 50 must be after start 100"):
        Expansion("e", "ads", "default", r(1), start=100, expiry=50)


def test_expansion_is_active_only_in_its_window(cluster: Ledger, make_demand: MakeDemand) -> None:
    cluster.add_expansion(Expansion("e1", "solo", "default", r(4, 16), start=100, expiry=1000))
    job = make_demand(group="solo", tasks=[r(8, 8)], max_runtime=100)
    assert not cluster.check(job, now=50).admit  # not started yet
    cluster.advance(100)
    assert cluster.check(job, now=100).admit
    # a job that would outlive the expansion may not use it
    long_job = make_demand(group="solo", tasks=[r(8, 8)], max_runtime=5000)
    assert not cluster.check(long_job, now=100).admit
    cluster.advance(1000)
    assert "e1" not in cluster.expansions
    assert not cluster.check(job, now=1000).admit


def test_expansion_end_preempts_nothing_when_jobs_respect_runtime(cluster: Ledger) -> None:
    cluster.add_expansion(Expansion("e1", "solo", "default", r(4), start=0, expiry=100))
    cluster.reserve("j", "ann", "solo", "default", r(8), now=0, max_runtime=50)
    cluster.release("j")
    assert cluster.advance(100) == []


def test_revoked_expansion_preempts_youngest_lowest_priority(cluster: Ledger) -> None:
    cluster.add_expansion(Expansion("e1", "solo", "default", r(4), start=0, expiry=10**6))
    cluster.reserve("old", "ann", "solo", "default", r(4), now=0, priority=1)
    cluster.reserve("young", "ann", "solo", "default", r(2), now=5, priority=1)
    cluster.reserve("low", "ann", "solo", "default", r(2), now=1, priority=0)
    preempted = cluster.revoke_expansion("e1")
    assert [p.holder_id for p in preempted] == ["low", "young"]
    assert cluster.violations() == []


def test_reclaim_preempts_only_borrowed_jobs_minimal_set(
    cluster: Ledger, make_demand: MakeDemand
) -> None:
    # rec borrows ads' idle quota (ads lends up to 4 cpu)
    cluster.reserve("rec-own", "rob", "rec", "default", r(8, 8), now=0)
    cluster.reserve("rec-b1", "rob", "rec", "default", r(2, 2), now=1, priority=5)
    cluster.reserve("rec-b2", "rob", "rec", "default", r(2, 2), now=2, priority=5)
    cluster.reserve("rec-b3", "rob", "rec", "default", r(2, 2), now=3, priority=9)
    assert cluster.group_borrowed("rec", "default") == r(6)  # memory fits its own quota
    # ads wants all 8 of its own cpu back: idle 8, lendable min(4, 8)=4 (+search's 2)
    demand = make_demand(group="ads", user="boss", tasks=[r(8, 8)])
    decision = cluster.check(demand, now=10)
    assert not decision.admit and decision.blocking[0].scope == "cohort"
    assert "lent out" in decision.blocking[0].reason
    plan = cluster.plan_reclaim(demand, now=10)
    assert plan is not None
    # borrowed 6 cpu, supply after ads takes 8 is search's 2: preempt 4 cpu, youngest first
    # among the lowest priority (b2 then b1), never the priority-9 job or rec's own job
    assert [p.holder_id for p in plan] == ["rec-b2", "rec-b1"]
    for p in plan:
        cluster.release(p.holder_id)
    assert cluster.check(demand, now=10).admit
    assert cluster.check(demand, now=10).borrowed == Resources.zero()


def test_reclaim_refuses_when_demand_would_borrow(cluster: Ledger, make_demand: MakeDemand) -> None:
    cluster.reserve("rec-b", "rob", "rec", "default", r(12, 8), now=0)
    assert cluster.plan_reclaim(make_demand(user="boss", tasks=[r(9, 4)]), now=1) is None
    assert cluster.plan_reclaim(make_demand(user="boss", tasks=[r(1, 1)]), now=1) == []


def test_from_holders_then_advance_repairs(make_demand: MakeDemand) -> None:
    holders = [
        Holder("srv", "ann", "solo", "default", r(2, 2), kind="server"),
        Holder("j1", "ann", "solo", "default", r(2, 2), admitted_at=1, until=100),
        Holder("j2", "ann", "solo", "default", r(2, 2), admitted_at=2, until=100),
    ]
    ledger = Ledger.from_holders(pools(), groups(), holders=holders, now=5)
    assert ledger.violations()  # solo's limit is 4 cpu but 6 are held
    preempted = ledger.advance(5)
    assert [p.holder_id for p in preempted] == ["j2"]
    assert ledger.violations() == []


def test_config_change_cannot_strand_servers(cluster: Ledger) -> None:
    cluster.reserve("srv", "ann", "solo", "default", r(3, 2), kind="server", now=0)
    with pytest.raises(ValueError, match="notebook servers already hold"):
        cluster.set_group(QuotaGroup("solo", limits={"default": r(2, 16)}))
    cluster.reserve("job", "ann", "solo", "default", r(1, 2), now=0)
    preempted = cluster.set_group(QuotaGroup("solo", limits={"default": r(3, 16)}))
    assert [p.holder_id for p in preempted] == ["job"]


def test_usage_report_is_plain_data(cluster: Ledger) -> None:
    cluster.reserve("a", "ann", "ads", "default", r(2, 2), now=0)
    report = cluster.usage_report()
    assert report["users"] == {"ads/ann": {"cpu": 2.0, "memory": 2 * 2**30, "gpu": 0}}
    assert report["pools"]["default"]["used"]["cpu"] == 2.0  # type: ignore[index]
