"""Reporting: who lent what inside a cohort, and the usage report the admin API serves."""

import json

import pytest
from quota_fixtures import groups, pools, r

from mlp.scheduling.accounting import Accounts
from mlp.scheduling.model import Expansion, Holder
from mlp.scheduling.reporting import lent_out, usage_report

GI = 2**30


@pytest.fixture
def accounts() -> Accounts:
    return Accounts(pools(), groups(), now=0)


def test_lent_out_attributes_borrowing_to_lenders_in_name_order(accounts: Accounts) -> None:
    accounts.add_holder(Holder("rec-own", "rob", "rec", "default", r(8, 8)))
    accounts.add_holder(Holder("rec-b", "rob", "rec", "default", r(6, 2), borrowed=r(6)))
    # ads lends up to its lend limit (4), rec has nothing idle in cpu, search covers the rest
    assert lent_out(accounts, "ads", "default") == r(4)
    assert lent_out(accounts, "rec", "default").is_zero()
    assert lent_out(accounts, "search", "default") == r(2)
    assert lent_out(accounts, "solo", "default").is_zero()  # in no cohort
    total = sum((lent_out(accounts, g, "default") for g in ("ads", "rec", "search")), r())
    assert total == accounts.cohort_borrowed("ml", "default")


def test_usage_report_is_plain_data_for_the_api(accounts: Accounts) -> None:
    accounts.add_expansion(Expansion("e", "ads", "default", r(2), start=0, expiry=100))
    accounts.add_holder(Holder("a", "ann", "ads", "default", r(2, 2)))
    accounts.add_holder(Holder("b", "rob", "rec", "default", r(10, 4), borrowed=r(2)))
    report = usage_report(accounts)
    json.dumps(report)  # plain numbers and strings only
    assert list(report) == ["now", "pools", "groups", "users", "cohorts"]
    assert report["now"] == 0.0
    assert report["pools"]["default"] == {  # type: ignore[index]
        "capacity": {"cpu": 32.0, "memory": 128 * GI, "gpu": 8},
        "used": {"cpu": 12.0, "memory": 6 * GI, "gpu": 0},
    }
    ads = report["groups"]["ads"]  # type: ignore[index]
    assert ads["cohort"] == "ml"
    assert ads["pools"]["default"] == {
        "limit": {"cpu": 8.0, "memory": 32 * GI, "gpu": 2},
        "nominal": {"cpu": 10.0, "memory": 32 * GI, "gpu": 2},  # with the expansion
        "used": {"cpu": 2.0, "memory": 2 * GI, "gpu": 0},
        "borrowed": {"cpu": 0.0, "memory": 0, "gpu": 0},
        "lent_out": {"cpu": 2.0, "memory": 0, "gpu": 0},
    }
    assert report["groups"]["rec"]["pools"]["default"]["borrowed"]["cpu"] == 2.0  # type: ignore[index]
    assert report["users"] == {
        "ads/ann": {"cpu": 2.0, "memory": 2 * GI, "gpu": 0},
        "rec/rob": {"cpu": 10.0, "memory": 4 * GI, "gpu": 0},
    }
    assert report["cohorts"] == {
        "ml": {
            "default": {"cpu": 12.0, "memory": 6 * GI, "gpu": 0},
            "production": {"cpu": 0.0, "memory": 0, "gpu": 0},
        }
    }
    accounts.remove_holder("a")
    assert list(usage_report(accounts)["users"]) == ["rec/rob"]  # type: ignore[call-overload]
