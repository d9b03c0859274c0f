"""Reclaim and repair: which limit is broken, which job goes, and the reclaim plan."""

import pytest
from quota_fixtures import groups, pools, r

from mlp.scheduling import reclaim
from mlp.scheduling.accounting import Accounts
from mlp.scheduling.admission import evaluate_demand
from mlp.scheduling.model import Demand, Holder, Pool, Preemption, QuotaGroup
from mlp.scheduling.reporting import usage_report


@pytest.fixture
def accounts() -> Accounts:
    return Accounts(pools(), groups(), now=0)


def test_victim_order_borrowed_then_low_priority_then_youngest() -> None:
    own = Holder("own", "u", "rec", "default", r(1), priority=0, admitted_at=9)
    old = Holder("old", "u", "rec", "default", r(1), borrowed=r(1), priority=1, admitted_at=1)
    young = Holder("young", "u", "rec", "default", r(1), borrowed=r(1), priority=1, admitted_at=5)
    low = Holder("low", "u", "rec", "default", r(1), borrowed=r(1), priority=0, admitted_at=0)
    ordered = sorted([own, old, young, low], key=reclaim.victim_order)
    assert [h.id for h in ordered] == ["low", "young", "old", "own"]


def test_first_violation_pool_capacity_comes_before_a_group_limit() -> None:
    accounts = Accounts([Pool("default", r(5, 128, 8))], groups()[3:], now=0)
    accounts.add_holder(Holder("a", "ann", "solo", "default", r(3)))
    accounts.add_holder(Holder("b", "ann", "solo", "default", r(3, 1)))
    found = reclaim.first_violation(accounts)
    assert found is not None
    description, candidates = found
    assert description == "pool 'default' is over capacity in cpu"
    assert [h.id for h in candidates] == ["a", "b"]


def test_first_violation_cohort_lending_comes_before_a_group_limit(accounts: Accounts) -> None:
    accounts.add_holder(Holder("own", "rob", "rec", "default", r(8, 8)))
    accounts.add_holder(Holder("b", "rob", "rec", "default", r(2, 2), borrowed=r(2)))
    # nobody lends any more, and rec's own limit shrinks under its own job
    accounts.put_group(QuotaGroup("ads", cohort="ml", limits={"default": r(8, 32, 2)}))
    accounts.put_group(QuotaGroup("search", cohort="ml", limits={"default": r(4, 16, 1)}))
    accounts.put_group(QuotaGroup("rec", cohort="ml", limits={"default": r(6, 32, 2)}))
    found = reclaim.first_violation(accounts)
    assert found is not None
    assert found[0] == "cohort 'ml' lends more than its idle quota"
    assert [h.id for h in found[1]] == ["b"]  # only borrowed jobs restore lending
    broken = reclaim.violations(accounts)
    assert any(v.startswith("cohort 'ml' pool 'default'") for v in broken)
    assert any(v.startswith("group 'rec' pool 'default'") for v in broken)


def test_repair_preempts_until_nothing_is_broken(accounts: Accounts) -> None:
    accounts.add_holder(Holder("srv", "ann", "solo", "default", r(2, 2), kind="server"))
    accounts.add_holder(Holder("j1", "ann", "solo", "default", r(2, 2), admitted_at=1))
    accounts.add_holder(Holder("j2", "ann", "solo", "default", r(2, 2), admitted_at=2))
    accounts.add_holder(Holder("j3", "ann", "solo", "default", r(1, 2), admitted_at=3))
    assert reclaim.violations(accounts) == [
        "group 'solo' pool 'default': own Resources(cpu=7, memory=8Gi) > "
        "Resources(cpu=4, gpu=1, memory=16Gi)"
    ]
    preempted = reclaim.repair(accounts, "limits changed")
    why = "limits changed: group 'solo' is over its limit in pool 'default'"
    # youngest first, one at a time, until the limit holds: j1 stays
    assert preempted == [Preemption("j3", why), Preemption("j2", why)]
    assert sorted(h.id for h in accounts.holders()) == ["j1", "srv"]
    assert reclaim.violations(accounts) == []
    assert reclaim.repair(accounts, "again") == []


