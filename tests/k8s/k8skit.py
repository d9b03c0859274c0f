"""Helpers shared by the Kubernetes spawner tests."""

from __future__ import annotations

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


HOME = {"storage_selector": {"matchLabels": {"mlp-home": "{username}"}}}


