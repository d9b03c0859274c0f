"""QuotaKubeSpawner: kubespawner's KubeSpawner inside the mlp quota ledger.

Before any Kubernetes object is created, the server's resources are reserved in the ledger
(`POST /reservations` of the mlp service); guarantee = limit for cpu and memory and GPUs as an
extended resource, so the pod gets exactly what was reserved. Over quota, the spawn fails with
the ledger's numbers on the progress page and nothing is created. Stopping or culling the
server releases the reservation; the user's PVC stays (kubespawner's `storage_pvc_ensure`).

Sizes: `c.QuotaKubeSpawner.sizes` lists the offered sizes; `profile_list` is a callable that
offers only those within the user's cap. Optional per-user namespaces get a ResourceQuota
mirroring the user's cap, a second fence the cluster itself enforces.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets import Bool, Dict, List, Unicode, default

from mlp.scheduling.resources import format_cpu, format_memory, parse_cpu, parse_memory
from mlp_spawner.reservations import ReservationMixin, ReservationRefused

GPU = "nvidia.com/gpu"
QUOTA_NAME = "mlp-user-cap"


class QuotaKubeSpawner(ReservationMixin, KubeSpawner):
    sizes = List(
        Dict(),
        [
            {"slug": "small", "cpu": 1, "memory": "2Gi"},
            {"slug": "medium", "cpu": 2, "memory": "8Gi"},
            {"slug": "large", "cpu": 4, "memory": "16Gi"},
            {"slug": "gpu", "cpu": 4, "memory": "16Gi", "gpu": 1},
        ],
        config=True,
        help="""Server sizes users choose from: {slug, cpu, memory, gpu?, display_name?,
        description?, default?}. Only sizes within the user's quota are offered.""",
    )
    user_quota_fence = Bool(
        True,
        config=True,
        help="""With enable_user_namespaces: keep a ResourceQuota named mlp-user-cap in each
        user's namespace that mirrors their cap in the ledger (cpu, memory, GPUs).""",
    )
    gpu_resource = Unicode(GPU, config=True, help="Extended resource name of a GPU.")

    @default("profile_list")
    def _default_profile_list(self) -> Any:
        return offered_profiles

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self) -> bool:
        return True

    @default("pvc_name_template")
    def _default_pvc_name_template(self) -> str:
        return "claim-{username}"  # one home per user, kept across stop and cull

    @default("storage_capacity")
    def _default_storage_capacity(self) -> str:
        return "10Gi"

    @default("volumes")
    def _default_volumes(self) -> list[dict[str, Any]]:
        return [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]

    @default("volume_mounts")
    def _default_volume_mounts(self) -> list[dict[str, Any]]:
        return [{"name": "home", "mountPath": "/home/jovyan"}]

    # ------------------------------------------------------------------ sizes
    def size_amount(self, size: dict[str, Any]) -> dict[str, Any]:
        amount: dict[str, Any] = {
            "cpu": parse_cpu(size["cpu"], "cpu"),
            "memory": parse_memory(size["memory"], "memory"),
        }
        if size.get("gpu"):
            amount["gpu"] = int(size["gpu"])
        return amount

    def reservation_amount(self) -> dict[str, Any]:
        """What the pod will ask for, after the chosen profile's overrides were applied."""
        if not self.cpu_limit or not self.mem_limit:
            raise ReservationRefused(
                "this server has no cpu and memory limit; the platform reserves every server "
                "in the quota ledger, so configure c.QuotaKubeSpawner.sizes (or cpu_limit and "
                "mem_limit)",
                500,
            )
        amount: dict[str, Any] = {"cpu": float(self.cpu_limit), "memory": int(self.mem_limit)}
        gpus = int(self.extra_resource_limits.get(self.gpu_resource, 0) or 0)
        if gpus:
            amount["gpu"] = gpus
        return amount

    def _pin_guarantees(self) -> None:
        """guarantee = limit: the pod gets exactly what the ledger reserved."""
        self.cpu_guarantee = self.cpu_limit
        self.mem_guarantee = self.mem_limit
        gpus = self.extra_resource_limits.get(self.gpu_resource)
        if gpus:
            current: dict[str, Any] = dict(getattr(self, "extra_resource_guarantees", {}) or {})
            self.extra_resource_guarantees = {**current, self.gpu_resource: gpus}

    # ------------------------------------------------------------------ lifecycle
    async def _start(self) -> Any:
        self._mlp_progress: list[dict[str, Any]] = []
        await self.load_user_options()
        self._pin_guarantees()
        amount = self.reservation_amount()
        await self.reserve_server(amount)
        self._mlp_progress.append({"progress": 5, "message": self.reserved_message(amount)})
        try:
            await self._check_pvc_owner()
            return await super()._start()
        except BaseException:
            await self.release_server()
            raise

    async def load_user_options(self) -> None:
        """A request for a size that is not offered (beyond the user's cap, or unknown), or
        with fields of its own, is refused before anything is reserved."""
        options = dict(self.user_options or {})
        if options:
            profiles = self.profile_list
            if callable(profiles):
                profiles = await profiles(self)
            self.check_options(options, [p["slug"] for p in profiles or []])
        await super().load_user_options()

    async def stop(self, now: bool = False) -> None:
        try:
            await super().stop(now=now)
        finally:
            await self.release_server()

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None and self.reservation_id:
            # The pod is gone (crashed, deleted, a hub restarted without it): give back.
            await self.release_server()
        return status

    async def progress(self) -> Any:
        for event in getattr(self, "_mlp_progress", []):
            yield event
        async for event in super().progress():
            yield event

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        state.update(self.reservation_state())
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.load_reservation_state(state)

    # ------------------------------------------------------------------ second fences
    async def _check_pvc_owner(self) -> None:
        """Refuse a claim with our name that belongs to someone else (never mount it)."""
        if not self.storage_pvc_ensure:
            return
        try:
            pvc = await self.api.read_namespaced_persistent_volume_claim(
                self.pvc_name, self.namespace
            )
        except ApiException as e:
            if e.status == 404:
                return
            raise
        owner = (pvc.metadata.annotations or {}).get("hub.jupyter.org/username")
        if owner != self.user.name:
            raise ReservationRefused(
                f"the volume claim {self.pvc_name} in namespace {self.namespace} already "
                f"exists and belongs to {owner or 'no hub user'}, not {self.user.name}; an "
                "admin must rename or remove it (or set pvc_name_template) before this server "
                "can start"
            )

    async def _ensure_namespace(self) -> None:
        await super()._ensure_namespace()
        if self.user_quota_fence:
            await self._ensure_user_quota()

    async def _ensure_user_quota(self) -> None:
        quota = await self.quota_of(self.user.name)
        cap: dict[str, Any] | None = None
        for group in quota.get("groups", {}).values():
            cap = group.get("personal_cap") or group["pools"].get(self.quota_pool, {}).get("limit")
            if cap:
                break
        if not cap:
            return
        hard: dict[str, str] = {}
        if cap.get("cpu") is not None:
            cpu = format_cpu(parse_cpu(cap["cpu"], "cpu"))
            hard.update({"requests.cpu": cpu, "limits.cpu": cpu})
        if cap.get("memory") is not None:
            mem = str(parse_memory(cap["memory"], "memory"))
            hard.update({"requests.memory": mem, "limits.memory": mem})
        if cap.get("gpu") is not None:
            hard[f"requests.{self.gpu_resource}"] = str(int(cap["gpu"]))
        body = {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": QUOTA_NAME, "labels": {"app.kubernetes.io/managed-by": "mlp"}},
            "spec": {"hard": hard},
        }
        try:
            await self.api.create_namespaced_resource_quota(self.namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise
            await self.api.patch_namespaced_resource_quota(
                QUOTA_NAME, self.namespace, {"spec": {"hard": hard}}
            )


async def offered_profiles(spawner: QuotaKubeSpawner) -> list[dict[str, Any]]:
    """kubespawner's profile_list: the configured sizes that fit within the user's cap."""
    quota = await spawner.quota_of(spawner.user.name)
    caps = []
    for group in quota.get("groups", {}).values():
        cap = group.get("personal_cap") or {}
        limit = group.get("pools", {}).get(spawner.quota_pool, {}).get("limit") or {}
        caps.append((cap, limit))
    profiles = []
    for size in spawner.sizes:
        amount = spawner.size_amount(size)
        if not any(_fits(amount, cap) and _fits(amount, limit) for cap, limit in caps):
            continue
        gpus = amount.get("gpu", 0)
        override: dict[str, Any] = {
            "cpu_limit": amount["cpu"],
            "cpu_guarantee": amount["cpu"],
            "mem_limit": amount["memory"],
            "mem_guarantee": amount["memory"],
            "extra_resource_limits": {spawner.gpu_resource: str(gpus)} if gpus else {},
            "extra_resource_guarantees": {spawner.gpu_resource: str(gpus)} if gpus else {},
        }
        label = f"{format_cpu(amount['cpu'])} CPU, {format_memory(amount['memory'])}" + (
            f", {gpus} GPU" if gpus else ""
        )
        profiles.append(
            {
                "slug": size["slug"],
                "display_name": size.get("display_name", f"{size['slug']}: {label}"),
                "description": size.get("description", label),
                "default": bool(size.get("default", False)),
                "kubespawner_override": override,
            }
        )
    if not profiles:
        raise ReservationRefused(
            f"no server size fits {spawner.user.name}'s quota (sizes: "
            + ", ".join(s["slug"] for s in spawner.sizes)
            + "); ask an admin to raise your cap",
            400,
        )
    return profiles


def _fits(amount: dict[str, Any], limit: dict[str, Any]) -> bool:
    for key, value in amount.items():
        bound = limit.get(key)
        if bound is None:
            continue
        if key == "cpu" and value > parse_cpu(bound, "cpu") + 1e-9:
            return False
        if key == "memory" and value > parse_memory(bound, "memory"):
            return False
        if key == "gpu" and value > int(bound):
            return False
    return True
