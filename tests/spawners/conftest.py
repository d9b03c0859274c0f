"""Fixtures of the spawner behaviour suite: one real hub + mlp service (its reclaim loop fast),
the session's real Kubernetes control plane (`k8s`, tests/conftest.py), and a `driver` per spawner that
builds spawners as the hub would and says what of a server exists: the embedded
LocalMLPSpawner (a real process in a real cgroup when the machine has cgroups) and
QuotaKubeSpawner (a real pod on a kwok node).

Each server's first moment is observed for real: the local server's command is a probe that,
once started, reads the ledger and writes what it saw; for Kubernetes, a watch on the namespace
reads the ledger as soon as the pod is ADDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import sys
import time
import urllib.error
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from mlptest import Hub, quota_sandbox, start_hub, stop_hub
from spawnkit import GPU_SIZE, GROUP, POOL, RECLAIM_GRACE, SIZES, Driver, held_async, join

from mlp.devcluster import Cluster

PROBE = Path(__file__).with_name("probe_server.py")
_counter = itertools.count()


@pytest.fixture(scope="session")
def suite_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub whose mlp service reclaims reservations of servers the hub does not know after
    RECLAIM_GRACE seconds (checked every second)."""
    hub = start_hub(tmp_path_factory.mktemp("suitehub"), [
        "--MLPService.poll_interval=0.2", "--MLPService.reclaim_interval=1",
        f"--MLPService.reclaim_grace={RECLAIM_GRACE}"])
    yield hub
    stop_hub(hub)


@pytest.fixture(scope="session")
def ledger(suite_hub: Hub) -> dict[str, Any]:
    return quota_sandbox(suite_hub, POOL, GROUP)


