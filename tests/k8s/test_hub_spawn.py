"""The hub's own spawn path with QuotaKubeSpawner: a real JupyterHub (hub_config plus the Kubernetes
spawner) spawns through its REST API; the reservation is made, the pod reaches Running on a kwok
node, and stopping the server through the hub releases the reservation and deletes the pod.
Over quota, the progress stream carries the ledger's numbers and nothing is created."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from mlptest import Hub, start_hub, stop_hub

from mlp.devcluster import Cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kube_hub(k8s: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    ns = "hubspawn"
    k8s.apply("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": ns}})
    k8s.wait_for(lambda: k8s.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default"),
                 "default service account", "kube-controller-manager")
    token = secrets.token_hex(24)
    hub_config = f"""
c.JupyterHub.spawner_class = "mlp_spawner.kube.QuotaKubeSpawner"
# The embedded config's own spawner service is replaced by this one (its token is known here).
c.JupyterHub.services = [s for s in c.JupyterHub.services if s["name"] != "mlp-spawner"]
c.JupyterHub.load_roles = [r for r in c.JupyterHub.load_roles if r["name"] != "mlp-spawner"]
c.JupyterHub.services.append({{"name": "mlp-spawner", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{"name": "mlp-spawner", "services": ["mlp-spawner"],
    "scopes": ["custom:mlp:admin", "access:services!service=mlp"]}})
c.QuotaKubeSpawner.mlp_api_token = {token!r}
import os
c.QuotaKubeSpawner.mlp_api_url = (
    "http://127.0.0.1:" + os.environ["MLP_SERVICE_PORT"] + "/services/mlp/api/v1")
c.QuotaKubeSpawner.namespace = {ns!r}
c.QuotaKubeSpawner.storage_pvc_ensure = False
c.QuotaKubeSpawner.volumes = []
c.QuotaKubeSpawner.volume_mounts = []
c.QuotaKubeSpawner.image = "quay.io/jupyter/base-notebook"
c.QuotaKubeSpawner.sizes = [{{"slug": "small", "cpu": 1, "memory": "2Gi"}},
                            {{"slug": "huge", "cpu": 3, "memory": "2Gi"}}]
c.JupyterHub.allow_named_servers = True
c.Spawner.http_timeout = 8
c.Spawner.start_timeout = 60
"""
    service_config = (
        "c.QuotaConfig.groups = {'capped': {'limits': {'default': {'cpu': 64, 'memory': '256Gi'}},"
        " 'member_cap': {'cpu': 3, 'memory': '8Gi'}}}\n"
        "c.QuotaConfig.default_group = 'capped'\n"
    )
    tmp = tmp_path_factory.mktemp("kubehub")
    hub = start_hub(tmp, ["--MLPService.poll_interval=0.2"], service_config, hub_config,
                    {"KUBECONFIG": str(k8s.kubeconfig)})
    # the spawner reaches the mlp service directly (the hub's service URL)
    yield hub
    stop_hub(hub)


def progress(hub: Hub, user: str, server: str = "", timeout: float = 90) -> list[dict[str, Any]]:
    path = f"/users/{user}/servers/{server}/progress" if server else f"/users/{user}/server/progress"
    events = []
    with hub.hub_api("GET", path, stream=True, timeout=timeout) as r:
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                events.append(event)
                if event.get("failed") or event.get("ready"):
                    break
    return events


def admin_api(hub: Hub) -> Any:
    token = hub.user_token("admin", admin=True)

    def call(method: str, path: str) -> Any:
        return requests.request(method, f"{hub.url}/services/mlp/api/v1{path}", timeout=30,
                                headers={"Authorization": f"token {token}"}).json()
    return call


def test_spawn_reserves_runs_the_pod_and_releases_when_stopped(kube_hub: Hub, k8s: Cluster):
    hub = kube_hub
    hub.user_token("una")
    api = admin_api(hub)
    r = hub.hub_api("POST", "/users/una/server", json={"profile": "small"})
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 60
    pod: dict[str, Any] = {}
    while True:
        items = k8s.request("GET", "/api/v1/namespaces/hubspawn/pods?labelSelector="
                                   "hub.jupyter.org%2Fusername%3Duna")["items"]
        if items and items[0]["status"].get("phase") == "Running":
            pod = items[0]
            break
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.2)
    held = {x["id"]: x for x in api("GET", "/reservations")["reservations"]}
    assert held["una/"]["amount"]["cpu"] == 1
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"] == res["limits"]
    events = progress(hub, "una")
    assert events[-1].get("ready") or events[-1].get("failed"), events
    # Stopping the server (as the idle culler does) releases the reservation.
    hub.hub_api("DELETE", "/users/una/server")
    deadline = time.monotonic() + 60
    while "una/" in {x["id"] for x in api("GET", "/reservations")["reservations"]}:
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.3)
    k8s.wait_for(lambda: not k8s.request("GET", "/api/v1/namespaces/hubspawn/pods?labelSelector="
                                               "hub.jupyter.org%2Fusername%3Duna")["items"],
                 "una's pod deleted", "kwok")


def test_over_quota_spawn_fails_with_the_numbers_on_the_progress_page(kube_hub: Hub,
                                                                       k8s: Cluster):
    hub = kube_hub
    hub.user_token("vic")
    api = admin_api(hub)
    r = hub.hub_api("POST", "/users/vic/server", json={"profile": "huge"})  # 3 cpu: the cap
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 60
    while "vic/" not in {x["id"] for x in api("GET", "/reservations")["reservations"]}:
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.2)
    r = hub.hub_api("POST", "/users/vic/servers/two", json={"profile": "small"})
    assert r.status_code in (201, 202, 409), r.text  # 409: refused within the first second
    events = progress(hub, "vic", server="two")
    failed = events[-1]
    assert failed.get("failed"), events
    assert "Over quota: 1 CPU, 2Gi memory requested for this server" in failed["message"]
    pods = k8s.request("GET", "/api/v1/namespaces/hubspawn/pods")["items"]
    assert not [p for p in pods
                if p["metadata"]["annotations"].get("hub.jupyter.org/servername") == "two"]
    assert "vic/two" not in {x["id"] for x in api("GET", "/reservations")["reservations"]}
    hub.hub_api("DELETE", "/users/vic/server")
