"""The job manager: the only writer of job state. It admits queued jobs, starts them through the
backend, watches their tasks, and applies the state machine's outcomes (success, failure with the
task and exit code, timeout, cancel, adoption after a restart).

Longer than 500 lines because it is the one writer of job state: every transition (start,
watch, cancel, timeout, preemption, requeue, dependencies, adoption) reads and writes the same
store, ledger holders and subscribers on one event loop, and keeping them in one class is what
makes each transition's ordering visible in one place. Pure policy lives in `mlp.scheduling`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlp.backends.base import JobBackend, JobLaunch, Observation, SetupError
from mlp.core.quota import QuotaError, QuotaService, job_holder_id, job_id_of
from mlp.core.spec import JobSpec, SpecError, TaskSpec, validate_spec
from mlp.core.states import TERMINAL_STATES, JobState, TransitionError
from mlp.scheduling import PRODUCTION_POOL, Preemption, resolve_group
from mlp.scheduling.scheduler import validate_fits_ever
from mlp.store import Job, Store

if TYPE_CHECKING:
    from mlp.core.alerts import AlertNotifier

ALERT_EVENT = {
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.TIMED_OUT: "timed_out",
    JobState.CANCELLED: "cancelled",
    JobState.PREEMPTED: "preempted",
}


class JobNotFound(KeyError):
    pass


class RuntimeNotConfigured(ValueError):
    pass


@dataclass
class ManagerSettings:
    runtimes: dict[str, list[str]]
    default_runtime: str
    poll_interval: float
    default_task: TaskSpec
    default_max_runtime: float
    max_runtime_limit: float | None


def _waiting_reason(obs: Observation) -> str:
    return "tasks created; waiting for all of them to run: " + "; ".join(obs.pending)


def _running_reason(tasks: list[Any], spec: JobSpec) -> str:
    return f"{len(tasks)} tasks running: {spec.describe_tasks()}"


def spec_from_job(job: Job) -> JobSpec:
    """Rebuild the validated spec from what the store holds (it was validated at submit)."""
    return validate_spec(job.spec)


class JobManager:
    def __init__(
        self,
        store: Store,
        backend: JobBackend,
        settings: ManagerSettings,
        quota: QuotaService,
        notifier: AlertNotifier | None = None,
        log: logging.Logger | None = None,
    ):
        self.store = store
        self.backend = backend
        self.settings = settings
        self.quota = quota
        self.notifier = notifier
        # Queued jobs waiting for their dependencies (not in the scheduler yet), and whether a
        # job ended since they were last checked (only an ending can settle a dependency, so a
        # pass without one skips the check: hundreds of waiting jobs cost nothing per pass).
        self._waiting: set[int] = set()
        self._ended_since_dependency_check = True
        self.log = log or logging.getLogger("mlp.core.manager")
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._busy: set[int] = set()  # jobs with a start/stop in flight
        self._background: set[asyncio.Task[Any]] = set()
        # Subscribers to state changes (server-sent events): job id -> queues.
        self._watchers: dict[int, set[asyncio.Queue[Job]]] = {}

    # ---------------------------------------------------------------- public API
    def validate(self, raw: Any) -> JobSpec:
        spec = validate_spec(
            raw,
            default_task=self.settings.default_task,
            default_max_runtime=self.settings.default_max_runtime,
            max_runtime_limit=self.settings.max_runtime_limit,
        )
        runtime = spec.runtime or self.settings.default_runtime
        if runtime not in self.settings.runtimes:
            raise RuntimeNotConfigured(
                f"runtime {runtime!r} is not configured; available: "
                f"{', '.join(sorted(self.settings.runtimes))}"
            )
        return spec

    def submit(self, user: str, raw: Any, hub_groups: list[str] | None = None) -> Job:
        """Validate, charge to a quota group and pool, and queue a job (or refuse it)."""
        spec = self.validate(raw)
        if spec.alerts and self.notifier is not None and not self.notifier.email_enabled:
            for i, alert in enumerate(spec.alerts):
                if "email" in alert:
                    raise SpecError(
                        f"alerts[{i}].email",
                        "email alerts are not configured on "
                        "this platform (c.AlertNotifier.smtp_host)",
                    )
        ledger = self.quota.ledger
        try:
            group = resolve_group(
                user,
                hub_groups or [],
                ledger.groups,
                self.quota.config.default_group,
                requested=spec.group,
            )
        except ValueError as e:
            raise SpecError("group", str(e)) from None
        promoted = self.quota.is_promoted(user, spec.name)
        pool = spec.pool or (
            PRODUCTION_POOL if promoted and PRODUCTION_POOL in ledger.pools else "default"
        )
        if pool not in ledger.pools:
            raise SpecError(
                "pool", f"unknown pool {pool!r}; pools are {', '.join(sorted(ledger.pools))}"
            )
        waiting = self._check_dependencies(user, spec.depends_on)
        spec_dict = spec.to_dict()
        probe = self.quota.demand(
            "job:new", user, spec.name, spec_dict, group, pool, spec.priority, time.time()
        )
        blockers = validate_fits_ever(
            probe, ledger.groups, ledger.pools, ledger.expansions.values()
        )
        if blockers:
            reason = "; ".join(b.reason for b in blockers)
            raise QuotaError(400, "never_fits", reason, blocking=blockers)
        job = self.store.create_job(
            user, spec.name, spec_dict, reason=f"submitted by {user}", batch=spec.batch
        )
        job = self.store.update(job.id, group=group, pool=pool, priority=spec.priority)
        demand = self.quota.demand_for(job)
        self.log.info(
            "job %s (%s) submitted by %s to %s/%s: %s",
            job.id,
            spec.name,
            user,
            group,
            pool,
            spec.describe_tasks(),
        )
        if waiting:
            self._waiting.add(job.id)
            job = self.store.update(
                job.id,
                reason="waiting for job"
                + ("s " if len(waiting) > 1 else " ")
                + ", ".join(map(str, waiting))
                + " to succeed",
            )
        else:
            self.quota.scheduler.submit(demand)
        self.kick()
        return job

    def _check_dependencies(self, user: str, depends_on: tuple[int, ...]) -> list[int]:
        """The dependencies still to finish; refuses unknown, foreign or failed ones."""
        waiting = []
        for dep_id in depends_on:
            dep = self.store.get_job(dep_id)
            if dep is None:
                raise SpecError("depends_on", f"job {dep_id} does not exist")
            if dep.user != user:
                raise QuotaError(
                    403,
                    "forbidden",
                    f"depends_on: job {dep_id} belongs to another user",
                    field="depends_on",
                )
            state = dep.job_state
            if state.terminal and state != JobState.SUCCEEDED:
                raise SpecError(
                    "depends_on",
                    f"job {dep_id} already ended {dep.state}; this job could never run",
                )
            if state != JobState.SUCCEEDED:
                waiting.append(dep_id)
        # Dependencies must exist before a job is submitted, so they can never form a cycle.
        return waiting

    def holding(self, job: Job) -> dict[str, Any] | None:
        """What an admitted job holds in the ledger; borrowed quota makes it preemptible."""
        hid = job_holder_id(job.id)
        if hid not in self.quota.ledger:
            return None
        h = self.quota.ledger.holder(hid)
        return {
            "group": h.group,
            "pool": h.pool,
            "amount": h.amount.to_dict(),
            "borrowed": h.borrowed.to_dict(),
            "preemptible": h.preemptible,
        }

    def queue_info(self, job: Job) -> dict[str, Any] | None:
        """Position, score and what blocks a queued job (None once it left the queue)."""
        if job.job_state != JobState.QUEUED:
            return None
        if job.id in self._waiting:
            deps = list(job.spec.get("depends_on", []))
            return {
                "position": None,
                "score": None,
                "score_parts": {},
                "waiting_for": deps,
                "blocking": [
                    {
                        "reason": job.reason,
                        "scope": "dependency",
                        "dependency": deps,
                        "resource": "",
                        "requested": 0,
                        "available": 0,
                    }
                ],
            }
        hid = job_holder_id(job.id)
        if hid not in self.quota.scheduler:
            return None
        info = self.quota.scheduler.explain_pending(hid, time.time()).to_dict()
        info["group"], info["pool"] = job.group, job.pool
        return info

    def get(self, job_id: int) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def cancel(self, job_id: int, by: str) -> Job:
        job = self.get(job_id)
        state = job.job_state
        if state.terminal:
            return job
        reason = f"cancelled by {by}"
        if state in (JobState.QUEUED, JobState.PREEMPTED):
            return self._transition(job, JobState.CANCELLED, reason)
        return await self._finish(job, JobState.CANCELLED, reason)

    def subscribe(self, job_id: int) -> asyncio.Queue[Job]:
        q: asyncio.Queue[Job] = asyncio.Queue(maxsize=100)
        self._watchers.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: int, q: asyncio.Queue[Job]) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(q)
            if not watchers:
                del self._watchers[job_id]

    def observe(self, job: Job) -> Observation:
        if not job.backend_state:
            return Observation()
        return self.backend.observe_job(job.id, job.backend_state)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        now = time.time()
        active = self.store.list_jobs(states=[JobState.STARTING, JobState.RUNNING])
        preempted = self.quota.load(now, active)
        # Adoption may fail jobs, which releases their holders in the ledger just built.
        self.adopt_all()
        self._forget_stale_holders()
        self.apply_preemptions(preempted)
        for job in reversed(self.store.list_jobs(states=[JobState.QUEUED])):
            self._enqueue(job)
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        # Jobs keep running while the service is away; the next start adopts them.

    def kick(self) -> None:
        self._wake.set()

    def adopt_all(self) -> None:
        """After a restart: re-attach to running jobs, or fail them; never leave them Running."""
        for job in self.store.list_jobs(states=[JobState.STARTING, JobState.RUNNING]):
            obs = self.backend.adopt(job.id, job.backend_state or {})
            if obs.lost:
                self.log.warning("job %s: %s", job.id, obs.lost)
                if job.backend_state:
                    self._spawn(self.backend.stop(job.id, job.backend_state))
                self._transition(job, JobState.FAILED, obs.lost)
            elif job.job_state == JobState.STARTING:
                # Running once every task runs (the watch loop checks, as after a start).
                self.log.info("job %s adopted after restart while starting", job.id)
            else:
                self.log.info("job %s adopted after restart (%d tasks)", job.id, len(obs.tasks))

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                self.log.exception("job manager pass failed; retrying")
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation
            # that arrives just as the event is set (a kick), and stop() would never return.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def tick(self) -> None:
        """One pass: admit queued jobs, then check every active job's tasks."""
        now = time.time()
        self._resolve_dependencies()
        plan = self.quota.scheduler.schedule(now)
        self.apply_preemptions(plan.preempt)
        for holder_id, _borrowed in plan.admitted:
            job_id = job_id_of(holder_id)
            job = self.store.get_job(job_id) if job_id is not None else None
            if job is None or job.job_state != JobState.QUEUED:
                self.quota.release(holder_id)  # cancelled meanwhile
                continue
            holder = self.quota.persist_admitted(holder_id)
            self._busy.add(job.id)
            self._spawn(self._start(job, borrowed=not holder.borrowed.is_zero()))
        for job in self.store.list_jobs(states=[JobState.STARTING]):
            # Created but not all running yet (a cluster still scheduling or pulling images).
            if job.id not in self._busy and job.backend_state:
                self._check(job)
        for job in self.store.list_jobs(states=[JobState.RUNNING]):
            if job.id in self._busy:
                continue
            started = job.started_at or job.updated_at
            max_runtime = float(job.spec.get("max_runtime", self.settings.default_max_runtime))
            if now - started > max_runtime:
                self._busy.add(job.id)
                self._spawn(
                    self._finish(
                        job, JobState.TIMED_OUT, f"exceeded its max_runtime of {max_runtime:g} s"
                    )
                )
                continue
            self._check(job)

    # ---------------------------------------------------------------- internals
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _transition(self, job: Job, target: JobState, reason: str, **fields: Any) -> Job:
        """Apply a transition; a job that already ended (e.g. cancelled meanwhile) stays ended."""
        try:
            job = self.store.transition(job.id, target, reason, **fields)
        except TransitionError as e:
            self.log.info("job %s: not moving to %s: %s", job.id, target.value, e)
            return self.get(job.id)
        self.log.info("job %s -> %s: %s", job.id, target.value, reason)
        if target in TERMINAL_STATES or target == JobState.PREEMPTED:
            hid = job_holder_id(job.id)
            self.quota.release(hid)
            if hid in self.quota.scheduler:
                self.quota.scheduler.remove(hid)
            self._waiting.discard(job.id)
            self._ended_since_dependency_check = True
            self._alert(job, target)
        self._notify(job)
        return job

    def _notify(self, job: Job) -> None:
        for q in list(self._watchers.get(job.id, ())):
            if not q.full():
                q.put_nowait(job)

    async def _start(self, job: Job, borrowed: bool = False) -> None:
        try:
            if job_holder_id(job.id) not in self.quota.ledger:
                # Cancelled or preempted between admission and this start: it holds nothing,
                # so it must not run (a preempted one is back in the queue).
                return
            job = self._transition(
                job,
                JobState.STARTING,
                f"admitted to {job.group}/{job.pool}"
                + (" on borrowed quota (preemptible)" if borrowed else "")
                + "; preparing source and tasks",
            )
            if job.job_state != JobState.STARTING:
                return
            spec = spec_from_job(job)
            runtime = spec.runtime or self.settings.default_runtime
            python = self.settings.runtimes.get(runtime)
            if python is None:
                self._transition(
                    job,
                    JobState.FAILED,
                    f"runtime {runtime!r} is no longer configured on this platform",
                )
                return
            launch = JobLaunch(
                job_id=job.id,
                user=job.user,
                spec=spec,
                python=python,
                attempt=job.attempt,
                devices=self.quota.ledger.holder(job_holder_id(job.id)).devices,
            )
            try:
                state = await self.backend.submit(launch)
            except SetupError as e:
                self._transition(job, JobState.FAILED, str(e), backend_state=e.backend_state)
                return
            except OSError as e:
                self._transition(job, JobState.FAILED, f"could not start the job's tasks: {e}")
                return
            except Exception as e:
                # Never leave a job stuck in Starting: fail it and say where to look.
                self.log.exception("job %s: unexpected error while starting", job.id)
                self._transition(
                    job,
                    JobState.FAILED,
                    f"internal error while starting ({e.__class__.__name__}: {e}); "
                    "see the mlp service log",
                )
                return
            current = self.get(job.id)
            if current.job_state != JobState.STARTING or current.attempt != job.attempt:
                # Cancelled (or preempted, maybe already started again) while starting: the
                # tasks we just launched must not outlive it, nor replace a newer attempt's.
                await self.backend.stop(job.id, state)
                if self.get(job.id).attempt == job.attempt:
                    self.store.update(job.id, backend_state=state)
                return
            obs = self.backend.observe_job(job.id, state)
            if obs.pending:
                # Created, not all running: it stays Starting until they are (see _check).
                self._note(current, _waiting_reason(obs), backend_state=state)
            else:
                self._transition(
                    job,
                    JobState.RUNNING,
                    _running_reason(state["tasks"], spec),
                    backend_state=state,
                )
        finally:
            self._busy.discard(job.id)
            self.kick()

    def _note(self, job: Job, reason: str, **fields: Any) -> Job:
        """A new reason (and fields) without a change of state; watchers see it."""
        job = self.store.update(job.id, reason=reason, **fields)
        self._notify(job)
        return job

    def _check(self, job: Job) -> None:
        obs = self.observe(job)
        if job.job_state == JobState.STARTING and not (obs.lost or obs.requeue):
            failed = any(not t.running and (t.exit_code != 0 or t.signal is not None)
                         for t in obs.tasks)
            if obs.pending and not failed:  # still waiting for the whole gang to run
                reason = _waiting_reason(obs)
                if reason != job.reason:
                    self._note(job, reason)
                return
            if not obs.pending:
                tasks = (job.backend_state or {}).get("tasks", [])
                job = self._transition(
                    job, JobState.RUNNING, _running_reason(tasks, spec_from_job(job)))
                if job.job_state != JobState.RUNNING:
                    return
        if obs.lost:
            self._busy.add(job.id)
            self._spawn(self._finish(job, JobState.FAILED, obs.lost))
            return
        if obs.requeue:
            self._busy.add(job.id)
            self._spawn(self._preempt(job, obs.requeue, requeued=True))
            return
        if not obs.tasks:
            return
        has_ps = any(t.type == "ps" for t in obs.tasks)
        for t in obs.tasks:
            if t.running:
                continue
            if t.exit_code != 0 or t.signal is not None:
                self._busy.add(job.id)
                self._spawn(
                    self._finish(
                        job,
                        JobState.FAILED,
                        f"task {t.name} {t.describe_exit()}; see its log: mlp logs {job.id} "
                        f"--task {t.name}",
                    )
                )
                return
            if t.type == "ps":
                self._busy.add(job.id)
                self._spawn(
                    self._finish(
                        job,
                        JobState.FAILED,
                        f"parameter server {t.name} exited before the training finished",
                    )
                )
                return
        # With parameter servers the chief's program is the training: ps and workers serve it
        # forever and are stopped once it is done. Without them every task trains to the end.
        done_roles = {"chief"} if has_ps else {"chief", "worker"}
        finishing = [t for t in obs.tasks if t.type in done_roles]
        if finishing and all(not t.running and t.exit_code == 0 for t in finishing):
            self._busy.add(job.id)
            self._spawn(
                self._finish(
                    job,
                    JobState.SUCCEEDED,
                    "chief finished" if has_ps else "all tasks finished",
                )
            )

    def _enqueue(self, job: Job) -> None:
        if job.spec.get("depends_on"):
            self._waiting.add(job.id)
            self._ended_since_dependency_check = True  # its dependencies may have ended meanwhile
        else:
            self.quota.scheduler.submit(self.quota.demand_for(job))

    def _resolve_dependencies(self) -> None:
        if not self._ended_since_dependency_check:
            return
        self._ended_since_dependency_check = False
        for job_id in sorted(self._waiting):
            job = self.get(job_id)
            deps = [self.store.get_job(d) for d in job.spec.get("depends_on", [])]
            broken = [
                d
                for d in deps
                if d is None or (d.job_state.terminal and d.job_state != JobState.SUCCEEDED)
            ]
            if broken:
                d = broken[0]
                what = f"job {d.id} ended {d.state}" if d else "a dependency vanished"
                self._transition(job, JobState.FAILED, f"dependency failed: {what}")
            elif all(d is not None and d.job_state == JobState.SUCCEEDED for d in deps):
                self._waiting.discard(job_id)
                self.store.update(job_id, reason="dependencies succeeded; queued")
                self.quota.scheduler.submit(self.quota.demand_for(job))

    def _forget_stale_holders(self) -> None:
        """Holders of jobs that ended while the service was away give their quota back."""
        for holder in list(self.quota.ledger.holders()):
            job_id = job_id_of(holder.id)
            if job_id is None:
                continue
            job = self.store.get_job(job_id)
            if job is None or not job.job_state.active:
                self.quota.release(holder.id)

    def move_to_production(self, user: str, name: str) -> list[int]:
        """Queued jobs of a model an admin just promoted move to the production pool."""
        moved: list[int] = []
        if PRODUCTION_POOL not in self.quota.ledger.pools:
            return moved
        scheduler = self.quota.scheduler
        for job in self.store.list_jobs(user=user, states=[JobState.QUEUED]):
            hid = job_holder_id(job.id)
            if job.name != name or job.spec.get("pool"):
                continue
            if hid in scheduler:
                scheduler.remove(hid)
                job = self.store.update(job.id, pool=PRODUCTION_POOL)
                scheduler.submit(self.quota.demand_for(job))
            elif job.id in self._waiting:
                # Still waiting for its dependencies: it enters the queue in production later.
                self.store.update(job.id, pool=PRODUCTION_POOL)
            else:
                continue  # admitted, starting now
            moved.append(job.id)
        self.kick()
        return moved

    def apply_preemptions(self, preemptions: list[Preemption]) -> None:
        """Stop and requeue the jobs whose holders the ledger released to restore a limit."""
        for p in preemptions:
            self.quota.forget(p.holder_id)
            job_id = job_id_of(p.holder_id)
            job = self.store.get_job(job_id) if job_id is not None else None
            if job is None or job.job_state.terminal:
                continue
            self._busy.add(job.id)
            self._spawn(self._preempt(job, p.reason))

    async def _preempt(self, job: Job, reason: str, requeued: bool = False) -> None:
        """Stop a job whose borrowed quota was reclaimed (or that the backend gave up, with
        `requeued`), then queue it again."""
        self._busy.add(job.id)
        try:
            current = self.get(job.id)
            hid = job_holder_id(job.id)
            if current.job_state == JobState.QUEUED:
                # Admitted but not started yet: nothing runs, it only goes back in line.
                if hid not in self.quota.scheduler:
                    self.quota.scheduler.submit(self.quota.demand_for(current))
                self.store.update(job.id, reason=f"admission withdrawn: {reason}")
                return
            if current.backend_state and current.job_state.active:
                await self.backend.stop(job.id, current.backend_state)
            current = self._transition(
                current, JobState.PREEMPTED, reason if requeued else f"preempted: {reason}"
            )
            if current.job_state != JobState.PREEMPTED:
                return
            attempt = current.attempt + 1
            current = self._transition(
                current,
                JobState.QUEUED,
                f"requeued: {reason} (attempt {attempt})"
                if requeued
                else f"requeued after preemption (attempt {attempt})",
                attempt=attempt,
                started_at=None,
                backend_state=None,
            )
            if current.job_state == JobState.QUEUED:
                self.quota.scheduler.submit(self.quota.demand_for(current))
        finally:
            self._busy.discard(job.id)
            self.kick()

    def _alert(self, job: Job, state: JobState) -> None:
        alerts = job.spec.get("alerts") or []
        event = ALERT_EVENT.get(state)
        if not alerts or event is None or self.notifier is None:
            return
        model = {
            "id": job.id,
            "user": job.user,
            "name": job.name,
            "state": job.state,
            "reason": job.reason,
            "attempt": job.attempt,
            "batch": job.batch,
        }
        self._spawn(self.notifier.notify(model, event, alerts))

    async def _finish(self, job: Job, target: JobState, reason: str) -> Job:
        # Mark the job before the first await so the watch loop leaves it alone while its
        # tasks are being stopped (their exits are ours, not failures).
        self._busy.add(job.id)
        try:
            current = self.get(job.id)
            if current.job_state.terminal:
                return current
            if current.backend_state:
                await self.backend.stop(job.id, current.backend_state)
            current = self.get(job.id)
            if current.job_state.terminal:
                return current
            return self._transition(current, target, reason)
        finally:
            self._busy.discard(job.id)
