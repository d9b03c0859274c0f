"""A deployment as a KServe `InferenceService` (serving.kserve.io/v1beta1) for Kubernetes.

The embedded default runs KServe's Python model server as supervised processes; on a cluster
with KServe installed the same deployment is this manifest: the predictor serves the registered
SavedModel with KServe's TensorFlow model format (`modelFormat: tensorflow`), `minReplicas =
maxReplicas = replicas` and the reservation as requests and limits. The version's files are
found at `storage_uri` (default: the registry's layout on a PersistentVolumeClaim named
`mlp-models`, `pvc://mlp-models/<model>/<version>`).
"""

from __future__ import annotations

import re
from typing import Any

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
# InferenceService names become Service and host names: DNS-1035 labels.
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def isvc_name(model: str) -> str:
    name = model if model[:1].isalpha() else f"m-{model}"
    return name[:63].rstrip("-")


def quantity_cpu(cores: float) -> str:
    milli = round(cores * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def quantity_memory(memory: float) -> str:
    value = int(memory)
    for suffix, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if value % size == 0:
            return f"{value // size}{suffix}"
    return str(value)


def inference_service(row: Any, storage_uri: str | None = None,
                      now: float | None = None) -> dict[str, Any]:
    """The InferenceService of deployment `row` (model, version, resources, user, id)."""
    r = row.resources
    amount = {"cpu": quantity_cpu(float(r["cpu"])), "memory": quantity_memory(r["memory"])}
    replicas = int(r["replicas"])
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": isvc_name(row.model),
            "labels": {
                "app.kubernetes.io/managed-by": "jupyterhub-mlp",
                "mlp.jupyterhub.org/model": row.model,
                "mlp.jupyterhub.org/version": str(row.version),
                "mlp.jupyterhub.org/deployment": str(row.id),
            },
            "annotations": {"mlp.jupyterhub.org/user": row.user},
        },
        "spec": {
            "predictor": {
                "minReplicas": replicas,
                "maxReplicas": replicas,
                "model": {
                    "modelFormat": {"name": "tensorflow"},
                    "storageUri": storage_uri or f"pvc://mlp-models/{row.model}/{row.version}",
                    "resources": {"requests": dict(amount), "limits": dict(amount)},
                },
            }
        },
    }
