"""Quotas declared in a YAML file load into the same QuotaConfig as traitlets."""

import pytest
from mlptest import REPO

from mlp.app import MLPService
from mlp.core.quota import machine_resources
from mlp.scheduling import QuotaConfig


def test_example_quota_file_builds():
    config = QuotaConfig()
    MLPService.load_quota_file(config, str(REPO / "hub_config" / "mlp_hub_config" / "examples" / "quotas.yaml"))
    machine = machine_resources()
    pools = config.build_pools(machine)
    groups = config.build_groups(machine, pools)
    assert set(pools) == {"default", "production"}
    assert pools["production"].requires_promotion
    assert groups["ads"].cohort == "ml" and groups["ads"].limit("default").gpu == 2
    assert groups["default"].limit("default").cpu == 2


@pytest.mark.parametrize("text,message", [("pools: [1, 2\n", "cannot be read as YAML"),
                                          ("colours: {}\n", "expected a mapping with keys"),
                                          ("- a\n", "expected a mapping")])
def test_bad_quota_files(tmp_path, text, message):
    path = tmp_path / "q.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        MLPService.load_quota_file(QuotaConfig(), str(path))


def test_negative_quota_is_refused_with_the_field():
    config = QuotaConfig(groups={"ads": {"limits": {"default": {"cpu": -2}}}})
    machine = machine_resources()
    with pytest.raises(ValueError, match=r"ads.*cpu"):
        config.build_groups(machine, config.build_pools(machine))
