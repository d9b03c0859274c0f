"""Reporting: the ledger's figures as people and the admin API read them.

`lent_out` attributes a cohort's pooled borrowing to its lenders; `usage_report` is the whole
account (per pool, group, user and cohort) in plain numbers. Both only read `Accounts`.
"""

from __future__ import annotations

from mlp.scheduling.accounting import Accounts
from mlp.scheduling.resources import Resources

__all__ = ["lent_out", "usage_report"]

_ZERO = Resources.zero()


def lent_out(accounts: Accounts, group: str, pool: str) -> Resources:
    """The part of the cohort's borrowing attributed to `group` as a lender.

    Borrowing is pooled per cohort; for reporting it is attributed to lenders in name
    order, each up to min(lend_limit, idle), so the figure never exceeds its lend_limit.
    """
    cohort = accounts.groups[group].cohort
    if cohort is None:
        return _ZERO
    remaining = accounts.cohort_borrowed(cohort, pool)
    for name in accounts.cohorts[cohort]:
        offer = accounts.groups[name].lendable(pool).min(accounts.idle(name, pool))
        taken = remaining.min(offer)
        if name == group:
            return taken
        remaining = (remaining - taken).clamp()
    return _ZERO


def usage_report(accounts: Accounts) -> dict[str, object]:
    """Usage per pool, group, user and cohort in plain numbers, for the admin API."""
    return {
        "now": accounts.now,
        "pools": _pools(accounts),
        "groups": _groups(accounts),
        "users": _users(accounts),
        "cohorts": _cohorts(accounts),
    }


def _pools(accounts: Accounts) -> dict[str, object]:
    return {
        name: {
            "capacity": pool.capacity.to_dict(),
            "used": accounts.pool_usage(name).to_dict(),
        }
        for name, pool in sorted(accounts.pools.items())
    }


def _groups(accounts: Accounts) -> dict[str, object]:
    pools = sorted(accounts.pools)
    return {
        name: {
            "cohort": group.cohort,
            "pools": {
                pool: {
                    "limit": group.limit(pool).to_dict(),
                    "nominal": accounts.nominal(name, pool, accounts.now).to_dict(),
                    "used": accounts.group_usage(name, pool).to_dict(),
                    "borrowed": accounts.group_borrowed(name, pool).to_dict(),
                    "lent_out": lent_out(accounts, name, pool).to_dict(),
                }
                for pool in pools
            },
        }
        for name, group in sorted(accounts.groups.items())
    }


def _users(accounts: Accounts) -> dict[str, object]:
    return {
        f"{group}/{user}": used.to_dict()
        for (group, user), used in sorted(accounts.user_usages().items())
        if not used.is_zero()
    }


def _cohorts(accounts: Accounts) -> dict[str, object]:
    return {
        cohort: {
            pool: accounts.cohort_usage(cohort, pool).to_dict() for pool in sorted(accounts.pools)
        }
        for cohort in sorted(accounts.cohorts)
    }
