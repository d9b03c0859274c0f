"""What only the Kubernetes backend has: the objects it creates, gang safety, clear reasons when
the cluster refuses or removes things, a watch that survives expiry, an API server that is down
or slow, and logs from nodes without a kubelet."""

from __future__ import annotations

import asyncio
import json
import urllib.error
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mlptest import platform_data_dir, wait_for_state
from tcpproxy import FlakyProxy
from test_backend_suite import Harness, job

from mlp.backends.kubernetes import KubernetesBackend
from mlp.core.quota import job_holder_id
from mlp.core.states import JobState
from mlp.devcluster import Cluster, NodeShape


@pytest.fixture
async def kube(k8s: Cluster, namespace: str, tmp_path: Path) -> AsyncIterator[Harness]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    options: dict[str, Any] = {}

    def make() -> KubernetesBackend:
        kw = dict(kubeconfig=str(k8s.kubeconfig), namespace=namespace, stop_grace_period=1.0,
                  data_dir=str(data_dir), image="python:3.12-slim", gang_timeout=60.0,
                  api_retries=3, api_retry_backoff=0.2, api_timeout=5.0)
        kw.update(options)
        return KubernetesBackend(**kw)

    h = Harness("kubernetes", data_dir, make)
    h.options = options  # type: ignore[attr-defined]
    yield h
    for m in h.managers:
        await m.stop()
        assert isinstance(m.backend, KubernetesBackend)
        await m.backend.close()


def pods(k8s: Cluster, ns: str, selector: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    return k8s.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={quote(selector)}")[
        "items"
    ]


async def test_objects_resources_and_one_parent(kube: Harness, k8s: Cluster, namespace: str):
    m = kube.manager()
    j = m.submit("Émile.Dupont", job("gpu", {"chief": 1, "worker": 1}, cpu=2, memory="3Gi", gpu=1))
    running = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 60)
    assert running.job_state == JobState.RUNNING, running.reason
    items = pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}")
    assert len(items) == 2
    for pod in items:
        res = pod["spec"]["containers"][0]["resources"]
        assert res["requests"] == res["limits"] == {
            "cpu": "2", "memory": str(3 * 2**30), "nvidia.com/gpu": "1"}
        assert pod["metadata"]["ownerReferences"][0]["name"] == f"mlp-job-{j.id}-1"
        assert pod["metadata"]["annotations"]["mlp.jupyter.org/username"] == "Émile.Dupont"
        assert pod["metadata"]["labels"]["mlp.jupyter.org/user"] == "mile.Dupont"
        assert pod["spec"]["subdomain"] == f"mlp-job-{j.id}-1"
    svc = k8s.request("GET", f"/api/v1/namespaces/{namespace}/services/mlp-job-{j.id}-1")
    assert svc["spec"]["clusterIP"] == "None"
    addr = running.backend_state["tasks"][0]["address"]
    assert addr == f"chief-0.mlp-job-{j.id}-1.{namespace}.svc.cluster.local:2222"
    # One delete of the parent removes everything (the garbage collector follows owners).
    k8s.request("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/mlp-job-{j.id}-1")
    done = await wait_for_state(m, j.id, {JobState.FAILED}, 60)
    assert "was deleted outside mlp" in done.reason, done.reason
    k8s.wait_for(lambda: not pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}"),
                 "pods removed with their parent", "kube-controller-manager")
    k8s.wait_for(lambda: _gone(k8s, f"/api/v1/namespaces/{namespace}/services/mlp-job-{j.id}-1"),
                 "service removed with its parent", "kube-controller-manager")
    assert job_holder_id(j.id) not in m.quota.ledger


def _gone(k8s: Cluster, path: str) -> bool:
    try:
        k8s.request("GET", path)
        return False
    except urllib.error.HTTPError as e:
        return e.code == 404


