"""Small quota configurations shared by the scheduling tests (imported by name; pytest's
conftest modules are not importable reliably when several test folders have one)."""

from mlp.scheduling.model import Pool, QuotaGroup
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
