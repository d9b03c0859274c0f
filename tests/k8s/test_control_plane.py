"""The test control plane itself: nodes of the configured shape, pods scheduled and run by kwok
(ending as the test env asks), and a teardown that leaves no process behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from mlp.devcluster import Cluster, NodeShape, start_cluster


def pod_body(name: str, **env: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"mlp.jupyter.org/task-type": "worker"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "task", "image": "none", "env": [{"name": k, "value": v} for k, v in env.items()],
            "resources": {"requests": {"cpu": "1", "nvidia.com/gpu": "1"},
                          "limits": {"cpu": "1", "nvidia.com/gpu": "1"}}}]},
    }


def wait_phase(k8s: Cluster, ns: str, name: str, phases: set[str]) -> dict:
    return k8s.wait_for(
        lambda: (p := k8s.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}"))["status"].get("phase") in phases and p,
        f"pod {name} in {phases}", "kwok")


def test_nodes_have_the_configured_shape(k8s: Cluster):
    node = k8s.request("GET", "/api/v1/nodes/gpu-0")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["status"]["allocatable"]["cpu"] == "16"
    version = k8s.request("GET", "/version")
    assert version["gitVersion"].startswith("v1.")


def test_gpu_pod_scheduled_run_and_ended_by_kwok(k8s: Cluster, namespace: str):
    k8s.request("POST", f"/api/v1/namespaces/{namespace}/pods",
                pod_body("p", SIM_WORKER_EXIT="3", SIM_WORKER_RUN="300ms"))
    pod = wait_phase(k8s, namespace, "p", {"Running", "Failed"})
    assert pod["spec"]["nodeName"] == "gpu-0"  # the only node with GPUs
    pod = wait_phase(k8s, namespace, "p", {"Failed"})
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_teardown_leaves_no_process(tmp_path: Path):
    cluster = start_cluster(tmp_path / "c", {"n0": NodeShape(cpu="2", memory="4Gi")})
    pids = [p.pid for p in cluster.procs.values()]
    assert all(psutil.pid_exists(pid) for pid in pids)
    cluster.stop()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    for pid in pids:
        try:
            os.killpg(pid, 0)
            raise AssertionError(f"process group {pid} still has members")
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
