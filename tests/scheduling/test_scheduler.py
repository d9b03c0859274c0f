"""The score and the scheduling pass: order, aging, gang, backfill, reclaim, explanations."""

from collections.abc import Callable

import pytest
from quota_fixtures import groups, pools, r

from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import Demand, Pool, QuotaGroup, UnknownNameError
from mlp.scheduling.resources import Resources
from mlp.scheduling.scheduler import QueueScheduler, schedule, validate_fits_ever
from mlp.scheduling.score import ScoreContext, ScorePolicy

MakeDemand = Callable[..., Demand]
CTX = ScoreContext(pool_capacity=r(32, 128, 8), pool_priority=0, group_quota=r(8, 32, 2))


def test_score_parts_sum_to_score(make_demand: MakeDemand) -> None:
    policy = ScorePolicy()
    demand = make_demand(tasks=[r(1, 64, 2)], priority=2, max_runtime=7200, submitted_at=0)
    score, parts = policy.score(demand, now=1800, context=CTX)
    assert score == pytest.approx(sum(parts.values()))
    assert set(parts) == {
        "priority",
        "pool",
        "aging",
        "runtime",
        "shape_balance",
        "shape_gpu_cpu",
        "shape_oversize",
        "demand",
    }
    assert parts["priority"] == 20.0 and parts["aging"] == 6.0
    assert parts["shape_balance"] < 0  # 64 GiB on one core
    assert parts["shape_gpu_cpu"] < 0  # 2 GPUs fed by one core


def test_shorter_balanced_small_jobs_rank_higher(make_demand: MakeDemand) -> None:
    policy = ScorePolicy()

    def score(**kw: object) -> float:
        return policy.score(make_demand(**kw), now=0, context=CTX)[0]

    assert score(max_runtime=600) > score(max_runtime=36000)
    assert score(tasks=[r(2, 8)]) > score(tasks=[r(2, 100)])
    assert score(tasks=[r(4, 16, 1)]) > score(tasks=[r(0.5, 16, 1)])
    assert score(tasks=[r(4, 16)]) > score(tasks=[r(30, 120)])  # oversized single task
    assert score(tasks=[r(1, 4)] * 2) > score(tasks=[r(1, 4)] * 16)  # total vs group quota
    production = ScoreContext(CTX.pool_capacity, 100, CTX.group_quota)
    demand = make_demand()
    assert policy.score(demand, 0, production)[0] > policy.score(demand, 0, CTX)[0]


def test_weights_are_configurable_traitlets() -> None:
    from traitlets.config import Config

    config = Config()
    config.ScorePolicy.priority_weight = 1.0
    policy = ScorePolicy(config=config)
    assert policy.priority_weight == 1.0
    assert ScorePolicy.class_traits()["aging_per_hour"].help


def test_aging_old_low_priority_job_eventually_outranks_new_high_priority(
    make_demand: MakeDemand,
) -> None:
    policy = ScorePolicy()
    old = make_demand(priority=0, max_runtime=86400, submitted_at=0, tasks=[r(8, 32)])
    now = 0.0
    # every hour a fresh, short, well-shaped priority-9 job arrives; the old one must win
    for hour in range(1, 200):
        now = hour * 3600.0
        fresh = make_demand(priority=9, max_runtime=60, submitted_at=now)
        if policy.score(old, now, CTX)[0] > policy.score(fresh, now, CTX)[0]:
            break
    else:
        pytest.fail("the old job starved")
    assert hour < 24


def test_pass_admits_in_score_order_with_gang(cluster: Ledger, make_demand: MakeDemand) -> None:
    scheduler = QueueScheduler(cluster, backfill=False)
    low = make_demand(group="solo", id="low", priority=0, tasks=[r(2, 4)] * 2)
    high = make_demand(group="solo", id="high", priority=5, tasks=[r(1, 4)] * 3)
    scheduler.submit(low)
    scheduler.submit(high)
    plan = scheduler.schedule(now=0)
    # high (3 cpu) first; low's gang of 2x2 cpu needs 4 but 1 is left: none of it starts
    assert [a for a, _ in plan.admitted] == ["high"]
    assert "low" not in cluster and "low" in scheduler
    assert plan.positions == {"low": 0}
    explanation = plan.explanations["low"]
    assert explanation.blocking[0].scope == "group"
    assert explanation.blocking[0].requested == 4.0 and explanation.blocking[0].available == 1.0
    assert explanation.to_dict()["blocking"][0]["group"] == "solo"  # type: ignore[index]


def test_backfill_only_when_it_does_not_delay_the_head(
    cluster: Ledger, make_demand: MakeDemand
) -> None:
    # solo holds 3 of its 4 cpu until t=1000; the head needs 4 cpu so waits until t=1000
    cluster.reserve("running", "ann", "solo", "default", r(3, 4), now=0, max_runtime=1000)
    scheduler = QueueScheduler(cluster)
    head = make_demand(group="solo", id="head", priority=9, tasks=[r(4, 4)], max_runtime=100)
    short = make_demand(group="solo", id="short", tasks=[r(1, 1)], max_runtime=500)
    long = make_demand(group="solo", id="long", tasks=[r(1, 1)], max_runtime=5000)
    for demand in (head, short, long):
        scheduler.submit(demand)
    plan = scheduler.schedule(now=0)
    assert [a for a, _ in plan.admitted] == ["short"]  # ends at 500 <= 1000
    behind = plan.explanations["long"].blocking[0]
    assert "waits behind higher-scored job 'head'" in behind.reason
    assert "t=1000" in behind.reason
    # without backfill the short job waits too
    cluster.release("short")
    scheduler.submit(make_demand(group="solo", id="short2", tasks=[r(1, 1)], max_runtime=500))
    scheduler.backfill = False
    assert scheduler.schedule(now=1).admitted == []


