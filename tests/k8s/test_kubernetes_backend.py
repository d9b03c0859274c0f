"""What only the Kubernetes backend has: the objects it creates, gang safety, clear reasons when
the cluster refuses or removes things, a watch that survives expiry, an API server that is down
or slow, and logs from nodes without a kubelet."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from k8skit import pv
from mlptest import platform_data_dir, wait_for_state
from tcpproxy import FlakyProxy
from test_backend_suite import Harness, job

from mlp.backends.k8s_client import NodeCache
from mlp.backends.kubernetes import KubernetesBackend
from mlp.core.manager import JobManager
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
    return k8s.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={quote(selector)}")[
        "items"
    ]


def pods_running_on(k8s: Cluster, ns: str, job_id: int, node: str) -> None:
    """Wait until the job's pods run on `node` (the scheduler binds them to a node just added
    only once kwok has made it Ready)."""
    def placed() -> bool:
        found = pods(k8s, ns, f"mlp.jupyter.org/job-id={job_id}")
        return bool(found) and all(p["status"].get("phase") == "Running"
                                   and p["spec"].get("nodeName") == node for p in found)

    k8s.wait_for(placed, f"the job's pods running on node {node}", "kwok")


async def until(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Wait for a condition on state the backend keeps (fed by its watches), not for a time."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.05)
    return result


async def nodes_synced(m: JobManager, *names: str) -> NodeCache:
    """The backend's node watch has seen these nodes."""
    backend = m.backend
    assert isinstance(backend, KubernetesBackend)
    await until(lambda: backend.nodes is not None and backend.nodes.synced
                and all(n in backend.nodes.objects for n in names),
                f"the node watch to see {names} ({backend.nodes and backend.nodes.forbidden})")
    assert backend.nodes is not None
    return backend.nodes


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
    # Created, not placed: the job is Starting (not Running), and its reason names the pod that
    # waits and the scheduler's why.
    waiting = await until(lambda: (x := m.get(j.id)).job_state == JobState.STARTING
                          and "Insufficient nvidia.com/gpu" in x.reason and x,
                          "the job to wait in Starting for its unplaceable pod")
    assert waiting.reason.startswith("tasks created; waiting for all of them to run: "), \
        waiting.reason
    # Released and requeued (and soon started again: its stay in the queue can be too short to
    # see by polling, so the state history says what happened).
    await until(lambda: m.get(j.id).attempt >= 2, "the job to be requeued")
    events = [(e.to_state, e.reason) for e in m.store.events(j.id)]
    requeued = [r for s, r in events if s == JobState.QUEUED.value and r.startswith("requeued")]
    assert requeued, events
    assert "not every pod was running within gang_timeout (2 s)" in requeued[0], requeued[0]
    assert "Insufficient nvidia.com/gpu" in requeued[0], requeued[0]
    assert JobState.RUNNING.value not in [s for s, _ in events], events  # never all running
    assert m.get(j.id).job_state != JobState.FAILED
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
    j = m.submit("alice", job("on-doomed", {"chief": 1, "worker": 1}))
    running = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 120)
    assert running.job_state == JobState.RUNNING, running.reason
    pods_running_on(k8s, namespace, j.id, "doomed")
    await nodes_synced(m, "doomed")
    k8s.delete_node("doomed")
    # The node watch sees the deletion: no waiting for eviction or the pod garbage collector.
    done = await wait_for_state(m, j.id, {JobState.FAILED}, 120)
    assert done.reason == "node doomed disappeared while chief:0, worker:0 ran on it", done.reason
    assert job_holder_id(j.id) not in m.quota.ledger
    # No kubelet can confirm their end: the pods are removed at once, nothing is left behind.
    await kube.tasks_gone(m, j.id, timeout=120)
    assert pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}") == []


