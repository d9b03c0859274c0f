"""The ledger's per-device GPU allocation: each holder owns its own devices of its pool."""

from __future__ import annotations

import pytest
from quota_fixtures import r

from mlp.scheduling import QuotaConfig, Resources
from mlp.scheduling.ledger import Ledger
from mlp.scheduling.model import Pool, QuotaExceeded, QuotaGroup

BIG = r(64, 256, 4)


def ledger(devices: tuple[str, ...] | None = None, gpus: int = 2) -> Ledger:
    pool = Pool("default", r(64, 256, gpus), devices=devices)
    return Ledger([pool], [QuotaGroup("g", limits={"default": r(64, 256, gpus)})])


def test_two_jobs_get_disjoint_devices_and_a_third_is_refused():
    led = ledger()
    a = led.reserve("a", "ann", "g", "default", r(1, 1, 1), now=0)
    b = led.reserve("b", "bob", "g", "default", r(1, 1, 1), now=0)
    assert (a.devices, b.devices) == (("0",), ("1",))
    with pytest.raises(QuotaExceeded) as refused:
        led.reserve("c", "ann", "g", "default", r(1, 1, 1), now=0)
    assert refused.value.blocking[0].resource == "gpu"
    assert led.free_devices("default") == []
    led.release("a")
    c = led.reserve("c", "ann", "g", "default", r(1, 1, 1), now=1)
    assert c.devices == ("0",)  # the released device, never b's
    assert led.violations() == []


def test_a_cpu_holder_gets_no_device_and_a_server_none_of_a_jobs():
    led = ledger(gpus=3)
    server = led.reserve("server:ann/", "ann", "g", "default", r(1, 1, 1), kind="server", now=0)
    cpu = led.reserve("cpu", "ann", "g", "default", r(1, 1, 0), now=0)
    job = led.reserve("job", "bob", "g", "default", r(1, 1, 2), now=0)
    assert cpu.devices == ()
    assert set(server.devices).isdisjoint(job.devices) and len(job.devices) == 2
    assert led.device_owners("default") == {"0": "server:ann/", "1": "job", "2": "job"}


def test_an_explicit_device_list_is_allocated_in_its_order():
    led = ledger(devices=("GPU-b", "GPU-a"))
    assert led.reserve("a", "ann", "g", "default", r(0, 0, 1), now=0).devices == ("GPU-b",)
    assert led.reserve("b", "ann", "g", "default", r(0, 0, 1), now=0).devices == ("GPU-a",)


def test_a_restart_keeps_every_allocation_whatever_the_order_of_the_rows():
    led = ledger(gpus=4)
    for name, gpus in (("a", 1), ("b", 2), ("c", 1)):
        led.reserve(name, "ann", "g", "default", r(1, 1, gpus), now=0)
    led.release("a")  # leaves a hole: device 0 free, 1..3 held
    held = list(led.holders())
    again = Ledger.from_holders(led.pools.values(), led.groups.values(), (), held[::-1], now=5)
    assert again.advance(5) == []
    assert {h.id: h.devices for h in again.holders()} == {h.id: h.devices for h in held}
    assert again.reserve("d", "ann", "g", "default", r(0, 0, 1), now=5).devices == ("0",)


def test_rows_without_devices_get_free_ones_after_the_recorded_ones():
    led = ledger(gpus=3)
    kept = led.reserve("kept", "ann", "g", "default", r(0, 0, 1), now=0)
    old = kept.__class__(id="old", user="bob", group="g", pool="default", amount=r(0, 0, 2))
    again = Ledger.from_holders(led.pools.values(), led.groups.values(), (), [old, kept], now=0)
    assert again.holder("kept").devices == ("0",)
    assert again.holder("old").devices == ("1", "2")
    assert again.violations() == []


def test_a_device_dropped_from_the_pool_list_is_replaced_and_capacity_repaired():
    led = ledger(devices=("0", "1", "2"), gpus=3)
    led.reserve("a", "ann", "g", "default", r(0, 0, 1), now=0)
    led.reserve("b", "ann", "g", "default", r(0, 0, 1), now=1)
    led.reserve("c", "ann", "g", "default", r(0, 0, 1), now=2)
    preempted = led.set_pool(Pool("default", r(64, 256, 2), devices=("0", "5")))
    assert [p.holder_id for p in preempted] == ["c"]  # the youngest job: over capacity
    assert led.holder("a").devices == ("0",)
    assert led.holder("b").devices == ("5",)  # "1" is no longer the pool's
    assert led.violations() == []


def test_pool_device_lists_are_checked_where_they_are_written():
    with pytest.raises(ValueError, match="lists a device twice"):
        Pool("p", r(0, 0, 2), devices=("0", "0"))
    with pytest.raises(ValueError, match="capacity says gpu 3"):
        Pool("p", r(0, 0, 3), devices=("0", "1"))
    with pytest.raises(ValueError, match="commas"):
        Pool("p", r(0, 0, 1), devices=("0,1",))
    cfg = QuotaConfig(pools={"default": {"capacity": {"cpu": 4}, "devices": ["2", "3"]}})
    pool = cfg.build_pools(Resources(cpu=4))["default"]
    assert pool.capacity.gpu == 2 and pool.device_ids == ("2", "3")
    bad = QuotaConfig(pools={"default": {"capacity": {"gpu": 1}, "devices": ["0", "1"]}})
    with pytest.raises(ValueError, match=r"QuotaConfig.pools\['default'\].*capacity says gpu 1"):
        bad.build_pools(Resources(cpu=4))
    with pytest.raises(ValueError, match="expected a list of device ids"):
        QuotaConfig(pools={"default": {"devices": "0,1"}}).build_pools(BIG)
