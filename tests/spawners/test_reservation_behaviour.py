"""One reservation behaviour, two spawners: every test runs with the embedded LocalMLPSpawner
(a real process in a real cgroup) and with QuotaKubeSpawner (a real pod on the real API server),
both against the real mlp service and its ledger.

- the reservation exists before the server's first process or object;
- stopping releases it; a server found gone (crashed) gives it back at the next poll;
- over quota: refused with the ledger's numbers, nothing created, nothing reserved;
- a tampered request (a size not offered, fields of its own) is refused before anything;
- the mlp service down, or its answers lost: a clear 503, nothing created, nothing reserved;
- reservations of servers that no longer exist are reclaimed by the service (and, embedded,
  what was left in the server's cgroup with them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from mlp_spawner.reservations import ReservationRefused
from spawnkit import GROUP, RECLAIM_GRACE, Driver, held_async
from tcpproxy import AnswerGate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def start_observed(driver: Driver, sp: Any) -> dict[str, Any]:
    """Start sp; returns the ledger as it was when its first process/object came to exist."""
    watch = asyncio.ensure_future(driver.watch(sp))
    await asyncio.sleep(0)
    try:
        await sp.start()
    except BaseException:
        watch.cancel()
        raise
    return await asyncio.wait_for(watch, 90)


async def assert_nothing_of(driver: Driver, ledger: dict[str, Any], sp: Any) -> None:
    key = f"{sp.user.name}/{sp.name}"
    assert key not in await held_async(ledger), f"{key} leaked a reservation"
    assert not await driver.exists(sp), f"{key} left a server behind"


async def test_reserves_before_anything_is_created_and_releases_on_stop(driver, ledger):
    sp = driver.make(f"{driver.kind}-ann")
    sp.user_options = {"profile": "medium"}
    seen = await start_observed(driver, sp)
    key = f"{driver.kind}-ann/"
    assert key in seen["reservations"], f"the server existed before its reservation: {seen}"
    mine = (await held_async(ledger))[key]
    assert mine["amount"]["cpu"] == 2 and mine["amount"]["memory"] == 8 * 2**30, mine
    assert mine["group"] == GROUP, mine
    assert await driver.exists(sp)
    assert await sp.poll() is None
    # progress() tells the user what was reserved, in the same words for both spawners.
    events, messages = sp.progress(), []
    with contextlib.suppress(StopAsyncIteration):
        while len(messages) < 2:
            messages.append((await asyncio.wait_for(events.__anext__(), 30))["message"])
    await events.aclose()
    assert f"Reserved 2 CPU, 8Gi memory in the quota ledger (group {GROUP})" in messages, messages
    if driver.kind == "local":
        # The server sees the GPU devices of its reservation ("" for none); a service that
        # does not allocate devices leaves the variable alone.
        devices = mine.get("devices")
        expected = None if devices is None else ",".join(devices)
        assert seen["CUDA_VISIBLE_DEVICES"] == expected, (seen, mine)
    await sp.stop()
    await assert_nothing_of(driver, ledger, sp)
    assert sp.reservation_id is None


async def test_a_gpu_size_reserves_its_gpu_and_the_server_gets_exactly_its_devices(driver, ledger):
    sp = driver.make(f"{driver.kind}-gus")
    sp.user_options = {"profile": "gpu"}
    seen = await start_observed(driver, sp)
    mine = (await held_async(ledger))[f"{driver.kind}-gus/"]
    assert mine["amount"]["gpu"] == 1, mine
    if driver.kind == "local":
        # The devices the ledger allocated to this reservation, and no others; a service that
        # does not allocate devices leaves the variable alone.
        devices = mine.get("devices")
        if devices is not None:
            assert len(devices) == 1, mine
        expected = None if devices is None else ",".join(devices)
        assert seen["CUDA_VISIBLE_DEVICES"] == expected, (seen, mine)
    else:
        pod = await driver.api.read_namespaced_pod(sp.pod_name, driver.namespace)
        res = pod.spec.containers[0].resources
        assert res.requests["nvidia.com/gpu"] == res.limits["nvidia.com/gpu"] == "1"
    await sp.stop()
    await assert_nothing_of(driver, ledger, sp)


async def test_over_quota_is_refused_with_the_numbers_and_creates_nothing(driver, ledger):
    user = f"{driver.kind}-bo"
    first = driver.make(user)
    first.user_options = {"profile": "medium"}  # 2 cpu: bo's whole member cap
    await first.start()
    second = driver.make(user, "second")
    second.user_options = {"profile": "small"}
    with pytest.raises(ReservationRefused) as e:
        await second.start()
    assert e.value.status_code == 409
    msg = str(e.value)
    assert msg.startswith("Over quota: 1 CPU, 2Gi memory requested for this server, but "), msg
    assert GROUP in msg and "cpu" in msg and "2" in msg, msg  # the ledger's own numbers
    await assert_nothing_of(driver, ledger, second)
    assert f"{user}/" in await held_async(ledger)  # the first server keeps its own
    await first.stop()
    await assert_nothing_of(driver, ledger, first)


@pytest.mark.parametrize("options, status, says", [
    ({"profile": "huge"}, 400, "'huge' is not offered"),
    ({"profile": "small", "cpu": 64}, 400, "['cpu'] are not offered"),
    ({"profile": "small", "mem_limit": "1Ti"}, 400, "['mem_limit'] are not offered"),
])
async def test_a_tampered_request_is_refused_before_anything_is_reserved(driver, ledger, options,
                                                                         status, says):
    sp = driver.make(f"{driver.kind}-cy")
    sp.user_options = options
    with pytest.raises(ReservationRefused) as e:
        await sp.start()
    assert e.value.status_code == status and says in str(e.value), str(e.value)
    await assert_nothing_of(driver, ledger, sp)


async def test_a_size_beyond_the_cap_is_refused_and_creates_nothing(driver, ledger):
    # "large" (4 cpu) is more than the member cap (2): the Kubernetes spawner does not offer
    # it (400), the embedded spawner shows it disabled and the ledger refuses it (409).
    sp = driver.make(f"{driver.kind}-di")
    sp.user_options = {"profile": "large"}
    with pytest.raises(ReservationRefused) as e:
        await sp.start()
    expected = {"kube": (400, "'large' is not offered"), "local": (409, "Over quota: 4 CPU")}
    code, says = expected[driver.kind]
    assert e.value.status_code == code and says in str(e.value), str(e.value)
    await assert_nothing_of(driver, ledger, sp)


async def test_the_mlp_service_down_fails_clearly_and_leaks_nothing(driver, ledger):
    from mlp.devcluster import free_port

    sp = driver.make(f"{driver.kind}-ed",
                     mlp_api_url=f"http://127.0.0.1:{free_port()}/services/mlp/api/v1",
                     mlp_api_retries=2, mlp_api_backoff=0.1)
    if driver.kind == "kube":
        # Its sizes are offered by the quota, which the service would say; fix them here.
        sp.profile_list = [{"slug": "small", "display_name": "small", "kubespawner_override": {
            "cpu_limit": 1, "mem_limit": "2G"}}]
    sp.user_options = {"profile": "small"}
    with pytest.raises(ReservationRefused) as e:
        await sp.start()
    msg = str(e.value)
    assert e.value.status_code == 503, msg
    assert "mlp service is not reachable" in msg and "after 3 tries" in msg, msg
    assert "nothing was reserved and no server was started" in msg, msg
    await assert_nothing_of(driver, ledger, sp)  # asked of the real (running) service


async def test_reservations_whose_answer_was_lost_are_given_back(driver, ledger, suite_hub):
    # The service reserves, but its answers never reach the spawner (it dies while answering,
    # a network cut): the spawn fails clearly and the reservations that landed are given back.
    port = int(suite_hub.url.rsplit(":", 1)[1])
    async with AnswerGate(port, "POST /services/mlp/api/v1/reservations") as gate:
        sp = driver.make(f"{driver.kind}-hal",
                         mlp_api_url=f"http://127.0.0.1:{gate.port}/services/mlp/api/v1",
                         mlp_api_timeout=2, mlp_api_retries=1, mlp_api_backoff=0.1)
        sp.user_options = {"profile": "small"}
        if driver.kind == "kube":
            await sp.load_user_options()  # the sizes, read through the gate
        with pytest.raises(ReservationRefused) as e:
            await sp.start()
    assert e.value.status_code == 503 and "mlp service is not reachable" in str(e.value)
    assert gate.dropped == 2, gate.dropped  # both tries landed
    await assert_nothing_of(driver, ledger, sp)


async def test_a_server_found_gone_gives_its_reservation_back(driver, ledger):
    sp = driver.make(f"{driver.kind}-flo")
    sp.user_options = {"profile": "small"}
    await sp.start()
    assert f"{driver.kind}-flo/" in await held_async(ledger)
    await driver.crash(sp)
    deadline = time.monotonic() + 60
    while await sp.poll() is None:  # the hub polls every 30 s; kubespawner's reflector lags
        assert time.monotonic() < deadline, "the crashed server still polls as running"
        await asyncio.sleep(0.2)
    await assert_nothing_of(driver, ledger, sp)


async def test_reservations_of_servers_that_no_longer_exist_are_reclaimed(driver, ledger,
                                                                          suite_hub):
    user = f"{driver.kind}-gil"
    sp = driver.make(user, "lost")
    sp.user_options = {"profile": "small"}
    await sp.start()
    assert f"{user}/lost" in await held_async(ledger)
    await driver.orphan(sp)  # the hub does not know this server (it never did, here)
    deadline = time.monotonic() + RECLAIM_GRACE + 60
    while f"{user}/lost" in await held_async(ledger):
        assert time.monotonic() < deadline, suite_hub.log_tail()
        await asyncio.sleep(0.5)
    assert f"reclaimed the reservation of {user}'s server 'lost'" in suite_hub.log_path.read_text()
    # Embedded: the server's cgroup went with it, and the process that was still in it.
    if not driver.reclaim_ends_leftovers:
        return
    deadline = time.monotonic() + 30
    while await driver.exists(sp):
        assert time.monotonic() < deadline, f"{user}'s lost server outlived its reservation"
        await asyncio.sleep(0.2)