async def test_gang_not_placed_in_time_is_released_and_requeued(kube: Harness):
    kube.options["gang_timeout"] = 2.0  # type: ignore[attr-defined]
    m = kube.manager()
    # Two pods of 4 GPUs each: the ledger has 8 GPUs, the cluster one node with 4.
    j = m.submit("alice", job("gang", {"worker": 2}, cpu=1, memory="1Gi", gpu=4))
    await wait_for_state(m, j.id, {JobState.RUNNING}, 60)
    requeued = await wait_for_state(m, j.id, {JobState.QUEUED, JobState.FAILED}, 60)
    assert requeued.job_state == JobState.QUEUED
    assert "not every pod was running within gang_timeout (2 s)" in requeued.reason
    assert "Insufficient nvidia.com/gpu" in requeued.reason, requeued.reason
    assert requeued.attempt >= 2  # released and requeued (again, while the cluster cannot place it)
    await m.cancel(j.id, "alice")


async def test_resource_quota_refusal_is_the_jobs_reason(kube: Harness, k8s: Cluster,
                                                         namespace: str):
    k8s.request("POST", f"/api/v1/namespaces/{namespace}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "small"},
        "spec": {"hard": {"limits.cpu": "1"}}})
    k8s.wait_for(lambda: k8s.request(
        "GET", f"/api/v1/namespaces/{namespace}/resourcequotas/small").get("status", {}).get("hard"),
        "quota status", "kube-controller-manager")
    m = kube.manager()
    j = m.submit("alice", job("big", {"worker": 2}, cpu=1, memory="1Gi"))
    done = await wait_for_state(m, j.id, {JobState.FAILED, JobState.RUNNING}, 60)
    assert done.job_state == JobState.FAILED
    assert "ResourceQuota refused it" in done.reason and "exceeded quota: small" in done.reason
    assert job_holder_id(j.id) not in m.quota.ledger
    # Nothing of the half-created attempt is left.
    k8s.wait_for(lambda: not pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}"),
                 "no pods left", "kube-controller-manager")


async def test_a_pod_deleted_behind_our_back_fails_the_job_clearly(kube: Harness, k8s: Cluster,
                                                                   namespace: str):
    m = kube.manager()
    j = m.submit("alice", job("victim", {"worker": 2}))
    await wait_for_state(m, j.id, {JobState.RUNNING}, 60)
    k8s.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/mlp-job-{j.id}-1-worker-1")
    done = await wait_for_state(m, j.id, {JobState.FAILED}, 60)
    assert done.reason.startswith(
        f"pod mlp-job-{j.id}-1-worker-1 (task worker:1) was deleted outside mlp"), done.reason
    await kube.tasks_gone(m, j.id)


async def test_a_node_that_disappears_fails_its_job_with_that_reason(kube: Harness, k8s: Cluster,
                                                                     namespace: str):
    k8s.add_node("doomed", NodeShape(cpu="4", memory="8Gi", labels={"pool": "doomed"}))
    kube.options["node_selector"] = {"pool": "doomed"}  # type: ignore[attr-defined]
    m = kube.manager()
    j = m.submit("alice", job("on-doomed", {"worker": 1}))
    await wait_for_state(m, j.id, {JobState.RUNNING}, 60)
    k8s.delete_node("doomed")
    # the pod garbage collector notices the missing node within a minute or two
    done = await wait_for_state(m, j.id, {JobState.FAILED}, 240)
    assert "doomed" in done.reason, done.reason
    assert any(w in done.reason for w in ("by Kubernetes", "deleted outside mlp")), done.reason


async def test_watch_expiry_relists_without_missing_a_deletion(kube: Harness, k8s: Cluster,
                                                               namespace: str):
    m = kube.manager()
    j = m.submit("alice", job("watched", {"worker": 2}))
    await wait_for_state(m, j.id, {JobState.RUNNING}, 60)
    backend = m.backend
    assert isinstance(backend, KubernetesBackend) and backend.cache is not None
    cache = backend.cache
    await cache.stop()  # the watch is away ...
    k8s.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/mlp-job-{j.id}-1-worker-0")
    k8s.wait_for(lambda: _gone(k8s, f"/api/v1/namespaces/{namespace}/pods/mlp-job-{j.id}-1-worker-0"),
                 "pod deleted", "kwok")
    # ... for so long that etcd compacted that history away, and the API server restarted
    # (its new watch cache starts now): resuming the watch gets 410 Gone.
    k8s.compact_etcd()
    k8s.restart_apiserver()
    relists = cache.relists
    cache.start()
    done = await wait_for_state(m, j.id, {JobState.FAILED}, 60)
    assert cache.relists == relists + 1, done.reason  # the API server answered 410 Gone; it relisted
    assert f"mlp-job-{j.id}-1-worker-0 (task worker:0) was deleted outside mlp" in done.reason


