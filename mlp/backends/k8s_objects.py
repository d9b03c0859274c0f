"""The Kubernetes objects of one job attempt, as plain manifests (no API calls here).

One parent ConfigMap (`mlp-job-<id>-<attempt>`, holding the inline source and the cluster spec)
owns a headless Service of the same name and one Pod per task; deleting the parent deletes
everything (the garbage collector follows the owner references). Each pod's hostname is
`<role>-<index>` under the Service's subdomain, so `TF_CONFIG` names stable DNS addresses:
`<role>-<index>.<service>.<namespace>.svc.<cluster domain>:<port>`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mlp.core.spec import JobSpec

LABEL_PREFIX = "mlp.jupyter.org"
MANAGED = f"{LABEL_PREFIX}/managed"
JOB_ID = f"{LABEL_PREFIX}/job-id"
ATTEMPT = f"{LABEL_PREFIX}/attempt"
TASK_TYPE = f"{LABEL_PREFIX}/task-type"
TASK_INDEX = f"{LABEL_PREFIX}/task-index"
USER = f"{LABEL_PREFIX}/user"
USER_ANNOTATION = f"{LABEL_PREFIX}/username"  # the exact name (labels cannot hold every name)
CONTAINER = "task"
SOURCE_MOUNT = "/mlp/src"

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")


def label_value(value: str) -> str:
    """A label-safe rendering of a free-form value (user names may hold any character)."""
    safe = _LABEL_VALUE_BAD.sub("-", value)[:63].strip("-._")
    return safe or "x"


def job_selector(job_id: int, attempt: int | None = None) -> str:
    sel = f"{MANAGED}=true,{JOB_ID}={job_id}"
    if attempt is not None:
        sel += f",{ATTEMPT}={attempt}"
    return sel


@dataclass(frozen=True)
class JobObjects:
    """Names and manifests of one attempt of a job."""

    job_id: int
    attempt: int
    user: str
    namespace: str
    cluster_domain: str
    port: int

    @property
    def parent(self) -> str:
        return f"mlp-job-{self.job_id}-{self.attempt}"

    @property
    def service(self) -> str:
        return self.parent

    def pod(self, role: str, index: int) -> str:
        return f"{self.parent}-{role}-{index}"

    def address(self, role: str, index: int) -> str:
        return (
            f"{role}-{index}.{self.service}.{self.namespace}.svc.{self.cluster_domain}:{self.port}"
        )

    def labels(self) -> dict[str, str]:
        return {
            MANAGED: "true",
            JOB_ID: str(self.job_id),
            ATTEMPT: str(self.attempt),
            USER: label_value(self.user),
        }

    def metadata(self, name: str, owner_uid: str | None = None, **extra: str) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**self.labels(), **extra},
            "annotations": {USER_ANNOTATION: self.user},
        }
        if owner_uid:
            meta["ownerReferences"] = [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": self.parent,
                    "uid": owner_uid,
                    "blockOwnerDeletion": True,
                }
            ]
        return meta

    def cluster_spec(self, spec: JobSpec) -> dict[str, list[str]]:
        return {
            role: [self.address(role, i) for i in range(t.count)] for role, t in spec.tasks.items()
        }

    def parent_manifest(self, spec: JobSpec) -> dict[str, Any]:
        data = {"cluster.json": json.dumps(self.cluster_spec(spec))}
        if "inline" in spec.source:
            data["main.py"] = spec.source["inline"]
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(self.parent),
            "data": data,
        }

    def service_manifest(self, owner_uid: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(self.service, owner_uid),
            "spec": {
                "clusterIP": "None",
                # Tasks must find each other before they are ready (TF servers start together).
                "publishNotReadyAddresses": True,
                "selector": {MANAGED: "true", JOB_ID: str(self.job_id), ATTEMPT: str(self.attempt)},
                "ports": [{"name": "grpc", "port": self.port, "targetPort": self.port}],
            },
        }


@dataclass
class PodSettings:
    """What the backend's configuration adds to every task pod."""

    image: str
    command: list[str]
    grace_period: int
    service_account: str = ""
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    home_claim: str = ""  # PVC mounted at home_mount (source.path is relative to it)
    home_mount: str = "/home/jovyan"
    git_image: str = "alpine/git:2.47.2"
    gpu_resource: str = "nvidia.com/gpu"


