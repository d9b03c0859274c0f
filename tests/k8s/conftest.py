"""Fixtures of the Kubernetes tests: a fresh namespace per test on the session's control plane
(the `k8s` fixture of tests/conftest.py, shared with the spawner suite), and the spawner
helpers.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import urllib.error
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from k8skit import GROUP, POOL
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from mlp_spawner.kube import QuotaKubeSpawner
from mlptest import Hub, quota_sandbox

from mlp.devcluster import Cluster

_counter = itertools.count()


@pytest.fixture
def namespace(k8s: Cluster) -> Iterator[str]:
    name = f"t{next(_counter)}"
    k8s.request("POST", "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    # Pods need the namespace's default service account, which a controller creates.
    k8s.wait_for(
        lambda: k8s.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        f"service account default in {name}", "kube-controller-manager",
    )
    yield name
    with contextlib.suppress(urllib.error.URLError):
        k8s.request("DELETE", f"/api/v1/namespaces/{name}")


# --------------------------------------------------------------------------- spawners


@pytest.fixture(scope="session")
def ledger(hub: Hub) -> dict[str, Any]:
    return quota_sandbox(hub, POOL, GROUP)


@pytest.fixture
async def kube_client(k8s: Cluster) -> AsyncIterator[kclient.CoreV1Api]:
    cfg = kclient.Configuration()
    await kconfig.load_kube_config(config_file=str(k8s.kubeconfig), client_configuration=cfg)
    api = kclient.ApiClient(configuration=cfg)
    yield kclient.CoreV1Api(api)
    await api.close()


@pytest.fixture
async def make_spawner(k8s: Cluster, hub: Hub, ledger: dict[str, Any], namespace: str,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    """Builds spawners as the hub would for a user (who joins the test group)."""
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
    cfg = kclient.Configuration()
    await kconfig.load_kube_config(config_file=str(k8s.kubeconfig), client_configuration=cfg)
    kclient.Configuration.set_default(cfg)
    # kubespawner loads the process-wide client configuration once (in-cluster, else the
    # default kubeconfig); here it is the one just set from the test cluster's kubeconfig.
    import kubespawner.spawner

    monkeypatch.setattr(kubespawner.spawner, "load_config", lambda **kw: None)
    made: list[QuotaKubeSpawner] = []

    def make(user: str, server: str = "", join: bool = True, **traits: Any) -> QuotaKubeSpawner:
        if join:
            hub.user_token(user)
            r = hub.hub_api("POST", f"/groups/{GROUP}/users", json={"users": [user]})
            assert r.status_code == 200, r.text
        options = {
            "namespace": namespace,
            "mlp_api_url": ledger["url"],
            "mlp_api_token": ledger["admin_token"],
            "quota_pool": POOL,
            "image": "quay.io/jupyter/base-notebook",
            "start_timeout": 60,
            "storage_class": "manual",
            "storage_capacity": "1Gi",
            "delete_grace_period": 1,
            "k8s_api_request_retry_timeout": 10,
        }
        options.update(traits)
        sp = QuotaKubeSpawner(
            user=SimpleNamespace(name=user, id=abs(hash(user)) % 10**6, url=f"/user/{user}/",
                                 spawners={}),
            orm_spawner=SimpleNamespace(name=server, server=None, last_activity=None),
            _mock=True, **options,
        )
        sp.api_token = secrets.token_hex(16)
        made.append(sp)
        return sp

    yield make
    for sp in made:
        if sp.reservation_id:
            await sp.stop(now=True)
    await QuotaKubeSpawner._stop_all_reflectors()


