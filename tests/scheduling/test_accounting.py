"""Accounting: declarations, holders and the totals kept over them, without any limit rule."""

import pytest
from quota_fixtures import groups, pools, r

from mlp.scheduling.accounting import Accounts
from mlp.scheduling.model import Expansion, Holder, Pool, QuotaGroup, UnknownNameError


@pytest.fixture
def accounts() -> Accounts:
    return Accounts(pools(), groups(), now=0)


def test_totals_follow_holders_in_and_out(accounts: Accounts) -> None:
    job = Holder("j1", "ann", "ads", "default", r(6, 8), borrowed=r(2))
    server = Holder("s1", "bob", "ads", "production", r(1, 2), kind="server")
    accounts.add_holder(job)
    accounts.add_holder(server)
    assert accounts.pool_usage("default") == r(6, 8)
    assert accounts.pool_free("default") == r(26, 120, 8)
    assert accounts.group_usage("ads", "default") == r(6, 8)
    assert accounts.group_own_usage("ads", "default") == r(4, 8)
    assert accounts.group_borrowed("ads", "default") == r(2)
    assert accounts.cohort_borrowed("ml", "default") == r(2)
    assert accounts.cohort_usage("ml", "default") == r(6, 8)
    # a personal usage is summed over pools, per group
    assert accounts.user_usage("ads", "ann") == r(6, 8)
    assert accounts.user_usage("ads", "bob") == r(1, 2)
    assert list(accounts.holders_in("ads", "default")) == [job]
    assert accounts.server_usage_in_pool("production") == r(1, 2)
    assert list(accounts.server_usage_of("ads")) == [("production", r(1, 2))]
    assert dict(accounts.own_usages()) == {
        ("ads", "default"): r(4, 8),
        ("ads", "production"): r(1, 2),
    }

    assert accounts.remove_holder("j1") is job
    assert "j1" not in accounts and "s1" in accounts
    assert accounts.pool_usage("default").is_zero()
    assert accounts.group_borrowed("ads", "default").is_zero()
    assert accounts.cohort_borrowed("ml", "default").is_zero()
    assert accounts.user_usage("ads", "ann").is_zero()
    assert list(accounts.holders_in("ads", "default")) == []
    with pytest.raises(UnknownNameError, match="unknown holder 'j1'"):
        accounts.remove_holder("j1")


def test_apply_changes_totals_but_not_the_holder_table(accounts: Accounts) -> None:
    job = Holder("j1", "rob", "rec", "default", r(3, 3), borrowed=r(1))
    accounts.add_holder(job)
    accounts.apply(job, -1)  # "what if it stopped?"
    assert accounts.pool_usage("default").is_zero()
    assert accounts.cohort_borrowed("ml", "default").is_zero()
    assert accounts.holder("j1") is job and list(accounts.holders()) == [job]
    accounts.apply(job, 1)
    assert accounts.pool_usage("default") == r(3, 3)
    assert accounts.cohort_borrowed("ml", "default") == r(1)


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="pool 'default' is declared twice"):
        Accounts([*pools(), pools()[0]], groups(), now=0)
    with pytest.raises(ValueError, match="group 'ads' is declared twice"):
        Accounts(pools(), [*groups(), groups()[0]], now=0)
    with pytest.raises(UnknownNameError, match="lend_limit: unknown pool 'gpu'; pools are default"):
        Accounts(pools(), [QuotaGroup("x", cohort="c", lend_limit={"gpu": r(1)})], now=0)
    accounts = Accounts(pools(), groups(), now=0)
    with pytest.raises(UnknownNameError, match="unknown group 'x'; groups are ads, rec"):
        accounts.require_known("x", "default")
    with pytest.raises(UnknownNameError, match="unknown pool 'x'; pools are default, production"):
        accounts.require_known("ads", "x")
    accounts.add_holder(Holder("h", "ann", "ads", "default", r(1)))
    with pytest.raises(ValueError, match="holder 'h' is listed twice"):
        accounts.add_holder(Holder("h", "ann", "ads", "default", r(1)))


