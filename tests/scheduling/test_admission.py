"""Admission: each check alone, then `evaluate` putting them together in order."""

import pytest
from quota_fixtures import groups, pools, r

from mlp.scheduling import admission
from mlp.scheduling.accounting import Accounts
from mlp.scheduling.admission import Request, evaluate
from mlp.scheduling.model import Demand, Expansion, Holder, HolderKind, Pool, UnknownNameError
from mlp.scheduling.resources import Resources


@pytest.fixture
def accounts() -> Accounts:
    return Accounts(pools(), groups(), now=0)


def request(
    accounts: Accounts,
    amount: Resources,
    group: str = "ads",
    user: str = "ann",
    pool: str = "default",
    kind: HolderKind = "job",
    end: float = 3600.0,
) -> Request:
    quota_group, quota_pool = accounts.require_known(group, pool)
    return Request(quota_group, quota_pool, user, amount, kind, accounts.now, accounts.now, end)


def test_promotion_blocker_stops_every_other_check(accounts: Accounts) -> None:
    borrowed, blocking = evaluate(
        accounts, "ads", "ann", "production", r(100, 1000), 0, 60, "job", False
    )
    assert borrowed is None
    (blocker,) = blocking  # no capacity, cap or quota blocker for the huge amount
    assert (blocker.scope, blocker.name, blocker.resource) == ("pool", "production", "")
    assert "jobs not promoted by an admin cannot run there" in blocker.reason
    server = admission.promotion_blocker(accounts.pools["production"], "server")
    assert "notebook servers cannot run there" in server.reason
    assert evaluate(accounts, "ads", "ann", "production", r(1, 1), 0, 60, "job", True) == (
        Resources.zero(),
        (),
    )


def test_pool_blockers_name_each_resource_lacking() -> None:
    accounts = Accounts([Pool("default", r(4, 64, 0)), pools()[1]], groups(), now=0)
    assert admission.pool_blockers(accounts, request(accounts, r(4, 64))) == []
    cpu, gpu = admission.pool_blockers(accounts, request(accounts, r(5, 4, 1)))
    assert (cpu.scope, cpu.name, cpu.resource, cpu.requested, cpu.available) == (
        "pool",
        "default",
        "cpu",
        5.0,
        4.0,
    )
    assert cpu.reason == "pool 'default' has 4 cpu free of 4; needs 5"
    assert (gpu.resource, gpu.requested, gpu.available) == ("gpu", 1.0, 0.0)
    # a pool already over capacity (it shrank) reports nothing free, never a negative amount
    accounts.add_holder(Holder("big", "ann", "ads", "default", r(6)))
    (cpu,) = admission.pool_blockers(accounts, request(accounts, r(1)))
    assert cpu.available == 0.0


def test_cap_blockers_sum_over_pools_and_honour_overrides(accounts: Accounts) -> None:
    accounts.add_holder(Holder("p", "ann", "ads", "production", r(4, 4)))
    (cpu,) = admission.cap_blockers(accounts, request(accounts, r(3, 4)))
    assert (cpu.scope, cpu.name, cpu.requested, cpu.available) == ("user", "ann", 3.0, 2.0)
    assert cpu.reason == "user 'ann' has 2 cpu left of a personal cap of 6 in group 'ads'; needs 3"
    assert admission.cap_blockers(accounts, request(accounts, r(7), user="boss")) == []
    assert admission.cap_blockers(accounts, request(accounts, r(30), group="rec")) == []  # uncapped


def test_own_idle_counts_only_expansions_that_outlast_the_request(accounts: Accounts) -> None:
    accounts.add_expansion(Expansion("e", "solo", "default", r(4), start=0, expiry=1000))
    assert admission.own_idle(accounts, request(accounts, r(1), "solo", end=500)) == r(8, 16, 1)
    assert admission.own_idle(accounts, request(accounts, r(1), "solo", end=1000)) == r(4, 16, 1)
    server = request(accounts, r(1), "solo", kind="server", end=float("inf"))
    assert admission.own_idle(accounts, server) == r(4, 16, 1)
    assert evaluate(accounts, "solo", "ann", "default", r(8), 0, 500, "job", False) == (
        Resources.zero(),
        (),
    )
    _, blocking = evaluate(accounts, "solo", "ann", "default", r(8), 0, 2000, "job", False)
    assert [b.scope for b in blocking] == ["group"] and "no cohort" in blocking[0].reason


