"""The least-privilege manifests of hub_config/k8s applied to the test cluster: the job backend
runs under the mlp service account and the spawner under the hub's, so a missing permission
fails these tests; the reviews below fail if the roles grant more than they should."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8skit import HOME, pv, reservations
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from mlptest import wait_for_state
from test_backend_suite import Harness, job

from mlp.backends.kubernetes import KubernetesBackend
from mlp.core.states import JobState
from mlp.devcluster import REPO, Cluster

MANIFESTS = REPO / "hub_config" / "k8s"


def load(name: str, namespace: str) -> list[dict[str, Any]]:
    text = (MANIFESTS / name).read_text().replace("namespace: jhub", f"namespace: {namespace}")
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture
def service_accounts(k8s: Cluster, namespace: str) -> Iterator[str]:
    for name in ("hub-rbac.yaml", "mlp-rbac.yaml"):
        for doc in load(name, namespace):
            k8s.apply_manifest(doc)
    yield namespace


def sa(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def test_roles_grant_no_more_than_needed(k8s: Cluster, service_accounts: str):
    ns = service_accounts
    for who in ("hub", "mlp"):
        user = sa(ns, who)
        assert k8s.can(user, "create", "pods", ns)
        assert not k8s.can(user, "get", "secrets", ns)
        assert not k8s.can(user, "create", "pods", "kube-system")
        assert not k8s.can(user, "update", "nodes")
        assert not k8s.can(user, "delete", "nodes")
        assert not k8s.can(user, "update", "pods", ns)
        assert not k8s.can(user, "create", "namespaces")
        assert not k8s.can(user, "create", "rolebindings", ns)
    assert k8s.can(sa(ns, "mlp"), "get", "pods", ns, "log")
    assert k8s.can(sa(ns, "mlp"), "watch", "nodes")  # to notice a node lost under a job
    assert not k8s.can(sa(ns, "hub"), "list", "nodes")
    assert not k8s.can(sa(ns, "hub"), "get", "pods", ns, "log")
    assert not k8s.can(sa(ns, "mlp"), "create", "persistentvolumeclaims", ns)
    assert not k8s.can(sa(ns, "hub"), "create", "configmaps", ns)
    assert not k8s.can(sa(ns, "mlp"), "update", "configmaps", ns)


async def test_job_backend_under_the_mlp_service_account(k8s: Cluster, service_accounts: str,
                                                         tmp_path: Path):
    ns = service_accounts
    kubeconfig = k8s.token_kubeconfig(ns, "mlp", tmp_path / "mlp.kubeconfig")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    h = Harness("kubernetes", data_dir, lambda: KubernetesBackend(
        kubeconfig=str(kubeconfig), namespace=ns, stop_grace_period=1.0, data_dir=str(data_dir),
        image="python:3.12-slim"))
    m = h.manager()
    try:
        ok = m.submit("alice", job("rbac", {"chief": 1, "worker": 1},
                                   {"SIM_CHIEF_EXIT": "0", "SIM_CHIEF_RUN": "300ms",
                                    "SIM_WORKER_EXIT": "0", "SIM_WORKER_RUN": "300ms"}))
        done = await wait_for_state(m, ok.id, {JobState.SUCCEEDED, JobState.FAILED}, 60)
        assert done.job_state == JobState.SUCCEEDED, done.reason
        j = m.submit("alice", job("rbac-cancel", {"worker": 2}))
        running = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 60)
        assert running.job_state == JobState.RUNNING, running.reason
        backend = m.backend
        assert isinstance(backend, KubernetesBackend)
        assert backend.nodes is not None
        await backend.nodes.wait_synced()  # the ClusterRole mlp-nodes lets it watch nodes
        assert backend.nodes.forbidden is None and backend.nodes.objects
        paths = backend.log_paths(j.id, running.backend_state)
        text = await backend.fetch_log(ns, f"mlp-job-{j.id}-1-worker-0", Path(paths["worker:0"]))
        assert "Forbidden" not in text and "forbidden" not in text, text
        await m.cancel(j.id, "alice")
        await h.tasks_gone(m, j.id)
    finally:
        await m.stop()
        await m.backend.close()  # type: ignore[attr-defined]


async def test_without_the_node_grant_jobs_run_and_the_log_says_what_is_missing(
        k8s: Cluster, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    for doc in load("mlp-rbac.yaml", namespace):
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):  # no ClusterRole mlp-nodes
            k8s.apply_manifest(doc)
    assert not k8s.can(sa(namespace, "mlp"), "watch", "nodes")
    kubeconfig = k8s.token_kubeconfig(namespace, "mlp", tmp_path / "mlp.kubeconfig")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = logging.getLogger("test.k8s.no-node-grant")
    caplog.set_level(logging.WARNING, logger=log.name)
    h = Harness("kubernetes", data_dir, lambda: KubernetesBackend(
        kubeconfig=str(kubeconfig), namespace=namespace, stop_grace_period=1.0,
        data_dir=str(data_dir), image="python:3.12-slim", log=log))
    m = h.manager()
    try:
        j = m.submit("alice", job("no-nodes", {"worker": 1}))
        running = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 60)
        assert running.job_state == JobState.RUNNING, running.reason
        backend = m.backend
        assert isinstance(backend, KubernetesBackend) and backend.nodes is not None
        for _ in range(1200):
            if backend.nodes.forbidden:
                break
            await asyncio.sleep(0.05)
        assert backend.nodes.forbidden and "nodes" in backend.nodes.forbidden
        assert "may not watch nodes" in caplog.text and "ClusterRole mlp-nodes" in caplog.text
        await m.cancel(j.id, "alice")
        await h.tasks_gone(m, j.id)
    finally:
        await m.stop()
        await m.backend.close()  # type: ignore[attr-defined]


async def test_spawner_under_the_hub_service_account(k8s: Cluster, service_accounts: str,
                                                     make_spawner: Any, ledger: dict[str, Any],
                                                     tmp_path: Path):
    ns = service_accounts
    kubeconfig = k8s.token_kubeconfig(ns, "hub", tmp_path / "hub.kubeconfig")
    cfg = kclient.Configuration()
    await kconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    kclient.Configuration.set_default(cfg)  # the spawner's client now acts as the hub's account
    pv(k8s, "rbac-user")
    sp = make_spawner("rbac-user", **HOME)
    sp.user_options = {"profile": "small"}
    await sp.start()
    assert "rbac-user/" in reservations(ledger)
    assert await sp.poll() is None
    await sp.stop()
    assert "rbac-user/" not in reservations(ledger)