# --------------------------------------------------------------------------- embedded
class LocalDriver(Driver):
    kind = "local"

    def __init__(self, hub: Hub, ledger: dict[str, Any], tmp: Path):
        from mlp.isolation import MLPIsolation

        self.hub, self.ledger, self.tmp = hub, ledger, tmp
        # The hub's own cgroup parent: the mlp service's reclaim removes these servers' cgroups.
        self.isolation = MLPIsolation(data_dir=str(hub.data_dir), multi_user=False,
                                      account_prefix=hub.prefix,
                                      cgroup_parent=f"mlp-test-{hub.prefix[:-1]}")
        self.made: list[Any] = []
        self.reclaim_ends_leftovers = self.isolation.cgroups.available

    def make(self, user: str, server: str = "", **traits: Any) -> Any:
        from mlp_spawner.local import LocalMLPSpawner

        join(self.hub, user)
        out = self.tmp / f"probe-{next(_counter)}.json"
        options: dict[str, Any] = {
            "data_dir": str(self.tmp / "data"),
            "mlp_api_url": self.ledger["url"],
            "mlp_api_token": self.ledger["admin_token"],
            "quota_pool": POOL,
            "profile_list": [
                {"slug": s, "display_name": s, "default": s == "small",
                 "resources": {"cpu": str(c), "memory": m}} for s, c, m in SIZES] + [
                {"slug": GPU_SIZE[0], "display_name": GPU_SIZE[0], "resources": {
                    "cpu": str(GPU_SIZE[1]), "memory": GPU_SIZE[2], "gpu": GPU_SIZE[3]}}],
            "cmd": [sys.executable, str(PROBE)],
            "environment": {"PROBE_URL": self.ledger["url"] + "/reservations",
                            "PROBE_TOKEN": self.ledger["admin_token"], "PROBE_OUT": str(out)},
        }
        options.update(traits)
        sp = LocalMLPSpawner(
            user=SimpleNamespace(name=user, id=abs(hash(user)) % 10**6, url=f"/user/{user}/",
                                 spawners={}),
            orm_spawner=SimpleNamespace(name=server, server=None, last_activity=None),
            hub=SimpleNamespace(public_host="", api_url="http://127.0.0.1:1/hub/api",
                                base_url="/hub/", url="http://127.0.0.1:1/hub/"),
            isolation=self.isolation,
            **options,
        )
        sp.api_token = secrets.token_hex(16)
        sp.probe_out = out
        self.made.append(sp)
        return sp

    async def watch(self, sp: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while not sp.probe_out.exists() or not sp.probe_out.read_text().endswith("\n"):
            assert time.monotonic() < deadline, "the server's probe wrote nothing in 60 s"
            await asyncio.sleep(0.05)
        return json.loads(sp.probe_out.read_text())  # type: ignore[no-any-return]

    def _cgroup_exists(self, sp: Any) -> bool:
        from mlp.isolation.names import server_cgroup_name

        driver = self.isolation.cgroups
        if not driver.available:
            return False
        cg = driver.cgroup(server_cgroup_name(sp.user.name, sp.name))
        return any(d.exists() for d in cg.dirs.values())

    async def exists(self, sp: Any) -> bool:
        alive = bool(sp.pid) and psutil.pid_exists(sp.pid) and \
            psutil.Process(sp.pid).status() != psutil.STATUS_ZOMBIE
        return alive or self._cgroup_exists(sp)

    async def crash(self, sp: Any) -> None:
        os.kill(sp.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while psutil.Process(sp.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"pid {sp.pid} survived SIGKILL"
            await asyncio.sleep(0.05)

    async def orphan(self, sp: Any) -> None:
        sp.proc = None  # the hub that started it is gone; its process and cgroup stay

    async def cleanup(self) -> None:
        for sp in self.made:
            if sp.pid and psutil.pid_exists(sp.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(sp.pid, signal.SIGKILL)
            if sp.reservation_id:
                await sp.release_server()
        if self.isolation.cgroups.available:
            for sp in self.made:
                with contextlib.suppress(Exception):
                    from mlp.isolation.names import server_cgroup_name

                    self.isolation.cgroups.cgroup(server_cgroup_name(sp.user.name, sp.name)).remove()


# --------------------------------------------------------------------------- Kubernetes
# The control plane is the session's `k8s` fixture (tests/conftest.py), shared with tests/k8s.


class KubeDriver(Driver):
    kind = "kube"

    def __init__(self, hub: Hub, ledger: dict[str, Any], k8s: Cluster, namespace: str,
                 api: Any):
        self.hub, self.ledger, self.k8s, self.namespace, self.api = hub, ledger, k8s, namespace, api
        self.made: list[Any] = []

    def make(self, user: str, server: str = "", **traits: Any) -> Any:
        from mlp_spawner.kube import QuotaKubeSpawner

        join(self.hub, user)
        options: dict[str, Any] = {
            "namespace": self.namespace,
            "mlp_api_url": self.ledger["url"],
            "mlp_api_token": self.ledger["admin_token"],
            "quota_pool": POOL,
            "image": "quay.io/jupyter/base-notebook",
            "start_timeout": 60,
            "storage_pvc_ensure": False,
            "volumes": [],
            "volume_mounts": [],
            "delete_grace_period": 1,
            "k8s_api_request_retry_timeout": 10,
            "sizes": [{"slug": s, "cpu": c, "memory": m, "default": s == "small"}
                      for s, c, m in SIZES] + [dict(zip(("slug", "cpu", "memory", "gpu"),
                                                        GPU_SIZE, strict=True))],
        }
        options.update(traits)
        sp = QuotaKubeSpawner(
            user=SimpleNamespace(name=user, id=abs(hash(user)) % 10**6, url=f"/user/{user}/",
                                 spawners={}),
            orm_spawner=SimpleNamespace(name=server, server=None, last_activity=None),
            _mock=True, **options,
        )
        sp.api_token = secrets.token_hex(16)
        self.made.append(sp)
        return sp

    async def watch(self, sp: Any) -> dict[str, Any]:
        from kubernetes_asyncio import watch

        w = watch.Watch()
        async with w.stream(self.api.list_namespaced_pod, self.namespace,
                            timeout_seconds=90) as stream:
            async for event in stream:
                if event["type"] == "ADDED" and event["object"].metadata.name == sp.pod_name:
                    seen = await held_async(self.ledger)
                    w.stop()
                    return {"reservations": seen}
        raise AssertionError(f"pod {sp.pod_name} was not created within 90 s")

    async def exists(self, sp: Any) -> bool:
        from kubernetes_asyncio.client import ApiException

        try:
            await self.api.read_namespaced_pod(sp.pod_name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def crash(self, sp: Any) -> None:
        await self.api.delete_namespaced_pod(sp.pod_name, self.namespace, grace_period_seconds=0)
        deadline = time.monotonic() + 60
        while await self.exists(sp):
            assert time.monotonic() < deadline, self.k8s.log("kwok")
            await asyncio.sleep(0.2)

    async def orphan(self, sp: Any) -> None:
        await self.crash(sp)  # nothing of it runs any more; the hub does not know it

    reclaim_ends_leftovers = True  # nothing is left

    async def cleanup(self) -> None:
        from mlp_spawner.kube import QuotaKubeSpawner

        for sp in self.made:
            if sp.reservation_id:
                await sp.stop(now=True)
        await QuotaKubeSpawner._stop_all_reflectors()


@pytest.fixture(params=["local", "kube"])
async def driver(request: pytest.FixtureRequest, suite_hub: Hub, ledger: dict[str, Any],
                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Driver]:
    d: Any
    if request.param == "local":
        d = LocalDriver(suite_hub, ledger, tmp_path)
        yield d
        await d.cleanup()
        return
    k8s: Cluster = request.getfixturevalue("k8s")
    from kubernetes_asyncio import client as kclient
    from kubernetes_asyncio import config as kconfig

    name = f"s{next(_counter)}"
    k8s.request("POST", "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    k8s.wait_for(lambda: k8s.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default"),
                 f"service account default in {name}", "kube-controller-manager")
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
    cfg = kclient.Configuration()
    await kconfig.load_kube_config(config_file=str(k8s.kubeconfig), client_configuration=cfg)
    kclient.Configuration.set_default(cfg)
    # kubespawner loads the process-wide client configuration once; here it is the test
    # cluster's, just set.
    import kubespawner.spawner

    monkeypatch.setattr(kubespawner.spawner, "load_config", lambda **kw: None)
    api_client = kclient.ApiClient(configuration=cfg)
    d = KubeDriver(suite_hub, ledger, k8s, name, kclient.CoreV1Api(api_client))
    yield d
    await d.cleanup()
    await api_client.close()
    with contextlib.suppress(urllib.error.URLError):
        k8s.request("DELETE", f"/api/v1/namespaces/{name}")
