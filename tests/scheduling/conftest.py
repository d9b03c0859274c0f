"""Fixtures for the scheduling core.

- ``cluster``: a small two-pool, four-group configuration (cohort ``ml`` of ``ads``, ``rec``,
  ``search``; ``solo`` in no cohort) as a fresh `Ledger`.
- ``make_demand``: builds a `Demand` with defaults for every field.
"""

from collections.abc import Callable
from typing import Any

import pytest

from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import Demand, Pool, QuotaGroup
from mlp.scheduling.resources import Resources

GI = 2**30


def r(cpu: float = 0, mem_gi: float = 0, gpu: int = 0) -> Resources:
    return Resources(cpu=cpu, memory=round(mem_gi * GI), gpu=gpu)


def pools() -> list[Pool]:
    return [
        Pool("default", r(32, 128, 8), priority=0),
        Pool("production", r(16, 64, 4), priority=100, requires_promotion=True),
    ]


def groups() -> list[QuotaGroup]:
    return [
        QuotaGroup(
            "ads",
            cohort="ml",
            limits={"default": r(8, 32, 2), "production": r(8, 32, 2)},
            member_cap=r(6, 24, 2),
            member_caps={"boss": r(8, 32, 2)},
            lend_limit={"default": r(4, 16, 1)},
        ),
        QuotaGroup(
            "rec",
            cohort="ml",
            limits={"default": r(8, 32, 2)},
            lend_limit={"default": r(8, 32, 2)},
        ),
        QuotaGroup(
            "search",
            cohort="ml",
            limits={"default": r(4, 16, 1), "production": r(4, 16, 1)},
            lend_limit={"default": r(2, 8, 0)},
        ),
        QuotaGroup("solo", limits={"default": r(4, 16, 1)}),
    ]


@pytest.fixture
def cluster() -> Ledger:
    return Ledger(pools(), groups())


@pytest.fixture
def make_demand() -> Callable[..., Demand]:
    counter = iter(range(10**9))

    def build(
        group: str = "ads",
        user: str = "ann",
        pool: str = "default",
        tasks: Any = None,
        **fields: Any,
    ) -> Demand:
        return Demand(
            id=fields.pop("id", f"j{next(counter)}"),
            user=user,
            group=group,
            pool=pool,
            tasks=tuple(tasks if tasks is not None else [r(1, 4)]),
            **fields,
        )

    return build
