"""Fixtures for the scheduling core.

- ``cluster``: a small two-pool, four-group configuration (cohort ``ml`` of ``ads``, ``rec``,
  ``search``; ``solo`` in no cohort) as a fresh `Ledger`.
- ``make_demand``: builds a `Demand` with defaults for every field.
"""

from collections.abc import Callable
from typing import Any

import pytest
from quota_fixtures import groups, pools, r

from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import Demand


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