def test_repair_never_stops_a_notebook_server(accounts: Accounts) -> None:
    accounts.add_holder(Holder("srv", "ann", "solo", "default", r(6), kind="server"))
    with pytest.raises(AssertionError, match="without stopping servers"):
        reclaim.repair(accounts, "limits changed")
    assert "srv" in accounts


def test_violations_name_caps_and_borrowing_that_cannot_be(accounts: Accounts) -> None:
    accounts.add_holder(Holder("a", "ann", "ads", "default", r(7, 8)))  # cap 6
    accounts.add_holder(Holder("s", "bob", "rec", "default", r(1), kind="server", borrowed=r(1)))
    accounts.add_holder(Holder("x", "sol", "solo", "default", r(1), borrowed=r(1)))
    broken = reclaim.violations(accounts)
    assert any(v.startswith("user 'ann' in 'ads'") for v in broken)
    assert "server 's' borrows Resources(cpu=1)" in broken
    assert "holder 'x' borrows outside any cohort" in broken
    found = reclaim.first_violation(accounts)
    assert found is not None and found[0] == "user 'ann' is over the personal cap in 'ads'"


def _lent_out_setup(accounts: Accounts) -> Demand:
    accounts.add_holder(Holder("rec-own", "rob", "rec", "default", r(8, 8)))
    accounts.add_holder(
        Holder("b1", "rob", "rec", "default", r(1, 1), borrowed=r(1), priority=0, admitted_at=1)
    )
    accounts.add_holder(
        Holder("b2", "rob", "rec", "default", r(4, 1), borrowed=r(4), priority=1, admitted_at=2)
    )
    return Demand("d", "boss", "ads", "default", (r(8, 8),), max_runtime=60)


def test_plan_reclaim_picks_the_fewest_borrowed_jobs(accounts: Accounts) -> None:
    demand = _lent_out_setup(accounts)
    before = usage_report(accounts)
    plan = reclaim.plan_reclaim(accounts, demand, now=0)
    # b1 goes first in victim order but does not suffice; b2 alone does, so b1 is spared
    assert plan == [
        Preemption("b2", "group 'ads' reclaims its quota lent inside cohort 'ml' for job 'd'")
    ]
    # planning changes nothing: the totals and the holders are as before
    assert usage_report(accounts) == before
    assert sorted(h.id for h in accounts.holders()) == ["b1", "b2", "rec-own"]
    accounts.remove_holder("b2")
    borrowed, blocking = evaluate_demand(accounts, demand, 0)
    assert blocking == () and borrowed is not None and borrowed.is_zero()


def test_plan_reclaim_is_empty_when_the_demand_fits(accounts: Accounts) -> None:
    demand = Demand("d", "boss", "ads", "default", (r(8, 8),))
    assert reclaim.plan_reclaim(accounts, demand, now=0) == []


def test_plan_reclaim_refuses_what_reclaim_cannot_fix(accounts: Accounts) -> None:
    _lent_out_setup(accounts)
    # more than the group's own quota: it would borrow, and reclaim only returns quota
    big = Demand("big", "sue", "search", "default", (r(5, 8),))
    assert reclaim.plan_reclaim(accounts, big, now=0) is None
    # the group's own quota is used up by its own jobs: there is nothing to take back
    rec = Demand("rec", "rob", "rec", "default", (r(8, 8),))
    assert reclaim.plan_reclaim(accounts, rec, now=0) is None
    # blocked by a personal cap: no preemption helps
    capped = Demand("capped", "ann", "ads", "default", (r(7, 8),))
    assert reclaim.plan_reclaim(accounts, capped, now=0) is None
    # a group in no cohort neither borrows nor lends: nothing to reclaim
    solo = Demand("solo", "sol", "solo", "default", (r(5),))
    assert reclaim.plan_reclaim(accounts, solo, now=0) is None
