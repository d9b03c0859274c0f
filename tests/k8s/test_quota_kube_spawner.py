"""QuotaKubeSpawner against the real API server and a real mlp service (behind a real hub): what
is its own (guarantee = limit, sizes offered by quota, a home PVC kept across stops, safe names,
second fences, a slow mlp service retried). The reservation behaviour it shares with the
embedded spawner (reserve before creating, release, refusals with numbers, the mlp service
down, reclaim) is tests/spawners/test_reservation_behaviour.py."""

from __future__ import annotations

import contextlib
import urllib.error

import pytest
from k8skit import GROUP, HOME, POOL, pv, reservations
from kubernetes_asyncio import client as kclient
from mlp_spawner.reservations import ReservationRefused
from tcpproxy import FlakyProxy


async def test_reserve_start_stop_release_and_keep_the_home(make_spawner, ledger, k8s, namespace,
                                                            kube_client):
    pv(k8s, "kim")
    sp = make_spawner("kim", **HOME)
    sp.user_options = {"profile": "medium"}
    url = await sp.start()
    assert url.endswith(":8888"), url
    held = reservations(ledger)["kim/"]
    assert held["amount"]["cpu"] == 2 and held["amount"]["memory"] == 8 * 2**30
    assert held["group"] == GROUP and held["pool"] == POOL
    pod = await kube_client.read_namespaced_pod(sp.pod_name, namespace)
    res = pod.spec.containers[0].resources
    assert res.requests == res.limits == {"cpu": "2", "memory": str(8 * 2**30)}
    assert pod.status.phase == "Running"
    assert await sp.poll() is None
    pvc = await kube_client.read_namespaced_persistent_volume_claim("claim-kim", namespace)
    assert pvc.status.phase == "Bound" and pvc.spec.volume_name == "pv-kim"
    await sp.stop()
    assert "kim/" not in reservations(ledger)
    assert await sp.poll() is not None
    # The home claim survives the stop (and culling, which is a stop) and is used again.
    pvc = await kube_client.read_namespaced_persistent_volume_claim("claim-kim", namespace)
    uid = pvc.metadata.uid
    sp2 = make_spawner("kim", **HOME)
    sp2.user_options = {"profile": "small"}
    await sp2.start()
    pvc = await kube_client.read_namespaced_persistent_volume_claim("claim-kim", namespace)
    assert pvc.metadata.uid == uid
    await sp2.stop()


async def test_only_sizes_within_the_cap_are_offered(make_spawner):
    sp = make_spawner("mo")
    profiles = await sp.profile_list(sp)
    assert [p["slug"] for p in profiles] == ["small", "medium"]  # cap: 2 cpu, 8Gi
    sp.user_options = {"profile": "large"}
    with pytest.raises(ReservationRefused, match="'large' is not offered; choose one of small, "
                       "medium") as e:
        await sp.load_user_options()
    assert e.value.status_code == 400


async def test_gpu_size_reserves_and_requests_a_gpu(make_spawner, ledger, k8s, namespace,
                                                     kube_client):
    pv(k8s, "gus")
    sp = make_spawner("gus", sizes=[{"slug": "gpu", "cpu": 1, "memory": "4Gi", "gpu": 1}], **HOME)
    sp.user_options = {"profile": "gpu"}
    await sp.start()
    assert reservations(ledger)["gus/"]["amount"]["gpu"] == 1
    pod = await kube_client.read_namespaced_pod(sp.pod_name, namespace)
    res = pod.spec.containers[0].resources
    assert res.requests["nvidia.com/gpu"] == res.limits["nvidia.com/gpu"] == "1"
    assert pod.spec.node_name == "gpu-0"
    await sp.stop()
    assert "gus/" not in reservations(ledger)


