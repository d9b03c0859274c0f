"""Talking to the Kubernetes API for the job backend: calls with retries and backoff, and caches
of the mlp pods and of the nodes, each kept current by a watch that resumes where it stopped and
relists after expiry.

The caches are what `observe_job` reads (synchronously, every poll of the manager): no API call
per poll, and the state of every mlp pod and node is known within one watch event of its change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from mlp.backends.base import SetupError
from mlp.backends.k8s_objects import ATTEMPT, JOB_ID, MANAGED, NO_KUBELET, JobObjects, exit_code

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubernetesUnavailable(RuntimeError):
    """The API server did not answer (down, unreachable or too slow) after every retry."""


def default_namespace() -> str:
    try:
        with open(IN_CLUSTER_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


async def make_api_client(kubeconfig: str, context: str = "") -> client.ApiClient:
    """An API client from a kubeconfig file, or the pod's service account when in a cluster."""
    cfg = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(
            config_file=kubeconfig, context=context or None, client_configuration=cfg
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(context=context or None, client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


def api_message(e: ApiException) -> str:
    """The API server's own message from an error response (its Status object)."""
    try:
        body = json.loads(e.body or b"")
        return str(body.get("message") or e.reason)
    except (TypeError, ValueError):
        return str(e.reason or e.body)


class Retrying:
    """Runs API calls with a timeout per try and exponential backoff between tries."""

    def __init__(self, log: logging.Logger, retries: int, backoff: float, timeout: float):
        self.log = log
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout

    async def __call__(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any
    ) -> Any:
        delay = self.backoff
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                return await fn(*args, _request_timeout=self.timeout, **kw)
            except ApiException as e:
                if e.status not in RETRYABLE_STATUS or attempt == self.retries:
                    raise
                problem = f"HTTP {e.status}: {api_message(e)}"
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                problem = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
                if attempt == self.retries:
                    raise KubernetesUnavailable(
                        f"the Kubernetes API did not answer {what} after {attempt + 1} tries "
                        f"over {time.monotonic() - started:.0f} s ({problem}); check that the "
                        "API server is up and reachable from the mlp service"
                    ) from None
            self.log.warning("kubernetes: %s failed (%s); retrying in %.1f s", what, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")


class WatchCache:
    """Objects of one kind kept current by list + watch (subclasses say which).

    `synced` is False until the first list has completed (callers must not conclude an object
    is gone before that). Deleted objects are kept in `deleted` with their last state so that an
    observer can tell why something vanished. After a watch expires (410 Gone) the cache relists
    and treats objects that disappeared meanwhile as deleted: no event is missed for good. A
    watch the API server forbids (403) is tried again every minute; `forbidden` says why.
    """

    what = "object"

    def __init__(
        self,
        api: client.ApiClient,
        log: logging.Logger,
        watch_timeout: int,
        on_change: Callable[[], None] | None = None,
    ):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.log = log
        self.watch_timeout = watch_timeout
        self.on_change = on_change
        self.objects: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}
        self.seen: set[str] = set()  # every name the cache has held
        self.synced = False
        self.forbidden: str | None = None
        self.resource_version: str | None = None
        self.relists = 0  # how often the watch had to start over (expiry, errors)
        self._task: asyncio.Task[None] | None = None
        self._synced_event = asyncio.Event()

    # What to list and watch: a list function of CoreV1Api and its arguments.
    def _lister(self) -> tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], dict[str, Any]]:
        raise NotImplementedError

    def _keep(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The part of an object the cache holds."""
        return obj

    def _stored(self, name: str, obj: dict[str, Any]) -> None:
        """Called after `name` was added or changed."""

    def _removed(self, name: str) -> None:
        """Called after `name` was deleted (an event, or missing from a relist)."""

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_synced(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._synced_event.wait()

    async def _list(self) -> None:
        fn, args, kw = self._lister()
        result = await fn(*args, **kw, _request_timeout=30)
        body = self.api.sanitize_for_serialization(result)
        fresh = {o["metadata"]["name"]: self._keep(o) for o in body.get("items", [])}
        self.seen.update(fresh)
        gone = [name for name in self.objects if name not in fresh] if self.synced else []
        for name in gone:
            self.deleted[name] = self.objects[name]
        self.objects = fresh
        for name, obj in fresh.items():
            self.deleted.pop(name, None)
            self._stored(name, obj)
        for name in gone:
            self._removed(name)
        self.resource_version = body["metadata"]["resourceVersion"]
        self.forbidden = None
        self.synced = True
        self._synced_event.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                await self._watch()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 410:
                    self.log.info("kubernetes: %s watch expired (410 Gone); relisting", self.what)
                    self.resource_version = None
                    self.relists += 1
                    continue
                if e.status == 403:
                    if self.forbidden is None:
                        self.log.warning(
                            "kubernetes: may not watch %ss (%s); %s; trying again every minute",
                            self.what,
                            api_message(e),
                            self.forbidden_means(),
                        )
                    self.forbidden = api_message(e)
                    await asyncio.sleep(60.0)
                    continue
                self.log.warning(
                    "kubernetes: %s watch failed (HTTP %s: %s); retrying in %.1f s",
                    self.what,
                    e.status,
                    api_message(e),
                    backoff,
                )
            except Exception as e:
                self.log.warning(
                    "kubernetes: %s watch failed (%s: %s); retrying in %.1f s",
                    self.what,
                    e.__class__.__name__,
                    e,
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def forbidden_means(self) -> str:
        return "grant get, list and watch on them"

    async def _watch(self) -> None:
        fn, args, kw = self._lister()
        w = watch.Watch()
        async with w.stream(
            fn,
            *args,
            **kw,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=self.watch_timeout + 30,
        ) as stream:
            async for event in stream:
                kind = event["type"]
                obj = event["raw_object"]
                if kind == "ERROR":
                    code = obj.get("code") if isinstance(obj, dict) else None
                    if code == 410:
                        raise ApiException(status=410, reason="Gone")
                    raise ApiException(status=code or 500, reason=str(obj))
                rv = obj.get("metadata", {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    self.objects.pop(name, None)
                    self.deleted[name] = self._keep(obj)
                    self._removed(name)
                else:
                    kept = self._keep(obj)
                    self.objects[name] = kept
                    self.seen.add(name)
                    self.deleted.pop(name, None)
                    self._stored(name, kept)
                self._changed()


class PodCache(WatchCache):
    """All mlp pods of a namespace (label `mlp.jupyter.org/managed`)."""

    what = "pod"

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        log: logging.Logger,
        watch_timeout: int,
        on_change: Callable[[], None] | None = None,
    ):
        super().__init__(api, log, watch_timeout, on_change)
        self.namespace = namespace

    @property
    def pods(self) -> dict[str, dict[str, Any]]:
        return self.objects

    def _lister(self) -> tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], dict[str, Any]]:
        return (
            self.core.list_namespaced_pod,
            (self.namespace,),
            {"label_selector": f"{MANAGED}=true"},
        )

    def forbidden_means(self) -> str:
        return "the backend cannot follow its jobs; check its Role (hub_config/k8s/mlp-rbac.yaml)"


class NodeCache(WatchCache):
    """The cluster's nodes, reduced to their readiness, to notice a node that is deleted or stops
    being Ready while tasks run on it (Kubernetes itself evicts them only after the pods'
    not-ready toleration, 300 s by default, and removes pods of a deleted node later still).

    `trouble(name, grace)` says what is wrong with a node, or None: deleted (at once), NotReady
    or Unknown for `grace` seconds, or missing from the cluster for `grace` seconds (a node
    deleted before the cache first listed). Times are this process's own observations.
    """

    what = "node"

    def __init__(self, api: client.ApiClient, log: logging.Logger, watch_timeout: int):
        super().__init__(api, log, watch_timeout)
        self.not_ready_since: dict[str, float] = {}
        self.gone_at: dict[str, float] = {}
        self.missing_since: dict[str, float] = {}

    def _lister(self) -> tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], dict[str, Any]]:
        return self.core.list_node, (), {}

    def _keep(self, obj: dict[str, Any]) -> dict[str, Any]:
        ready: dict[str, Any] = {}
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                ready = cond
        return {
            "metadata": {"name": obj["metadata"]["name"]},
            "ready": ready.get("status") == "True",
            "why": ": ".join(str(ready[k]) for k in ("reason", "message") if ready.get(k))
            or f"Ready is {ready.get('status', 'not reported')}",
        }

    def _stored(self, name: str, obj: dict[str, Any]) -> None:
        self.gone_at.pop(name, None)
        self.missing_since.pop(name, None)
        if obj["ready"]:
            self.not_ready_since.pop(name, None)
        else:
            self.not_ready_since.setdefault(name, time.monotonic())

    def _removed(self, name: str) -> None:
        self.gone_at.setdefault(name, time.monotonic())
        self.not_ready_since.pop(name, None)

    def forbidden_means(self) -> str:
        return (
            "a job on a node that disappears is noticed only when Kubernetes removes its pods; "
            "grant get, list and watch on nodes (ClusterRole mlp-nodes in "
            "hub_config/k8s/mlp-rbac.yaml)"
        )

    def trouble(self, name: str, grace: float) -> str | None:
        if not self.synced or not name:
            return None
        now = time.monotonic()
        node = self.objects.get(name)
        if node is None:
            if name in self.gone_at:
                return f"node {name} disappeared"
            missing = self.missing_since.setdefault(name, now)
            return f"node {name} disappeared" if now - missing >= grace else None
        since = self.not_ready_since.get(name)
        if node["ready"] or since is None or now - since < grace:
            return None
        return f"node {name} was not Ready for {now - since:.0f} s ({node['why']})"

    def gone(self, name: str) -> bool:
        """The node is not in the cluster (as far as the synced cache knows)."""
        return bool(name) and self.synced and name not in self.objects

    def lost_tasks(
        self, tasks: list[dict[str, Any]], pods: PodCache, stopping: set[str], grace: float
    ) -> str | None:
        """Why a job must end because a node that its unfinished tasks are on is gone or not
        Ready, e.g. "node kwok-node-1 disappeared while worker:0 ran on it"; None if none is."""
        hit: dict[str, list[str]] = {}
        for t in tasks:
            pod = pods.pods.get(t["pod"]) or pods.deleted.get(t["pod"])
            if pod is None or t["pod"] in stopping:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Succeeded" or (phase == "Failed" and exit_code(pod) is not None):
                continue  # it ended on its own
            why = self.trouble((pod.get("spec") or {}).get("nodeName") or "", grace)
            if why:
                hit.setdefault(why, []).append(t["name"])
        if not hit:
            return None
        return "; ".join(f"{why} while {', '.join(names)} ran on it" for why, names in hit.items())


async def create_or_adopt(
    call: Retrying,
    what: str,
    create: Callable[..., Awaitable[Any]],
    read: Callable[..., Awaitable[Any]],
    objs: JobObjects,
    name: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    """Create one object of a job attempt; after a retry whose first try did land, adopt it
    instead of failing (the names are deterministic, so a retry never makes a duplicate).
    Refusals become a SetupError that says why and what to do."""
    try:
        created = await call(what, create, objs.namespace, body)
        return {"uid": created.metadata.uid}
    except ApiException as e:
        if e.status == 409:
            existing = await call(f"read {name}", read, name, objs.namespace)
            labels = existing.metadata.labels or {}
            if labels.get(JOB_ID) == str(objs.job_id) and labels.get(ATTEMPT) == str(objs.attempt):
                return {"uid": existing.metadata.uid}
            raise SetupError(
                f"cannot {what}: {name} already exists in namespace {objs.namespace} and "
                "is not this job's; delete it or use another namespace"
            ) from None
        message = api_message(e)
        if e.status == 403 and "exceeded quota" in message:
            raise SetupError(
                f"the namespace's ResourceQuota refused it: cannot {what}: {message}"
            ) from None
        if e.status == 403:
            raise SetupError(
                f"the mlp service may not {what} in namespace {objs.namespace}: {message}; "
                "check its RBAC role (hub_config/k8s/mlp-rbac.yaml)"
            ) from None
        raise SetupError(f"cannot {what}: HTTP {e.status}: {message}") from None


async def copy_pod_log(
    core: client.CoreV1Api, ns: str, pod: str, path: Path, timeout: float
) -> str:
    """The pod log API's text written to `path`; where no kubelet can serve it, a clear note."""
    try:
        text = await core.read_namespaced_pod_log(
            pod, ns, container="task", _request_timeout=timeout
        )
    except ApiException as e:
        if e.status == 404 and path.exists():
            return path.read_text()  # the pod is gone; keep the last copy
        text = NO_KUBELET.format(why=f"HTTP {e.status}: {api_message(e)}") + "\n"
    except (TimeoutError, OSError) as e:
        text = NO_KUBELET.format(why=f"{e.__class__.__name__}: {e}") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return str(text)


HUB_USERNAME = "hub.jupyter.org/username"  # kubespawner's annotation of a user's objects


async def check_home_claim(
    core: client.CoreV1Api, call: Retrying, namespace: str, claim: str, user: str
) -> None:
    """Refuse to mount a home claim that is missing or belongs to someone else (as the
    spawner refuses it for notebook servers)."""
    try:
        pvc = await call(
            f"read the home claim {claim}",
            core.read_namespaced_persistent_volume_claim,
            claim,
            namespace,
        )
    except ApiException as e:
        if e.status == 404:
            raise SetupError(
                f"the home claim {claim} does not exist in namespace {namespace}; start a "
                "notebook server once (it creates the claim), then submit the job again"
            ) from None
        raise SetupError(
            f"cannot read the home claim {claim}: HTTP {e.status}: {api_message(e)}; check "
            "the mlp service's Role (hub_config/k8s/mlp-rbac.yaml)"
        ) from None
    owner = (pvc.metadata.annotations or {}).get(HUB_USERNAME)
    if owner != user:
        raise SetupError(
            f"the home claim {claim} in namespace {namespace} belongs to "
            f"{owner or 'no hub user'}, not {user}; it is not mounted. An admin must rename or "
            "remove it (or change KubernetesBackend.home_claim_template)"
        )