def test_late_caller_is_judged_at_the_ledger_clock(accounts: Accounts) -> None:
    accounts.add_expansion(Expansion("e", "solo", "default", r(4), start=0, expiry=150))
    accounts.now = 100
    # asked "at 0" for 60 s, but the clock says 100: the job would outlive the expansion
    borrowed, blocking = evaluate(accounts, "solo", "ann", "default", r(8), 0, 60, "job", False)
    assert borrowed is None and blocking[0].resource == "cpu"
    assert evaluate(accounts, "solo", "ann", "default", r(8), 0, 40, "job", False)[1] == ()


def test_own_quota_first_then_borrowed(accounts: Accounts) -> None:
    assert evaluate(accounts, "ads", "ann", "default", r(6, 8), 0, 60, "job", False) == (
        Resources.zero(),
        (),
    )
    accounts.add_holder(Holder("a", "ann", "ads", "default", r(6, 8)))
    borrowed, blocking = evaluate(accounts, "ads", "bob", "default", r(6, 8), 0, 60, "job", False)
    assert blocking == () and borrowed == r(4)


def test_a_given_split_is_revalidated_and_stops_when_it_fails(accounts: Accounts) -> None:
    split = evaluate(accounts, "rec", "rob", "default", r(10, 8), 0, 60, "job", False, r(2))
    assert split == (r(2), ())
    borrowed, blocking = evaluate(
        accounts, "rec", "rob", "default", r(10, 8), 0, 60, "job", False, Resources.zero()
    )
    assert borrowed is None
    (cpu,) = blocking
    assert (cpu.scope, cpu.resource, cpu.requested, cpu.available) == ("group", "cpu", 10.0, 8.0)
    assert cpu.reason == (
        "group 'rec' has 8 cpu of its quota free in pool 'default' (limit 8); needs 10"
    )
    # a borrowed part larger than the amount makes the own part negative: refused by name
    _, blocking = evaluate(
        accounts, "ads", "ann", "default", r(1, 1), 0, 60, "job", False, r(0, 0, 1)
    )
    assert [b.resource for b in blocking] == ["gpu"]
    # the failed split is the last check: no "cannot borrow" blocker for a group in no cohort
    _, blocking = evaluate(
        accounts, "solo", "ann", "default", r(5, 4), 0, 60, "job", False, Resources.zero()
    )
    assert len(blocking) == 1 and "no cohort" not in blocking[0].reason


def test_servers_and_groups_outside_a_cohort_cannot_borrow(accounts: Accounts) -> None:
    req = request(accounts, r(9, 8), "rec", "rob", kind="server", end=float("inf"))
    (cpu,) = admission.cannot_borrow_blockers(req, r(1), r(8, 32, 2))
    assert (cpu.scope, cpu.name, cpu.requested, cpu.available) == ("group", "rec", 9.0, 8.0)
    assert "notebook servers are never preemptible, so they cannot borrow" in cpu.reason
    _, blocking = evaluate(accounts, "rec", "rob", "default", r(9, 8), 0, None, "server", False)
    assert blocking == (cpu,)
    _, blocking = evaluate(accounts, "solo", "ann", "default", r(5, 4), 0, 60, "job", False)
    assert "it is in no cohort, so it cannot borrow" in blocking[0].reason


