"""Talking to the Kubernetes API for the job backend: calls with retries and backoff, and a pod
cache kept current by a watch that resumes where it stopped and relists after expiry.

The cache is what `observe_job` reads (synchronously, every poll of the manager): no API call per
poll, and the state of every mlp pod is known within one watch event of its change.
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

from mlp.backends.k8s_objects import MANAGED, NO_KUBELET

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


class PodCache:
    """All mlp pods of a namespace, kept current by list + watch.

    `synced` is False until the first list has completed (callers must not conclude a pod is
    gone before that). Deleted pods are kept in `deleted` with their last state so that an
    observer can tell why a task vanished. After a watch expires (410 Gone) the cache relists
    and treats pods that disappeared meanwhile as deleted: no event is missed for good.
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        log: logging.Logger,
        watch_timeout: int,
        on_change: Callable[[], None] | None = None,
    ):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.log = log
        self.watch_timeout = watch_timeout
        self.on_change = on_change
        self.pods: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}
        self.seen: set[str] = set()  # every pod name the cache has held
        self.synced = False
        self.resource_version: str | None = None
        self.relists = 0  # how often the watch had to start over (expiry, errors)
        self._task: asyncio.Task[None] | None = None
        self._synced_event = asyncio.Event()

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
        result = await self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{MANAGED}=true", _request_timeout=30
        )
        body = self.api.sanitize_for_serialization(result)
        fresh = {p["metadata"]["name"]: p for p in body.get("items", [])}
        self.seen.update(fresh)
        if self.synced:
            for name, pod in self.pods.items():
                if name not in fresh:
                    self.deleted[name] = pod
        self.pods = fresh
        self.resource_version = body["metadata"]["resourceVersion"]
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
                    self.log.info("kubernetes: pod watch expired (410 Gone); relisting")
                    self.resource_version = None
                    self.relists += 1
                    continue
                self.log.warning(
                    "kubernetes: pod watch failed (HTTP %s: %s); retrying in %.1f s",
                    e.status,
                    api_message(e),
                    backoff,
                )
            except Exception as e:
                self.log.warning(
                    "kubernetes: pod watch failed (%s: %s); retrying in %.1f s",
                    e.__class__.__name__,
                    e,
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _watch(self) -> None:
        w = watch.Watch()
        async with w.stream(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"{MANAGED}=true",
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
                    self.pods.pop(name, None)
                    self.deleted[name] = obj
                else:
                    self.pods[name] = obj
                    self.seen.add(name)
                    self.deleted.pop(name, None)
                self._changed()


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