def pod_manifest(
    objs: JobObjects,
    spec: JobSpec,
    role: str,
    index: int,
    owner_uid: str,
    settings: PodSettings,
    base_env: dict[str, str],
) -> dict[str, Any]:
    task = spec.tasks[role]
    quantity = {"cpu": f"{round(task.cpu * 1000)}m", "memory": str(task.memory)}
    if task.gpu:
        quantity[settings.gpu_resource] = str(task.gpu)
    env = {
        **base_env,
        **spec.env,
        "TF_CONFIG": json.dumps(
            {"cluster": objs.cluster_spec(spec), "task": {"type": role, "index": index}}
        ),
        "MLP_TASK_TYPE": role,
        "MLP_TASK_INDEX": str(index),
    }
    if task.gpu == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    init: list[dict[str, Any]] = []
    src = spec.source
    if "inline" in src:
        volumes.append({"name": "source", "configMap": {"name": objs.parent}})
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True})
        script = f"{SOURCE_MOUNT}/main.py"
    elif "git" in src:
        volumes.append({"name": "source", "emptyDir": {}})
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT})
        ref = src.get("ref", "HEAD")
        init.append(
            {
                "name": "fetch-source",
                "image": settings.git_image,
                "command": [
                    "sh",
                    "-c",
                    'git clone --quiet "$0" /mlp/src/repo && '
                    'if [ "$1" != HEAD ]; then git -C /mlp/src/repo checkout --quiet "$1"; fi',
                    src["git"],
                    ref,
                ],
                "volumeMounts": [{"name": "source", "mountPath": SOURCE_MOUNT}],
                "resources": {"requests": quantity, "limits": quantity},
            }
        )
        script = f"{SOURCE_MOUNT}/repo/{src['path']}"
    else:
        script = f"{settings.home_mount}/{src['path']}"
    if settings.home_claim:
        volumes.append(
            {"name": "home", "persistentVolumeClaim": {"claimName": settings.home_claim}}
        )
        mounts.append({"name": "home", "mountPath": settings.home_mount})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": f"{role}-{index}",
        "subdomain": objs.service,
        "terminationGracePeriodSeconds": settings.grace_period,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": CONTAINER,
                "image": settings.image,
                "command": [*settings.command, "-u", script, *spec.args],
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "ports": [{"name": "grpc", "containerPort": objs.port}],
                # guarantee = limit: the task gets exactly what the ledger reserved for it
                "resources": {"requests": quantity, "limits": quantity},
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if init:
        pod_spec["initContainers"] = init
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = list(settings.tolerations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": objs.metadata(
            objs.pod(role, index), owner_uid, **{TASK_TYPE: role, TASK_INDEX: str(index)}
        ),
        "spec": pod_spec,
    }


# ----------------------------------------------------------------------------- pod state
NO_KUBELET = (
    "no logs: the Kubernetes API could not read this pod's log from its node ({why}). "
    "Simulated nodes (kwok) run no containers and keep no logs."
)


def why_gone(t: dict[str, Any], last: dict[str, Any] | None) -> str:
    what = f"pod {t['pod']} (task {t['name']}) was deleted outside mlp"
    if last is None:
        return what + " (it no longer exists)"
    node = (last.get("spec") or {}).get("nodeName")
    for cond in (last.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            why = cond.get("message") or cond.get("reason")
            return f"pod {t['pod']} (task {t['name']}) was removed by Kubernetes: {why}" + (
                f" (node {node})" if node else ""
            )
    return what + (f" while it ran on node {node}" if node else "")


def exit_code(pod: dict[str, Any]) -> int | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if cs.get("name") == "task" and term is not None:
            return int(term.get("exitCode", -1))
    return None


def pending_reason(pod: dict[str, Any]) -> str:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") != "True":
            return str(cond.get("message") or cond.get("reason") or "not scheduled")
    if not (pod.get("spec") or {}).get("nodeName"):
        return "not scheduled yet"
    return f"scheduled on {pod['spec']['nodeName']}, not running yet"


def failed_without_exit(t: dict[str, Any], pod: dict[str, Any]) -> str:
    """Why a pod is Failed without a container exit code (evicted, node gone...)."""
    st = pod.get("status") or {}
    if any(c.get("type") == "DisruptionTarget" for c in st.get("conditions") or []):
        return why_gone(t, pod).replace("was removed by", "failed, ended by")
    node = (pod.get("spec") or {}).get("nodeName")
    return (
        f"pod {t['pod']} (task {t['name']}) failed on node {node}: "
        f"{st.get('reason', 'no reason given')}: {st.get('message', '')}"
    )