def test_nominal_counts_expansions_active_over_the_whole_window(accounts: Accounts) -> None:
    accounts.add_expansion(Expansion("e1", "solo", "default", r(2), start=100, expiry=200))
    assert accounts.nominal("solo", "default", 50) == r(4, 16, 1)
    assert accounts.nominal("solo", "default", 100) == r(6, 16, 1)
    assert accounts.nominal("solo", "default", 100, 199) == r(6, 16, 1)
    assert accounts.nominal("solo", "default", 100, 200) == r(4, 16, 1)  # ends inside
    assert accounts.nominal("solo", "default", 50, 150) == r(4, 16, 1)  # starts inside
    accounts.add_holder(Holder("j", "ann", "solo", "default", r(5, 4)))
    assert accounts.idle("solo", "default", now=150) == r(1, 12, 1)
    assert accounts.idle("solo", "default") == r(0, 12, 1)  # the clock is 0: no expansion
    with pytest.raises(ValueError, match="expansion 'e1' already exists"):
        accounts.add_expansion(Expansion("e1", "solo", "default", r(2), start=0, expiry=1))
    with pytest.raises(UnknownNameError, match="unknown group 'nope'"):
        accounts.add_expansion(Expansion("e2", "nope", "default", r(2), start=0, expiry=1))

    assert accounts.end_expansions(199) == []
    (ended,) = accounts.end_expansions(200)
    assert ended.id == "e1" and "e1" not in accounts.expansions
    assert accounts.nominal("solo", "default", 150) == r(4, 16, 1)
    with pytest.raises(UnknownNameError, match="unknown expansion 'e1'"):
        accounts.remove_expansion("e1")


def test_lendable_supply_is_min_of_lend_limit_and_idle(accounts: Accounts) -> None:
    # ads lends min(4,16,1 | idle 8,32,2), rec min(8,32,2 | 8,32,2), search min(2,8,0 | 4,16,1)
    assert accounts.lendable_supply("ml", "default", 0, 0) == r(14, 56, 3)
    assert accounts.offer("solo", "default", 0, 0).is_zero()  # no cohort, lends nothing
    accounts.add_holder(Holder("j", "rob", "rec", "default", r(7, 30)))
    # rec is idle by 1,2,2 only; the cached figure follows the new holder
    assert accounts.offer("rec", "default", 0, 0) == r(1, 2, 2)
    assert accounts.offer("rec", "default", 0, 0, own=r(0)) == r(8, 32, 2)
    assert accounts.lendable_supply("ml", "default", 0, 0) == r(7, 26, 3)
    assert accounts.lendable_supply_uncached("ml", "default", 0, 0) == r(7, 26, 3)
    # an expansion raises the idle quota, and the cache follows it too
    accounts.add_expansion(Expansion("e", "rec", "default", r(4, 4), start=0, expiry=100))
    assert accounts.lendable_supply("ml", "default", 0, 0) == r(11, 30, 3)
    assert accounts.lendable_supply("ml", "default", 0, 100) == r(7, 26, 3)


def test_put_group_moves_borrowed_totals_to_the_new_cohort(accounts: Accounts) -> None:
    accounts.add_holder(Holder("b", "rob", "rec", "default", r(10, 8), borrowed=r(2)))
    assert accounts.cohort_borrowed("ml", "default") == r(2)
    accounts.put_group(QuotaGroup("rec", cohort="dl", limits={"default": r(8, 32, 2)}))
    assert accounts.cohort_borrowed("ml", "default").is_zero()
    assert accounts.cohort_borrowed("dl", "default") == r(2)
    assert accounts.cohort_members("ml") == ("ads", "search")
    assert accounts.cohort_members("dl") == ("rec",)
    assert dict(accounts.cohorts) == {"dl": ["rec"], "ml": ["ads", "search"]}
    accounts.remove_holder("b")  # counted out of the cohort it is in now
    assert accounts.cohort_borrowed("dl", "default").is_zero()
    accounts.drop_group("solo")
    assert "solo" not in accounts.groups


def test_put_pool_replaces_capacity(accounts: Accounts) -> None:
    accounts.put_pool(Pool("default", r(2, 2)))
    assert accounts.pools["default"].capacity == r(2, 2)
    assert accounts.pool_free("default") == r(2, 2)