async def test_api_server_down_then_back_retries_without_duplicates(
        kube: Harness, k8s: Cluster, namespace: str, tmp_path: Path):
    async with FlakyProxy(k8s.api_port) as proxy:
        kubeconfig = tmp_path / "via-proxy"
        kubeconfig.write_text(k8s.kubeconfig.read_text().replace(
            f"127.0.0.1:{k8s.api_port}", f"127.0.0.1:{proxy.port}"))
        kube.options["kubeconfig"] = str(kubeconfig)  # type: ignore[attr-defined]
        m = kube.manager()
        proxy.down = True  # connections are refused ...
        j = m.submit("alice", job("retry", {"worker": 2}))
        await proxy.refused.wait()
        await asyncio.sleep(0.3)
        proxy.down = False  # ... then the API server is back
        done = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 60)
        assert done.job_state == JobState.RUNNING, done.reason
        assert len(pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}")) == 2
        await m.cancel(j.id, "alice")


async def test_api_server_gone_fails_the_start_clearly_and_leaks_nothing(
        kube: Harness, k8s: Cluster, namespace: str, tmp_path: Path):
    async with FlakyProxy(k8s.api_port) as proxy:
        kubeconfig = tmp_path / "via-proxy"
        kubeconfig.write_text(k8s.kubeconfig.read_text().replace(
            f"127.0.0.1:{k8s.api_port}", f"127.0.0.1:{proxy.port}"))
        kube.options["kubeconfig"] = str(kubeconfig)  # type: ignore[attr-defined]
        proxy.down = True
        m = kube.manager()
        j = m.submit("alice", job("nope", {"worker": 2}))
        done = await wait_for_state(m, j.id, {JobState.FAILED, JobState.RUNNING}, 60)
        assert done.job_state == JobState.FAILED
        assert "the Kubernetes API did not answer" in done.reason, done.reason
        assert "after 4 tries" in done.reason
        assert job_holder_id(j.id) not in m.quota.ledger
    assert pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}") == []


async def test_logs_say_clearly_that_simulated_nodes_have_none(kube: Harness):
    m = kube.manager()
    j = m.submit("alice", job("logs", {"worker": 1}))
    running = await wait_for_state(m, j.id, {JobState.RUNNING}, 60)
    backend = m.backend
    assert isinstance(backend, KubernetesBackend)
    paths = backend.log_paths(j.id, running.backend_state)
    assert list(paths) == ["worker:0"]
    text = await backend.fetch_log(running.backend_state["namespace"],
                                   f"mlp-job-{j.id}-1-worker-0", Path(paths["worker:0"]))
    assert text.startswith("no logs: the Kubernetes API could not read this pod's log"), text
    assert "Simulated nodes (kwok)" in text
    assert Path(paths["worker:0"]).read_text() == text
    await m.cancel(j.id, "alice")


def test_backend_is_selected_by_config(tmp_path: Path):
    from mlp.app import MLPService

    app = MLPService()
    data_dir = platform_data_dir(tmp_path)  # reachable by the accounts when run as root
    app.initialize([
        f"--data-dir={data_dir}",
        "--MLPService.backend_class=mlp.backends.kubernetes.KubernetesBackend",
        "--KubernetesBackend.namespace=jobs",
        "--KubernetesBackend.gang_timeout=42",
    ])
    assert isinstance(app.backend, KubernetesBackend)
    assert (app.backend.namespace, app.backend.gang_timeout) == ("jobs", 42.0)
    assert app.backend.data_dir == str(data_dir)
    json.dumps(app.backend.stop_grace_period)
