"""The Kubernetes job backend: each admitted job attempt becomes one pod per task.

Select it with `c.MLPService.backend_class = "mlp.backends.kubernetes.KubernetesBackend"`.
The objects (mlp/backends/k8s_objects.py) are a parent ConfigMap owning a headless Service and
the task pods, so one delete removes everything. Resources are requests = limits as the ledger
reserved them. State comes from watch-fed caches of the pods and the nodes
(mlp/backends/k8s_client.py).

Gang safety: the ledger admitted the whole gang, but the cluster may still not place it (other
tenants, a node gone). If not every pod of an attempt runs within `gang_timeout` seconds, the
attempt is deleted, its quota released and the job requeued (as Kueue's waitForPodsReady does).

Lost nodes: a node that is deleted, or not Ready for `node_lost_grace` seconds, while a task runs
on it fails the job (or requeues it, `node_lost_action`) with a reason naming the node and the
tasks, without waiting for Kubernetes' own eviction (300 s by default) or pod garbage collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode

from mlp.backends.base import JobBackend, JobLaunch, Observation, SetupError, TaskStatus
from mlp.backends.k8s_client import (
    KubernetesUnavailable,
    NodeCache,
    PodCache,
    Retrying,
    check_home_claim,
    copy_pod_log,
    create_or_adopt,
    default_namespace,
    make_api_client,
)
from mlp.backends.k8s_objects import (
    JobObjects,
    PodSettings,
    exit_code,
    failed_without_exit,
    job_selector,
    pending_reason,
    pod_manifest,
    why_gone,
)


class KubernetesBackend(JobBackend):
    """Runs every task of a job as a pod; see the module docstring and docs/kubernetes.md."""

    kubeconfig = Unicode(
        "",
        config=True,
        help="""Kubeconfig file to reach the cluster. Empty: the pod's service account when
        running in a cluster ($KUBERNETES_SERVICE_HOST), else ~/.kube/config.""",
    )
    namespace = Unicode(
        "",
        config=True,
        help="Namespace of the jobs' objects. Empty: the service's own namespace, or 'default'.",
    )
    image = Unicode(
        "quay.io/jupyter/tensorflow-notebook:2025-03-24",
        config=True,
        help="Container image of the tasks (must have the job runtime's Python and TensorFlow).",
    )
    runtime_images = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Image per runtime name (a job's `runtime:`); runtimes not listed use `image`.""",
    )
    python_command = List(
        Unicode(), ["python3"], config=True, help="Interpreter command inside the task image."
    )
    port = Integer(2222, config=True, help="Port of each task's TensorFlow server.")
    cluster_domain = Unicode(
        "cluster.local", config=True, help="The cluster's DNS domain (TF_CONFIG addresses)."
    )
    gang_timeout = Float(
        300.0,
        config=True,
        help="""Seconds within which every pod of a job must be running. Otherwise the attempt
        is deleted, its quota released and the job requeued with the scheduler's reason
        (as Kueue's waitForPodsReady).""",
    )
    watch_nodes = Bool(
        True,
        config=True,
        help="""Watch nodes to notice one lost while tasks run on it (needs ClusterRole mlp-nodes,
        hub_config/k8s/mlp-rbac.yaml). Off: such jobs end when Kubernetes removes their pods.""",
    )
    node_lost_grace = Float(
        60.0,
        config=True,
        help="""Seconds a node may stay NotReady (or Unknown) before the jobs with tasks on it are
        given up (Kubernetes marks a node NotReady only after its own grace, 40-50 s without a
        heartbeat). A deleted node counts at once.""",
    )
    node_lost_action = Enum(
        ["fail", "requeue"],
        "fail",
        config=True,
        help="A job whose node is lost fails, or is requeued (its quota released; it starts anew).",
    )
    service_account = Unicode("", config=True, help="Service account of the task pods.")
    node_selector = Dict(config=True, help="nodeSelector of the task pods.")
    tolerations = List(Dict(), config=True, help="Tolerations of the task pods.")
    home_claim_template = Unicode(
        "",
        config=True,
        help="""PVC mounted at `home_mount` in every task, e.g. 'claim-{username}' (the
        notebook servers' claims); `source.path` jobs run a script from it. {username} is
        kubespawner's safe slug of the user name.""",
    )
    home_mount = Unicode("/home/jovyan", config=True, help="Where the home claim is mounted.")
    gpu_resource = Unicode(
        "nvidia.com/gpu", config=True, help="Extended resource name a task's `gpu` asks for."
    )
    api_retries = Integer(
        5, config=True, help="Retries of a failed API call (connection errors, 429, 5xx)."
    )
    api_retry_backoff = Float(0.5, config=True, help="First wait between retries (doubles).")
    api_timeout = Float(20.0, config=True, help="Seconds one API call may take.")
    watch_timeout = Integer(
        300, config=True, help="Seconds one watch request lasts before it is resumed."
    )
    log_timeout = Float(5.0, config=True, help="Seconds allowed to fetch a pod's log.")
    data_dir = Unicode(
        config=True,
        help="Folder of the service's state; pod logs are copied under <data_dir>/k8s-logs.",
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._api: client.ApiClient | None = None
        self._api_lock: asyncio.Lock | None = None
        self.cache: PodCache | None = None
        self.nodes: NodeCache | None = None
        self._stopping: set[str] = set()  # pods we deleted ourselves
        self._created: dict[str, float] = {}  # pods this process created, not seen yet
        self._log_fetch: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    @property
    def ns(self) -> str:
        return self.namespace or default_namespace()

    def _retrying(self) -> Retrying:
        return Retrying(self.log, self.api_retries, self.api_retry_backoff, self.api_timeout)

    async def api(self) -> client.ApiClient:
        if self._closed:
            raise RuntimeError("the Kubernetes backend is closed (the service is stopping)")
        if self._api is None:
            if self._api_lock is None:
                self._api_lock = asyncio.Lock()
            async with self._api_lock:
                if self._api is None:
                    self._api = await make_api_client(self.kubeconfig)
        self._ensure_watch()
        return self._api

    def _ensure_watch(self) -> None:
        if self._closed:
            return
        if self._api is None:
            # observe/adopt are synchronous: connect in the background on first use.
            with contextlib.suppress(RuntimeError):
                self._spawn(self.api())
            return
        if self.cache is None:
            self.cache = PodCache(self._api, self.ns, self.log, self.watch_timeout)
        self.cache.start()
        if self.watch_nodes:
            if self.nodes is None:
                self.nodes = NodeCache(self._api, self.log, self.watch_timeout)
            self.nodes.start()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        self._closed = True  # nothing reconnects or restarts a watch after this
        for task in list(self._background):
            task.cancel()
        for cache in (self.cache, self.nodes):
            if cache is not None:
                await cache.stop()
        if self._api is not None:
            await self._api.close()
            self._api = None

    # ------------------------------------------------------------------ submit
    async def submit(self, launch: JobLaunch) -> dict[str, Any]:
        objs = JobObjects(
            launch.job_id, launch.attempt, launch.user, self.ns, self.cluster_domain, self.port
        )
        state: dict[str, Any] = {
            "namespace": objs.namespace,
            "parent": None,  # set once it is ours: a failed start never deletes another's
            "attempt": launch.attempt,
            "submitted_at": time.time(),
            "tasks": [],
        }
        try:
            await self._create_all(launch, objs, state)
        except BaseException as e:
            with contextlib.suppress(Exception):
                await self.stop(launch.job_id, state)
            if isinstance(e, SetupError):
                e.backend_state = state
                raise
            if isinstance(e, KubernetesUnavailable):
                err = SetupError(str(e))
                err.backend_state = state
                raise err from None
            raise
        return state

    async def _create_all(self, launch: JobLaunch, objs: JobObjects, state: dict[str, Any]) -> None:
        spec = launch.spec
        core = client.CoreV1Api(await self.api())
        call = self._retrying()
        parent = await create_or_adopt(
            call,
            "create the job's ConfigMap",
            core.create_namespaced_config_map,
            core.read_namespaced_config_map,
            objs,
            objs.parent,
            objs.parent_manifest(spec),
        )
        uid = parent["uid"]
        state["parent"], state["parent_uid"] = objs.parent, uid
        await create_or_adopt(
            call,
            "create the job's headless Service",
            core.create_namespaced_service,
            core.read_namespaced_service,
            objs,
            objs.service,
            objs.service_manifest(uid),
        )
        runtime = spec.runtime or "default"
        settings = PodSettings(
            image=self.runtime_images.get(runtime, self.image),
            command=list(self.python_command),
            grace_period=max(0, round(self.stop_grace_period)),
            service_account=self.service_account,
            node_selector=dict(self.node_selector),
            tolerations=list(self.tolerations),
            home_claim=await self._home_claim(core, call, launch.user),
            home_mount=self.home_mount,
            gpu_resource=self.gpu_resource,
        )
        base_env = {
            "USER": launch.user,
            "PYTHONUNBUFFERED": "1",
            "MLP_JOB_ID": str(launch.job_id),
            "MLP_JOB_NAME": spec.name,
            "MLP_ATTEMPT": str(launch.attempt),
            "MLP_PARAMS": json.dumps(spec.params),
        }
        for role, t in spec.tasks.items():
            for index in range(t.count):
                name = objs.pod(role, index)
                body = pod_manifest(objs, spec, role, index, uid, settings, base_env)
                await create_or_adopt(
                    call,
                    f"create pod {name}",
                    core.create_namespaced_pod,
                    core.read_namespaced_pod,
                    objs,
                    name,
                    body,
                )
                self._created[name] = time.monotonic()
                state["tasks"].append(
                    {
                        "name": f"{role}:{index}",
                        "type": role,
                        "index": index,
                        "pod": name,
                        "address": objs.address(role, index),
                    }
                )

    async def _home_claim(self, core: client.CoreV1Api, call: Retrying, user: str) -> str:
        """The user's home claim, after checking that it exists and is theirs."""
        if not self.home_claim_template:
            return ""
        from kubespawner.slugs import safe_slug

        claim = self.home_claim_template.format(username=safe_slug(user))
        await check_home_claim(core, call, self.ns, claim, user)
        return claim

    # ------------------------------------------------------------------ observe
    def observe_job(self, job_id: int, backend_state: dict[str, Any]) -> Observation:
        self._ensure_watch()
        cache = self.cache
        tasks = backend_state.get("tasks", [])
        if cache is None or not cache.synced or not tasks:
            return Observation()  # nothing known yet: the manager waits
        node_lost = self.nodes and self.nodes.lost_tasks(
            tasks, cache, self._stopping, self.node_lost_grace
        )
        if node_lost and self.node_lost_action == "requeue":
            return Observation(
                requeue=f"{node_lost}; its quota was released and it waits in the queue again"
            )
        if node_lost:
            return Observation(lost=node_lost)
        obs = Observation()
        pending: list[str] = []
        for t in tasks:
            status = _running(t)
            obs.tasks.append(status)
            pod = cache.pods.get(t["pod"])
            if pod is None:
                created = self._created.get(t["pod"])
                if (
                    created is not None
                    and t["pod"] not in cache.seen
                    and time.monotonic() - created < self.api_timeout * 3
                ):
                    # Just created; its first watch event has not arrived yet.
                    pending.append(f"{t['pod']} (created, not yet seen by the watch)")
                    continue
                if t["pod"] in self._stopping:
                    status.running = False
                    continue
                obs.lost = why_gone(t, cache.deleted.get(t["pod"]))
                status.running = False
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Succeeded":
                status.running = False
                status.exit_code = 0
            elif phase == "Failed":
                status.running = False
                code = exit_code(pod)
                if code is None:
                    obs.lost = failed_without_exit(t, pod)
                else:
                    status.exit_code = code
                    if code > 128:
                        status.signal = code - 128
            elif phase != "Running":
                pending.append(f"{t['pod']} ({pending_reason(pod)})")
        obs.pending = pending
        age = time.time() - float(backend_state.get("submitted_at", time.time()))
        if pending and not obs.lost and age > self.gang_timeout:
            obs.requeue = (
                f"not every pod was running within gang_timeout ({self.gang_timeout:g} s): "
                + "; ".join(pending)
                + "; its quota was released and it waits in the queue again"
            )
        return obs

    def adopt(self, job_id: int, backend_state: dict[str, Any]) -> Observation:
        """After a restart the pods are found again by their labels through the watch; until the
        first list arrives every task counts as running, then `observe_job` judges them."""
        self._ensure_watch()
        tasks = backend_state.get("tasks", [])
        if not tasks:
            # A start interrupted before its state was saved: remove whatever it created.
            with contextlib.suppress(RuntimeError):
                self._spawn(self._delete_by_labels(job_id))
            return Observation(
                lost="lost after restart: the service stopped before the job's pods were created"
            )
        return Observation(tasks=[_running(t) for t in tasks])

    # ------------------------------------------------------------------ stop
    async def stop(
        self, job_id: int, backend_state: dict[str, Any], tasks: list[str] | None = None
    ) -> None:
        core = client.CoreV1Api(await self.api())
        call = self._retrying()
        ns = backend_state.get("namespace", self.ns)
        targets = [
            t["pod"] for t in backend_state.get("tasks", []) if tasks is None or t["name"] in tasks
        ]
        grace = max(0, round(self.stop_grace_period))
        self._stopping.update(targets)
        for pod in targets:
            with contextlib.suppress(ApiException):
                await call(
                    f"delete pod {pod}",
                    core.delete_namespaced_pod,
                    pod,
                    ns,
                    # No kubelet will ever confirm the end of a pod whose node is gone.
                    grace_period_seconds=0 if self._on_gone_node(pod) else grace,
                )
        if tasks is None:
            parent = backend_state.get("parent")
            if parent:
                with contextlib.suppress(ApiException):
                    await call(
                        f"delete {parent}",
                        core.delete_namespaced_config_map,
                        parent,
                        ns,
                        propagation_policy="Background",
                    )
            else:
                await self._delete_by_labels(job_id)
        await self._wait_gone(core, ns, targets, grace + 10.0)

    def _on_gone_node(self, pod: str) -> bool:
        node = ((self.cache.pods.get(pod) if self.cache else None) or {}).get("spec", {})
        return bool(self.nodes and self.nodes.gone(node.get("nodeName", "")))

    async def _wait_gone(
        self, core: client.CoreV1Api, ns: str, pods: list[str], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        left = list(pods)
        while left:
            still = []
            for pod in left:
                try:
                    await core.read_namespaced_pod(pod, ns, _request_timeout=self.api_timeout)
                    still.append(pod)
                except ApiException as e:
                    if e.status != 404:
                        still.append(pod)
            left = still
            if not left:
                return
            if time.monotonic() > deadline:
                self.log.warning(
                    "kubernetes: pods %s outlived their grace period; forcing", ", ".join(left)
                )
                for pod in left:
                    with contextlib.suppress(ApiException):
                        await core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
                return
            await asyncio.sleep(0.2)

    async def _delete_by_labels(self, job_id: int) -> None:
        core = client.CoreV1Api(await self.api())
        call = self._retrying()
        sel = job_selector(job_id)
        for what, lister, deleter in (
            ("pods", core.list_namespaced_pod, core.delete_namespaced_pod),
            ("config maps", core.list_namespaced_config_map, core.delete_namespaced_config_map),
            ("services", core.list_namespaced_service, core.delete_namespaced_service),
        ):
            found = await call(f"list job {job_id}'s {what}", lister, self.ns, label_selector=sel)
            for item in found.items:
                self._stopping.add(item.metadata.name)
                with contextlib.suppress(ApiException):
                    await call(f"delete {item.metadata.name}", deleter, item.metadata.name, self.ns)

    # ------------------------------------------------------------------ logs
    def log_paths(self, job_id: int, backend_state: dict[str, Any]) -> dict[str, str]:
        """Pod logs are copied to local files (the logs API reads files) in the background;
        each call refreshes them at most once a second."""
        tasks = backend_state.get("tasks", [])
        folder = Path(self.data_dir or ".") / "k8s-logs" / f"job-{job_id}"
        paths = {t["name"]: str(folder / f"{t['type']}-{t['index']}.log") for t in tasks}
        now = time.monotonic()
        for t in tasks:
            if now - self._log_fetch.get(t["pod"], 0.0) < 1.0:
                continue
            self._log_fetch[t["pod"]] = now
            with contextlib.suppress(RuntimeError):
                self._spawn(
                    self.fetch_log(
                        backend_state.get("namespace", self.ns), t["pod"], Path(paths[t["name"]])
                    )
                )
        return paths

    async def fetch_log(self, ns: str, pod: str, path: Path) -> str:
        """Copy a pod's log to `path` (or a clear note why there is none); returns the text."""
        return await copy_pod_log(
            client.CoreV1Api(await self.api()), ns, pod, path, self.log_timeout
        )


def _running(t: dict[str, Any]) -> TaskStatus:
    return TaskStatus(t["name"], t["type"], t["index"], running=True, address=t.get("address"))