@pytest.mark.parametrize("user", ["ünïcode.üser", "dots.in.a.name", "x" * 100])
async def test_awkward_user_names_get_valid_safe_names(make_spawner, user, namespace,
                                                       kube_client):
    sp = make_spawner(user, storage_pvc_ensure=False, volumes=[], volume_mounts=[])
    sp.user_options = {"profile": "small"}
    await sp.start()
    pod = await kube_client.read_namespaced_pod(sp.pod_name, namespace)
    assert pod.metadata.annotations["hub.jupyter.org/username"] == user
    assert len(sp.pod_name) <= 63 and sp.pod_name == sp.pod_name.lower()
    await sp.stop()


async def test_colliding_slugs_stay_apart(make_spawner):
    a = make_spawner("ana.b", storage_pvc_ensure=False, join=False)
    b = make_spawner("ana-b", storage_pvc_ensure=False, join=False)
    c = make_spawner("Ana-B", storage_pvc_ensure=False, join=False)
    names = {sp.pod_name for sp in (a, b, c)} | {sp.pvc_name for sp in (a, b, c)}
    assert len(names) == 6, names
    assert all(n == n.lower() and len(n) <= 63 for n in names)


async def test_a_home_claim_owned_by_someone_else_is_refused(make_spawner, ledger, k8s,
                                                             namespace, kube_client):
    k8s.request("POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "claim-ola", "annotations": {"hub.jupyter.org/username": "mallory"}},
        # It selects a volume that does not exist: a claim without a selector would bind any
        # free "manual" volume, even one a later test made for another user.
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                 "selector": {"matchLabels": {"mlp-home": "no-such-volume"}},
                 "resources": {"requests": {"storage": "1Gi"}}}})
    sp = make_spawner("ola")
    sp.user_options = {"profile": "small"}
    with pytest.raises(ReservationRefused, match="belongs to mallory, not ola"):
        await sp.start()
    assert "ola/" not in reservations(ledger)
    with pytest.raises(kclient.ApiException):
        await kube_client.read_namespaced_pod(sp.pod_name, namespace)


async def test_slow_mlp_service_is_retried_without_a_duplicate(make_spawner, ledger, hub, k8s):
    pv(k8s, "quin")
    port = int(hub.url.rsplit(":", 1)[1])
    async with FlakyProxy(port) as proxy:
        sp = make_spawner("quin", mlp_api_url=f"http://127.0.0.1:{proxy.port}/services/mlp/api/v1",
                          mlp_api_timeout=0.5, mlp_api_backoff=0.1, **HOME)
        sp.user_options = {"profile": "small"}
        await sp.load_user_options()  # the sizes (read with the service fast)
        proxy.delay = 1.0  # every call now times out once the client gives up at 0.5 s ...
        sp.mlp_api_retries = 6
        import asyncio

        async def recover() -> None:
            await asyncio.sleep(1.2)
            proxy.delay = 0.0  # ... until the service is fast again

        task = asyncio.ensure_future(recover())
        await sp.start()
        await task
        held = [r for r in reservations(ledger) if r.startswith("quin/")]
        assert held == ["quin/"]  # one reservation, though a slow POST may have landed twice
        await sp.stop()
        assert "quin/" not in reservations(ledger)


async def test_user_namespace_has_a_quota_mirroring_the_cap(make_spawner, k8s, kube_client):
    sp = make_spawner("ria", enable_user_namespaces=True,
                      user_namespace_template="mlp-user-{username}", storage_pvc_ensure=False,
                      volumes=[], volume_mounts=[])
    sp.user_options = {"profile": "small"}
    await sp.start()
    quota = await kube_client.read_namespaced_resource_quota("mlp-user-cap", "mlp-user-ria")
    assert quota.spec.hard == {"requests.cpu": "2", "limits.cpu": "2",
                               "requests.memory": str(8 * 2**30),
                               "limits.memory": str(8 * 2**30), "requests.nvidia.com/gpu": "1"}
    await sp.stop()
    with contextlib.suppress(urllib.error.HTTPError):
        k8s.request("DELETE", "/api/v1/namespaces/mlp-user-ria")
