"""Quota configuration, its precedence, and the default group for a user in no group."""

import pytest
from traitlets.config import Config

from mlp.scheduling.config import QuotaConfig, effective, resolve_group
from mlp.scheduling.model import QuotaGroup, UnknownNameError
from mlp.scheduling.resources import Resources

MACHINE = Resources(cpu=8, memory=32 * 2**30)


def build(**traits: object) -> QuotaConfig:
    config = Config()
    for name, value in traits.items():
        setattr(config.QuotaConfig, name, value)
    return QuotaConfig(config=config)


def test_defaults_are_the_machine_and_a_default_group() -> None:
    quota = QuotaConfig()
    pools = quota.build_pools(MACHINE)
    assert pools["default"].capacity == MACHINE
    assert pools["production"].requires_promotion and pools["production"].priority == 100
    groups = quota.build_groups(MACHINE, pools)
    assert groups["default"].limit("default") == MACHINE
    assert groups["default"].cohort is None


def test_groups_parse_quantities() -> None:
    quota = build(
        groups={
            "ads": {
                "cohort": "ml",
                "limits": {"default": {"cpu": "4", "memory": "16Gi", "gpu": 1}},
                "member_cap": {"cpu": "500m"},
                "member_caps": {"alice": {"cpu": 2}},
                "lend_limit": {"default": {"cpu": 2}},
            }
        }
    )
    groups = quota.build_groups(MACHINE, ["default", "production"])
    ads = groups["ads"]
    assert ads.limit("default") == Resources(cpu=4, memory=16 * 2**30, gpu=1)
    assert ads.cap_of("bob") == Resources(cpu=0.5)
    assert ads.cap_of("alice") == Resources(cpu=2)
    assert "default" in groups


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"g": {"limits": {"default": {"cpu": -1}}}}, r"limits\['default'\]\.cpu: -1 is negative"),
        ({"g": {"limits": {"default": {"cpu": "lots"}}}}, r"cpu: 'lots' is not a valid"),
        ({"g": {"limits": {"gpu-pool": {"cpu": 1}}}}, r"unknown pool 'gpu-pool'"),
        ({"g": {"limit": {}}}, r"unknown key\(s\) 'limit'"),
        ({"g": {"limits": {"default": {"gpus": 1}}}}, r"unknown resource 'gpus'"),
    ],
)
def test_bad_group_config_is_refused(groups: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(groups=groups).build_groups(MACHINE, ["default", "production"])


def test_pools_need_default() -> None:
    with pytest.raises(ValueError, match="'default' pool must be declared"):
        build(pools={"x": {"capacity": "machine"}}).build_pools(MACHINE)


def test_store_wins_over_config() -> None:
    configured = {"a": QuotaGroup("a"), "b": QuotaGroup("b")}
    stored = {"b": QuotaGroup("b", cohort="c")}
    assert effective(configured, stored)["b"].cohort == "c"
    assert effective(configured, stored)["a"] is configured["a"]


def test_resolve_group() -> None:
    groups = {"ads": QuotaGroup("ads"), "rec": QuotaGroup("rec"), "default": QuotaGroup("default")}
    assert resolve_group("u", ["staff"], groups, "default") == "default"
    assert resolve_group("u", ["rec", "ads"], groups, "default") == "ads"
    assert resolve_group("u", ["rec", "ads"], groups, "default", requested="rec") == "rec"
    with pytest.raises(ValueError, match="not a member of quota group 'rec'; they may use ads"):
        resolve_group("u", ["ads"], groups, "default", requested="rec")
    with pytest.raises(UnknownNameError, match="unknown group 'zzz'"):
        resolve_group("u", ["ads"], groups, "default", requested="zzz")
    with pytest.raises(UnknownNameError, match="in no quota group"):
        resolve_group("u", [], {"ads": QuotaGroup("ads")}, "default")