async def test_a_node_not_ready_past_the_grace_requeues_its_job(kube: Harness, k8s: Cluster,
                                                               namespace: str):
    # kwok leaves alone the status of a node annotated kwok.x-k8s.io/status=custom; its Ready
    # condition is then whatever is written to it, as a kubelet that stopped answering would.
    k8s.add_node("flaky", NodeShape(cpu="4", memory="8Gi", labels={"pool": "flaky"}))
    kube.options.update(node_selector={"pool": "flaky"}, node_lost_action="requeue",  # type: ignore[attr-defined]
                        node_lost_grace=2.0)
    m = kube.manager()
    j = m.submit("alice", job("on-flaky", {"worker": 1}))
    running = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 120)
    assert running.job_state == JobState.RUNNING, running.reason
    pods_running_on(k8s, namespace, j.id, "flaky")
    nodes = await nodes_synced(m, "flaky")
    k8s.request("PATCH", "/api/v1/nodes/flaky",
                {"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}})
    conditions = k8s.request("GET", "/api/v1/nodes/flaky")["status"]["conditions"]
    for cond in conditions:
        if cond["type"] == "Ready":
            cond.update(status="False", reason="KubeletNotReady",
                        message="container runtime is down")
    k8s.request("PATCH", "/api/v1/nodes/flaky/status", {"status": {"conditions": conditions}})
    # The node watch sees it NotReady; after the grace the attempt is given up and requeued.
    await until(lambda: "flaky" in nodes.not_ready_since, "the node watch to see flaky NotReady")
    await until(lambda: m.get(j.id).attempt > 1, "the job to be requeued")
    events = [(e.to_state, e.reason) for e in m.store.events(j.id)]
    requeued = [r for s, r in events if s == JobState.PREEMPTED.value]
    assert requeued, events
    assert requeued[0].startswith("node flaky was not Ready for "), requeued[0]
    assert requeued[0].endswith(" (KubeletNotReady: container runtime is down) while worker:0 ran "
                                "on it; its quota was released and it waits in the queue again"), requeued[0]
    assert m.get(j.id).job_state != JobState.FAILED
    await m.cancel(j.id, "alice")
    k8s.delete_node("flaky")


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
    # The API server answered 410 Gone and the cache relisted (a second 410 can follow while the
    # restarted API server's watch cache catches up with the list it just served).
    assert cache.relists > relists, done.reason
    assert f"mlp-job-{j.id}-1-worker-0 (task worker:0) was deleted outside mlp" in done.reason


async def test_node_watch_expiry_relists_and_finds_the_lost_node(kube: Harness, k8s: Cluster,
                                                                 namespace: str):
    k8s.add_node("fleeting", NodeShape(cpu="4", memory="8Gi", labels={"pool": "fleeting"}))
    kube.options["node_selector"] = {"pool": "fleeting"}  # type: ignore[attr-defined]
    m = kube.manager()
    j = m.submit("alice", job("on-fleeting", {"worker": 1}))
    running = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 120)
    assert running.job_state == JobState.RUNNING, running.reason
    pods_running_on(k8s, namespace, j.id, "fleeting")
    nodes = await nodes_synced(m, "fleeting")
    await nodes.stop()  # the node watch is away while the node is deleted ...
    k8s.delete_node("fleeting")
    k8s.wait_for(lambda: _gone(k8s, "/api/v1/nodes/fleeting"), "node deleted")
    # ... and the history it would resume from is compacted away (410 Gone on resume).
    k8s.compact_etcd()
    k8s.restart_apiserver()
    relists = nodes.relists
    nodes.start()
    done = await wait_for_state(m, j.id, {JobState.FAILED}, 120)
    assert nodes.relists > relists, done.reason  # 410 Gone: it relisted
    assert done.reason == "node fleeting disappeared while worker:0 ran on it", done.reason


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


class ReplyHoldingProxy:
    """Forwards requests to the API server at once but, until `released`, holds its replies
    after the TLS handshake: a slow API server whose writes land while the client has already
    given up waiting for the answer."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.released = asyncio.Event()
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> ReplyHoldingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for t in list(self._tasks):
            t.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sent = [0]  # chunks from the client: 1 = its TLS hello, then its requests
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(self._pipe(reader, up_writer, sent, False),
                                 self._pipe(up_reader, writer, sent, True))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    sent: list[int], reply: bool) -> None:
        try:
            while data := await reader.read(65536):
                if reply and sent[0] > 1:  # the handshake is done: hold what answers requests
                    await self.released.wait()
                elif not reply:
                    sent[0] += 1
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_slow_api_server_a_create_that_landed_is_adopted_not_duplicated(
        kube: Harness, k8s: Cluster, namespace: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture):
    log = logging.getLogger("test.k8s.slow-api")
    caplog.set_level(logging.WARNING, logger=log.name)
    async with ReplyHoldingProxy(k8s.api_port) as proxy:
        kubeconfig = tmp_path / "via-proxy"
        kubeconfig.write_text(k8s.kubeconfig.read_text().replace(
            f"127.0.0.1:{k8s.api_port}", f"127.0.0.1:{proxy.port}"))
        kube.options.update(kubeconfig=str(kubeconfig), api_timeout=1.0,  # type: ignore[attr-defined]
                            api_retries=30, api_retry_backoff=0.2, log=log)
        m = kube.manager()
        j = m.submit("alice", job("slow", {"worker": 2}))
        parent = f"/api/v1/namespaces/{namespace}/configmaps/mlp-job-{j.id}-1"
        # The ConfigMap's create reached the API server, but its answer did not come back in
        # time: the backend gave up on that try and is retrying.
        await until(lambda: not _gone(k8s, parent), "the first create to land")
        await until(lambda: "create the job's ConfigMap failed (" in caplog.text,
                    "the backend to time out and retry")
        proxy.released.set()  # the API server answers again
        done = await wait_for_state(m, j.id, {JobState.RUNNING, JobState.FAILED}, 120)
        assert done.job_state == JobState.RUNNING, done.reason
        sel = quote(f"mlp.jupyter.org/job-id={j.id}")
        for kind in ("configmaps", "services", "pods"):
            items = k8s.request("GET", f"/api/v1/namespaces/{namespace}/{kind}?labelSelector={sel}")
            assert len(items["items"]) == (2 if kind == "pods" else 1), (kind, items["items"])
        await m.cancel(j.id, "alice")


async def test_an_object_of_the_same_name_not_ours_fails_the_start_clearly(
        kube: Harness, k8s: Cluster, namespace: str):
    # Someone else's ConfigMap holds the name of the first job's parent object.
    k8s.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mlp-job-1-1"}, "data": {"keep": "me"}})
    m = kube.manager()
    j = m.submit("alice", job("clash", {"worker": 1}))
    assert j.id == 1
    done = await wait_for_state(m, j.id, {JobState.FAILED, JobState.RUNNING}, 60)
    assert done.job_state == JobState.FAILED
    assert done.reason == (
        f"cannot create the job's ConfigMap: mlp-job-1-1 already exists in namespace {namespace} "
        "and is not this job's; delete it or use another namespace"), done.reason
    assert job_holder_id(j.id) not in m.quota.ledger
    theirs = k8s.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/mlp-job-1-1")
    assert theirs["data"] == {"keep": "me"}  # left as it was
    assert pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}") == []


async def test_home_claim_must_exist_and_be_the_users(kube: Harness, k8s: Cluster,
                                                      namespace: str):
    def claim(name: str, owner: str, volume: str) -> None:
        k8s.request("POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "annotations": {"hub.jupyter.org/username": owner}},
            # Selects one volume: without a selector the claim would bind any free "manual"
            # volume, even one a later test made for another user's home.
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                     "selector": {"matchLabels": {"mlp-home": volume}},
                     "resources": {"requests": {"storage": "1Gi"}}}})

    pv(k8s, "mallory")  # the pod that mounts Mallory's claim runs only once the claim is bound
    claim("claim-ola", "mallory", "no-such-volume")
    claim("claim-mallory", "mallory", "mallory")
    kube.options["home_claim_template"] = "claim-{username}"  # type: ignore[attr-defined]
    m = kube.manager()
    theirs = m.submit("ola", job("not-mine", {"worker": 1}))
    missing = m.submit("nobody", job("no-home", {"worker": 1}))
    own = m.submit("mallory", job("mine", {"worker": 1}))
    done = await wait_for_state(m, theirs.id, {JobState.FAILED, JobState.RUNNING}, 60)
    assert done.reason == (
        f"the home claim claim-ola in namespace {namespace} belongs to mallory, not ola; it is "
        "not mounted. An admin must rename or remove it (or change "
        "KubernetesBackend.home_claim_template)"), done.reason
    done = await wait_for_state(m, missing.id, {JobState.FAILED, JobState.RUNNING}, 60)
    assert done.reason == (
        f"the home claim claim-nobody does not exist in namespace {namespace}; start a notebook "
        "server once (it creates the claim), then submit the job again"), done.reason
    for j in (theirs, missing):
        assert job_holder_id(j.id) not in m.quota.ledger
        assert pods(k8s, namespace, f"mlp.jupyter.org/job-id={j.id}") == []
    ok = await wait_for_state(m, own.id, {JobState.RUNNING, JobState.FAILED}, 60)
    assert ok.job_state == JobState.RUNNING, ok.reason
    (pod,) = pods(k8s, namespace, f"mlp.jupyter.org/job-id={own.id}")
    assert {"name": "home", "persistentVolumeClaim": {"claimName": "claim-mallory"}} in pod[
        "spec"]["volumes"]
    await m.cancel(own.id, "mallory")


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
