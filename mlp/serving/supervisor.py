"""Deployments on the embedded default: each replica of a deployed version is a KServe model
server process (`kserve_server.py` in the serving environment) that the platform starts as the
model owner's account, in a cgroup sized by the reservation, on a free loopback port; the
deployment holds `cpu x replicas`, `memory x replicas` in the quota ledger like a notebook
server (holder `deploy:<id>`), for as long as it lives.

States: `starting` (replicas loading) -> `running`; `rolling` (a new version's replicas load
while the old ones serve); `failed` (with the reason and the log tail); `stopped`. A replica
that exits is restarted; more than `max_restarts` exits within `restart_window` seconds fail the
deployment and release its reservation.

A rollout starts the new version's replicas next to the old (reserving them too: refused over
quota), switches the router to them once every one answers ready, then stops each old replica
once it has no request in flight: no request is dropped. Request metrics (count, errors, latency
quantiles, throughput) are kept by the router per deployment (`RequestStats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from mlp.core.ports import free_port
from mlp.core.quota import QuotaService
from mlp.isolation import Limits, MLPIsolation
from mlp.isolation.process import make_preexec, private_dir, run_as_env
from mlp.scheduling import PRODUCTION_POOL, Resources
from mlp.serving.registry import LIVE_STATES, SERVER_SCRIPT, ModelRegistry, RegistryError
from mlp.serving.rows import DeploymentRow
from mlp.store import Store

LOG_TAIL = 40


def holder_id(deployment_id: int, rolling: bool = False) -> str:
    return f"deploy:{deployment_id}" + (":next" if rolling else "")


class RequestStats:
    """Requests through the router: count, errors, latency quantiles, throughput."""

    def __init__(self, keep: int = 20000):
        self.count = 0
        self.errors = 0
        self.samples: deque[tuple[float, float]] = deque(maxlen=keep)

    def add(self, seconds: float, ok: bool) -> None:
        self.count += 1
        if not ok:
            self.errors += 1
        self.samples.append((time.monotonic(), seconds))

    def report(self, window: float = 60.0) -> dict[str, Any]:
        now = time.monotonic()
        recent = sorted(s for t, s in self.samples if now - t <= window)

        def q(p: float) -> float | None:
            if not recent:
                return None
            return round(recent[min(len(recent) - 1, int(p * len(recent)))] * 1000, 3)

        last10 = sum(1 for t, _ in self.samples if now - t <= 10.0)
        return {
            "requests": self.count,
            "errors": self.errors,
            "window_s": window,
            "latency_ms": {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99)},
            "requests_per_s": round(last10 / 10.0, 2),
        }


@dataclass
class Replica:
    index: int
    version: int
    port: int
    proc: subprocess.Popen[bytes] | None
    pid: int
    started: float
    log: Path
    inflight: int = 0
    exits: list[float] = field(default_factory=list)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            p = psutil.Process(self.pid)
            return abs(p.create_time() - self.started) < 0.01 and p.status() != "zombie"
        except psutil.Error:
            return False

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "version": self.version, "port": self.port,
                "pid": self.pid, "started": self.started, "log": str(self.log)}


@dataclass
class Live:
    """What the router needs of a live deployment."""

    id: int
    model: str
    replicas: list[Replica]
    stats: RequestStats = field(default_factory=RequestStats)
    next_index: int = 0

    def pick(self) -> Replica | None:
        alive = [r for r in self.replicas if r.proc is None or r.proc.poll() is None]
        if not alive:
            return None
        r = alive[self.next_index % len(alive)]
        self.next_index += 1
        return r


class DeploymentError(RegistryError):
    pass


class DeploymentSupervisor:
    def __init__(
        self,
        store: Store,
        registry: ModelRegistry,
        quota: QuotaService,
        isolation: MLPIsolation,
        *,
        python: str,
        data_dir: str,
        log: Any,
        ready_timeout: float = 180.0,
        max_restarts: int = 3,
        restart_window: float = 300.0,
        stop_grace: float = 10.0,
        poll_interval: float = 0.5,
    ):
        self.store = store
        self.registry = registry
        self.quota = quota
        self.isolation = isolation
        self.python = python
        self.data_dir = Path(data_dir)
        self.log = log
        self.ready_timeout = ready_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.stop_grace = stop_grace
        self.poll_interval = poll_interval
        self.live: dict[str, Live] = {}  # model name -> its live deployment
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy: set[int] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ reading
    def get(self, deployment_id: int) -> DeploymentRow:
        with self.store.session() as s:
            row = s.get(DeploymentRow, deployment_id)
        if row is None:
            raise DeploymentError(404, "not_found", f"deployment {deployment_id} does not exist")
        return row

    def of_model(self, model: str) -> list[DeploymentRow]:
        from sqlalchemy import select

        with self.store.session() as s:
            return list(s.scalars(select(DeploymentRow).where(DeploymentRow.model == model)
                                  .order_by(DeploymentRow.id)))

    def describe(self, row: DeploymentRow, logs: bool = False) -> dict[str, Any]:
        live = self.live.get(row.model)
        stats = live.stats if live is not None and live.id == row.id else None
        out: dict[str, Any] = {
            "id": row.id, "model": row.model, "version": row.version, "user": row.user,
            "state": row.state, "reason": row.reason, "resources": row.resources,
            "group": row.group, "pool": row.pool, "restarts": row.restarts,
            "created_at": row.created_at, "updated_at": row.updated_at,
            "endpoint": f"/services/models/{row.model}/",
            "replicas": [
                {k: v for k, v in p.items() if k != "log"} for p in (row.processes or [])
            ],
            "events": row.events[-50:],
            "metrics": stats.report() if stats else RequestStats().report(),
        }
        if logs:
            out["logs"] = {f"replica-{p['index']}-v{p['version']}": tail(Path(p["log"]))
                           for p in (row.processes or [])}
        return out

    # ------------------------------------------------------------------ changes
    def _update(self, deployment_id: int, event: str | None = None, **fields: Any) -> DeploymentRow:
        with self.store.session() as s:
            row = s.get(DeploymentRow, deployment_id)
            assert row is not None
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = time.time()
            if event:
                row.events = [*row.events, {"at": row.updated_at, "event": event}][-200:]
        return row

    def create(
        self, user: str, model: str, version: int, cpu: float, memory: int, replicas: int,
        group: str, pool: str,
    ) -> DeploymentRow:
        """Reserve and record a deployment (QuotaExceeded when over quota); start it later."""
        if model in self.live or self.registry.live_deployments(model):
            raise DeploymentError(
                409, "conflict", f"model {model!r} already has a live deployment "
                f"({self.registry.live_deployments(model)}); roll it to another version "
                "(PATCH .../deployments/{id} with {\"version\": N}) or delete it first")
        now = time.time()
        resources = {"cpu": cpu, "memory": memory, "replicas": replicas}
        with self.store.session() as s:
            row = DeploymentRow(
                model=model, version=version, user=user, state="starting",
                reason="starting the model server", resources=resources, group=group,
                pool=pool, restarts=0, events=[], processes=[], created_at=now, updated_at=now,
            )
            s.add(row)
            s.flush()
            deployment_id = row.id
        try:
            self.quota.reserve_server(
                holder_id(deployment_id), user, group, pool,
                Resources(cpu=cpu * replicas, memory=memory * replicas), now,
                promoted=pool == PRODUCTION_POOL,
            )
        except Exception:
            with self.store.session() as s:
                s.delete(s.get(DeploymentRow, deployment_id))
            raise
        return self._update(deployment_id, f"reserved {resources} in {group}/{pool}")

    def start(self, row: DeploymentRow) -> None:
        self._spawn(self._bring_up(row.id, row.version, rolling=False))

    async def _bring_up(self, deployment_id: int, version: int, rolling: bool) -> None:
        self._busy.add(deployment_id)
        try:
            row = self.get(deployment_id)
            replicas = await self._start_replicas(row, version)
            ok, reason = await self._wait_ready(row.model, replicas)
            row = self.get(deployment_id)
            if row.state not in LIVE_STATES:  # deleted meanwhile
                await self._stop_replicas(replicas)
                return
            if not ok:
                await self._stop_replicas(replicas)
                if rolling:
                    self.quota.release(holder_id(deployment_id, rolling=True))
                    self._update(deployment_id, f"rollout to version {version} failed: "
                                 f"{reason}; version {row.version} keeps serving",
                                 state="running", reason=f"rollout to version {version} "
                                 f"failed: {reason}")
                else:
                    self._fail(deployment_id, reason)
                return
            old = self.live.get(row.model)
            live = Live(deployment_id, row.model, replicas,
                        old.stats if old is not None else RequestStats())
            self.live[row.model] = live  # the router switches here, atomically
            self._update(
                deployment_id, f"version {version} serving with {len(replicas)} replica(s)",
                state="running", version=version, reason=f"serving version {version}",
                processes=[r.record() for r in replicas],
            )
            if rolling and old is not None:
                await self._drain_and_stop(old.replicas)
                self.quota.release(holder_id(deployment_id))
                # the new version's reservation becomes the deployment's own
                holder = self.quota.ledger.holder(holder_id(deployment_id, rolling=True))
                self.quota.release(holder_id(deployment_id, rolling=True))
                self.quota.reserve_server(holder_id(deployment_id), holder.user, holder.group,
                                          holder.pool, holder.amount, time.time(),
                                          promoted=holder.pool == PRODUCTION_POOL)
        except Exception as e:
            self.log.exception("deployment %s: bringing up version %s failed", deployment_id,
                               version)
            self._fail(deployment_id, f"internal error while starting: {e}")
        finally:
            self._busy.discard(deployment_id)

    def _fail(self, deployment_id: int, reason: str) -> None:
        row = self.get(deployment_id)
        live = self.live.get(row.model)
        if live is not None and live.id == deployment_id:
            del self.live[row.model]
            self._spawn(self._stop_replicas(live.replicas))
        self.quota.release(holder_id(deployment_id))
        self.quota.release(holder_id(deployment_id, rolling=True))
        self._update(deployment_id, f"failed: {reason}", state="failed", reason=reason)

    async def _start_replicas(self, row: DeploymentRow, version: int) -> list[Replica]:
        v = self.registry.version(row.model, version)
        owner = self.registry.get(row.model).owner
        account = self.isolation.account(owner)
        return [self._start_one(row, v.path, version, i, account)
                for i in range(int(row.resources["replicas"]))]

    def _start_one(self, row: DeploymentRow, path: str, version: int, index: int,
                   account: Any) -> Replica:
        logs = private_dir(private_dir(self.data_dir / "deployments", 0o711) / str(row.id))
        log_path = logs / f"replica-{index}-v{version}.log"
        port = free_port()
        cgroup = None
        driver = self.isolation.cgroups
        if driver.available:
            cgroup = driver.create(
                f"deploy-{row.id}-{index}-v{version}",
                Limits(cpu=float(row.resources["cpu"]), memory=int(row.resources["memory"])),
            )
        env = run_as_env(account, {
            "PATH": f"{Path(self.python).parent}:/usr/bin:/bin",
            "MLP_MODEL_NAME": row.model, "MLP_MODEL_DIR": path, "MLP_HTTP_PORT": str(port),
            "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
            "HOME": str(account.home) if account else os.environ.get("HOME", "/"),
        })
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [self.python, str(SERVER_SCRIPT)], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=make_preexec(account, cgroup, "/"),
            )
        started = psutil.Process(proc.pid).create_time()
        return Replica(index, version, port, proc, proc.pid, started, log_path)

    async def _wait_ready(self, model: str, replicas: list[Replica]) -> tuple[bool, str]:
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.ready_timeout
        pending: list[Replica] = list(replicas)
        while pending:
            for r in list(pending):
                if not r.alive():
                    code = r.proc.poll() if r.proc else None
                    return False, (f"replica {r.index} (version {r.version}) exited with code "
                                   f"{code} while loading: {tail(r.log, 8)}")
                try:
                    resp = await client.fetch(
                        f"http://127.0.0.1:{r.port}/v2/models/{model}/ready", request_timeout=5)
                    if resp.code == 200:
                        pending.remove(r)
                except (HTTPClientError, OSError):
                    pass
            if time.monotonic() > deadline:
                return False, (f"not ready after {self.ready_timeout:g} s: "
                               f"{tail(pending[0].log, 8)}")
            if pending:
                await asyncio.sleep(0.2)
        return True, ""

    async def _drain_and_stop(self, replicas: list[Replica]) -> None:
        deadline = time.monotonic() + 60
        while any(r.inflight for r in replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self._stop_replicas(replicas)

    async def _stop_replicas(self, replicas: list[Replica]) -> None:
        for r in replicas:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while any(r.alive() for r in replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for r in replicas:
            if r.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.pid, signal.SIGKILL)
            if r.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r.proc.wait(5)

    def roll(self, deployment_id: int, version: int) -> DeploymentRow:
        row = self.get(deployment_id)
        if row.state != "running" or deployment_id in self._busy:
            raise DeploymentError(409, "conflict", f"deployment {deployment_id} is {row.state}"
                                  "; roll a running deployment (wait until it runs)")
        self.registry.version(row.model, version)  # 404 for an unknown version
        r = row.resources
        self.quota.reserve_server(
            holder_id(deployment_id, rolling=True), row.user, row.group, row.pool,
            Resources(cpu=r["cpu"] * r["replicas"], memory=r["memory"] * r["replicas"]),
            time.time(), promoted=row.pool == PRODUCTION_POOL,
        )
        row = self._update(deployment_id, f"rolling from version {row.version} to {version}",
                           state="rolling", reason=f"rolling to version {version}")
        self._spawn(self._bring_up(deployment_id, version, rolling=True))
        return row

    async def delete(self, deployment_id: int) -> DeploymentRow:
        row = self.get(deployment_id)
        live = self.live.get(row.model)
        if row.state in LIVE_STATES:
            self._update(deployment_id, "stopping", state="stopped", reason="deleted")
        if live is not None and live.id == deployment_id:
            del self.live[row.model]
            await self._drain_and_stop(live.replicas)
        self.quota.release(holder_id(deployment_id))
        self.quota.release(holder_id(deployment_id, rolling=True))
        return self.get(deployment_id)

    # ------------------------------------------------------------------ supervision
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start_supervising(self) -> None:
        """Bring back deployments that were live when the service stopped, then watch."""
        from sqlalchemy import select

        with self.store.session() as s:
            rows = list(s.scalars(select(DeploymentRow)
                                  .where(DeploymentRow.state.in_(LIVE_STATES))))
        for row in rows:
            stale = [Replica(p["index"], p["version"], p["port"], None, p["pid"], p["started"],
                             Path(p["log"])) for p in (row.processes or [])]
            self._spawn(self._stop_replicas(stale))
            self.quota.release(holder_id(row.id, rolling=True))
            self._update(row.id, "service restarted: starting the replicas again",
                         state="starting", reason="restarting after a service restart")
            self.start(row)
        self._loop_task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self._check()
            except Exception:
                self.log.exception("checking the deployments failed")

    def _check(self) -> None:
        for model, live in list(self.live.items()):
            if live.id in self._busy and self.get(live.id).state != "rolling":
                continue
            for i, r in enumerate(list(live.replicas)):
                if r.alive():
                    continue
                code = r.proc.poll() if r.proc else None
                now = time.time()
                r.exits = [t for t in r.exits if now - t < self.restart_window] + [now]
                why = (f"replica {r.index} (version {r.version}) exited with code {code}: "
                       f"{tail(r.log, 5)}")
                row = self.get(live.id)
                if len(r.exits) > self.max_restarts:
                    self._fail(live.id, f"{why}; it exited {len(r.exits)} times in "
                               f"{self.restart_window:g} s, more than max_restarts="
                               f"{self.max_restarts}")
                    break
                owner = self.registry.get(model).owner
                fresh = self._start_one(row, self.registry.version(model, r.version).path,
                                        r.version, r.index, self.isolation.account(owner))
                fresh.exits = r.exits
                live.replicas[i] = fresh
                self._update(live.id, f"{why}; restarted", restarts=row.restarts + 1,
                             processes=[x.record() for x in live.replicas])

    async def stop(self) -> None:
        """The service stops: the deployments' processes stop with it (they come back at the
        next start)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        for live in list(self.live.values()):
            await self._stop_replicas(live.replicas)


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