def test_cohort_blockers_bound_borrowing_by_what_the_cohort_lends(accounts: Accounts) -> None:
    # search has 4 cpu of its own; it lends 2 of them, which it stops lending when it takes
    # them: the cohort can lend 4 (ads) + 8 (rec) = 12 of the 13 it lacks
    assert evaluate(accounts, "search", "sue", "default", r(16, 8), 0, 60, "job", False)[1] == ()
    _, blocking = evaluate(accounts, "search", "sue", "default", r(17, 8), 0, 60, "job", False)
    (cpu,) = blocking
    assert (cpu.scope, cpu.name, cpu.requested, cpu.available) == ("cohort", "ml", 13.0, 12.0)
    assert cpu.reason == (
        "group 'search' has 4 cpu of its quota free in pool 'default'; cohort 'ml' can lend "
        "12 more of the 13 cpu it lacks; needs 13"
    )


def test_own_quota_lent_out_must_be_reclaimed_first(accounts: Accounts) -> None:
    accounts.add_holder(Holder("rec-own", "rob", "rec", "default", r(8, 8)))
    accounts.add_holder(Holder("rec-b", "rob", "rec", "default", r(6, 2), borrowed=r(6)))
    req = request(accounts, r(8, 8), user="boss")
    (cpu,) = admission.borrowing_blockers(accounts, req, r(8, 8), Resources.zero(), r(8, 32, 2))
    assert (cpu.scope, cpu.resource, cpu.requested, cpu.available) == ("cohort", "cpu", 8.0, 0.0)
    assert cpu.reason == (
        "quota of group 'ads' in pool 'default' is lent out inside cohort 'ml'; "
        "borrowed jobs must be preempted first; needs 8"
    )
    # once the borrowed job is gone the quota is the owner's again
    accounts.remove_holder("rec-b")
    assert admission.borrowing_blockers(accounts, req, r(8, 8), Resources.zero(), r(8, 32, 2)) == []


def test_fits_own_quota_ignores_borrowing(accounts: Accounts) -> None:
    def demand(cpu: float) -> Demand:
        return Demand("d", "boss", "ads", "default", (r(cpu, 8),), max_runtime=60)

    assert admission.fits_own_quota(accounts, demand(8), 0)
    assert not admission.fits_own_quota(accounts, demand(9), 0)
    accounts.add_holder(Holder("a", "ann", "ads", "default", r(4)))
    assert admission.fits_own_quota(accounts, demand(4), 0)
    assert not admission.fits_own_quota(accounts, demand(5), 0)


def test_unknown_names_are_refused(accounts: Accounts) -> None:
    with pytest.raises(UnknownNameError, match="unknown group 'nope'"):
        evaluate(accounts, "nope", "ann", "default", r(1), 0, 60, "job", False)
    with pytest.raises(UnknownNameError, match="unknown pool 'gpu'"):
        evaluate(accounts, "ads", "ann", "gpu", r(1), 0, 60, "job", False)


def test_fits_ever_counts_expansions_that_outlast_the_job_and_the_promotion_rule() -> None:
    accounts = Accounts(pools(), groups(), now=0)
    expansions = [
        Expansion("long", "solo", "default", r(2), start=0, expiry=10_000),
        Expansion("short", "solo", "default", r(8), start=0, expiry=100),
    ]

    def job(cpu: float) -> Demand:
        return Demand("j", "sol", "solo", "default", (r(cpu),), max_runtime=600)

    fits = admission.validate_fits_ever
    assert fits(job(6), accounts.groups, accounts.pools, expansions) == []
    (blocker,) = fits(job(7), accounts.groups, accounts.pools, expansions)
    assert (blocker.scope, blocker.name, blocker.requested, blocker.available) == (
        "group",
        "solo",
        7.0,
        6.0,
    )
    assert blocker.reason == (
        "job needs 7 cpu but the most group 'solo' can get in pool 'default' (limit + "
        "expansions + what its cohort may lend) is 6; it could never start"
    )
    production = Demand("p", "ann", "ads", "production", (r(1),))
    (blocker,) = fits(production, accounts.groups, accounts.pools)
    assert blocker.reason == "pool 'production' runs only jobs an admin promoted to production"
    promoted = Demand("p", "ann", "ads", "production", (r(1),), promoted=True)
    assert fits(promoted, accounts.groups, accounts.pools) == []