def test_pass_reclaims_lent_quota_for_the_lender(cluster: Ledger, make_demand: MakeDemand) -> None:
    cluster.reserve("rec-own", "rob", "rec", "default", r(8, 8), now=0)
    cluster.reserve("rec-borrow", "rob", "rec", "default", r(6, 6), now=1)
    scheduler = QueueScheduler(cluster)
    scheduler.submit(make_demand(group="ads", user="boss", id="mine", tasks=[r(8, 8)]))
    plan = scheduler.schedule(now=10)
    assert [a for a, _ in plan.admitted] == ["mine"]
    assert [p.holder_id for p in plan.preempt] == ["rec-borrow"]
    assert "reclaims" in plan.preempt[0].reason
    assert cluster.violations() == []


def test_pass_admits_borrowing_inside_cohort(make_demand: MakeDemand) -> None:
    ledger = Ledger(pools(), groups())
    plan = schedule([make_demand(group="rec", id="big", tasks=[r(12, 8)])], ledger, now=0)
    assert plan.admitted == [("big", r(4))]
    assert ledger.holder("big").preemptible


def test_production_only_for_promoted(cluster: Ledger, make_demand: MakeDemand) -> None:
    plan = schedule(
        [
            make_demand(pool="production", id="p"),
            make_demand(pool="production", id="q", promoted=True),
        ],
        cluster,
        now=0,
    )
    assert [a for a, _ in plan.admitted] == ["q"]
    assert "promoted" in plan.explanations["p"].blocking[0].reason


def test_validate_fits_ever_refuses_with_numbers(cluster: Ledger, make_demand: MakeDemand) -> None:
    ok = make_demand(group="search", user="sue", tasks=[r(4, 8)] * 4)  # 16 cpu: 4 + 8 + 4 lent
    assert validate_fits_ever(ok, cluster.groups, cluster.pools) == []
    too_big = make_demand(group="search", user="sue", tasks=[r(4, 8)] * 5)
    (blocker,) = validate_fits_ever(too_big, cluster.groups, cluster.pools)
    assert (blocker.scope, blocker.resource, blocker.requested, blocker.available) == (
        "group",
        "cpu",
        20.0,
        16.0,
    )
    assert "could never start" in blocker.reason
    blockers = validate_fits_ever(make_demand(tasks=[r(40, 8, 9)]), cluster.groups, cluster.pools)
    assert {(b.scope, b.resource) for b in blockers} >= {
        ("pool", "cpu"),
        ("pool", "gpu"),
        ("user", "cpu"),
    }
    with pytest.raises(UnknownNameError, match="unknown group 'x'"):
        validate_fits_ever(make_demand(group="x"), cluster.groups, cluster.pools)
    with pytest.raises(UnknownNameError, match="unknown pool 'x'"):
        validate_fits_ever(make_demand(pool="x"), cluster.groups, cluster.pools)


def test_queue_refuses_unknown_names_and_duplicates(
    cluster: Ledger, make_demand: MakeDemand
) -> None:
    scheduler = QueueScheduler(cluster)
    with pytest.raises(UnknownNameError, match="unknown group 'nope'"):
        scheduler.submit(make_demand(group="nope"))
    scheduler.submit(make_demand(id="a"))
    with pytest.raises(ValueError, match="already queued"):
        scheduler.submit(make_demand(id="a"))
    assert scheduler.remove("a").id == "a"
    with pytest.raises(UnknownNameError):
        scheduler.remove("a")


def test_explain_pending_without_a_pass(cluster: Ledger, make_demand: MakeDemand) -> None:
    scheduler = QueueScheduler(cluster)
    scheduler.submit(make_demand(group="solo", id="big", tasks=[r(5, 4)]))
    explanation = scheduler.explain_pending("big", now=60)
    assert explanation.position == 0 and explanation.score_parts["aging"] > 0
    assert explanation.blocking[0].name == "solo"


def test_ordering_is_stable_over_time(make_demand: MakeDemand) -> None:
    ledger = Ledger([Pool("default", Resources(cpu=1))], [QuotaGroup("g")])
    scheduler = QueueScheduler(ledger)
    for i in range(20):
        scheduler.submit(
            make_demand(group="g", id=f"d{i}", priority=i % 4, submitted_at=i * 600.0, tasks=[r(1)])
        )
    policy = scheduler.policy
    for now in (12000.0, 10**6):
        scores = [policy.score(d, now, scheduler.context_for(d))[0] for d in scheduler.pending()]
        assert scores == sorted(scores, reverse=True)
