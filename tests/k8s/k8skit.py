"""Helpers shared by the Kubernetes spawner tests."""

from __future__ import annotations

import time
from typing import Any

from kubespawner.slugs import safe_slug

from mlp.devcluster import Cluster

POOL = "k8s"
GROUP = "k8s-spawn"


def reservations(ledger: dict[str, Any]) -> dict[str, Any]:
    return {r["id"]: r for r in ledger["api"]("GET", "/reservations")["reservations"]}


def pv(k8s: Cluster, user: str, name: str | None = None) -> None:
    """A pre-provisioned volume the user's claim binds to (selected by label)."""
    slug = safe_slug(user)
    k8s.apply("/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name or f"pv-{slug}", "labels": {"mlp-home": slug}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "manual", "hostPath": {"path": f"/srv/homes/{slug}"},
                 "persistentVolumeReclaimPolicy": "Retain"},
    })
    # The PV controller gives a new volume a phase (Available) once it has seen it; a claim made before
    # that finds no volume, and the controller then looks only every 15 s (a spawn timed out so).
    path = f"/api/v1/persistentvolumes/{name or f'pv-{slug}'}"
    deadline = time.monotonic() + 60
    while (phase := k8s.request("GET", path).get("status", {}).get("phase")) in (None, "Pending"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} is still {phase!r} after 60 s: is the controller-manager "
                               "running (its log is in the cluster's run dir)?")
        time.sleep(0.1)


HOME = {"storage_selector": {"matchLabels": {"mlp-home": "{username}"}}}


