"""The IPython magics: `%%mlp_train`, `%mlp_jobs`, `%mlp_job`, `%mlp_logs`, `%mlp_cancel`,
`%mlp_compare`, `%mlp_quota`, and their configuration (`%config TrainMagics.*`).

Magics parse, submit and hand back a dashboard at once; following the job happens in the
dashboard's poller, a task on the kernel's event loop, so the kernel stays free (only `--wait`
and `%mlp_logs --follow` block, because the user asked for it).
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Float, Int, Unicode, validate

from mlp_magics.client import MagicsClient, MLPError, describe_error
from mlp_magics.dashboards import BatchDashboard, JobDashboard
from mlp_magics.options import (
    OptionError,
    TrainDefaults,
    TrainPlan,
    build_plan,
    home_folder,
    parse_line,
    train_arguments,
)
from mlp_magics.tables import JobsTable, QuotaView


class JobFailed(RuntimeError):
    """`%%mlp_train --wait` on a job that did not succeed: stops "Run all" with the reason."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a Python traceback: the job failed, not the cell.
        return [f"JobFailed: {self}"]


class DryRun:
    """The specs `%%mlp_train --dry-run` would submit."""

    def __init__(self, plan: TrainPlan):
        self.plan = plan

    def __repr__(self) -> str:
        what = f"{len(self.plan.specs)} job(s)"
        if self.plan.batch:
            what += f" in batch {self.plan.batch}"
        return f"would submit {what}:\n" + json.dumps(self.plan.specs, indent=1)


@magics_class
class TrainMagics(Magics):
    """Launch and follow training jobs on the mlp platform from a notebook."""

    default_name = Unicode("train", config=True,
                           help="Job name when %%mlp_train has no --name.")
    default_workers = Int(1, config=True, help="Worker tasks when --workers is not given.")
    default_ps = Int(0, config=True,
                     help="Parameter-server tasks when --ps is not given (0: none).")
    default_cpu = Unicode(None, allow_none=True, config=True,
                          help="CPU per task when --cpu is not given (None: the service's "
                          "default), e.g. '2' or '500m'.")
    default_memory = Unicode(None, allow_none=True, config=True,
                             help="Memory per task when --memory is not given, e.g. '4Gi'.")
    default_gpu = Unicode(None, allow_none=True, config=True,
                          help="GPUs per worker when --gpu is not given.")
    default_max_runtime = Unicode(None, allow_none=True, config=True,
                                  help="--max-runtime when not given, e.g. '2h'.")
    default_runtime = Unicode(None, allow_none=True, config=True,
                              help="--runtime when not given (None: the service's default).")
    default_pool = Unicode(None, allow_none=True, config=True,
                           help="--pool when not given (None: the service's default).")
    max_grid_size = Int(256, config=True, help="""Most jobs one --grid may create. A bigger
        grid is refused before anything is submitted; raise it deliberately
        (%config TrainMagics.max_grid_size = 1000).""")
    log_lines = Int(200, config=True, help="Log lines a dashboard keeps (per task shown).")
    poll_interval = Float(1.0, config=True,
                          help="Seconds between dashboard updates while a job changes.")
    max_poll_interval = Float(10.0, config=True, help="""Longest pause between dashboard
        updates when nothing changes (the interval grows from poll_interval).""")
    service_url = Unicode(None, allow_none=True, config=True, help="""URL of the mlp service,
        e.g. http://127.0.0.1:10101/services/mlp/. Default: $MLP_URL, which the platform's
        spawner sets for every notebook server.""")
    request_timeout = Float(10.0, config=True,
                            help="Seconds to wait for one answer of the mlp service.")

    @validate("default_workers", "max_grid_size", "log_lines")
    def _at_least_one(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise ValueError(f"{proposal['trait'].name} must be at least 1, "
                             f"got {proposal['value']}")
        return int(proposal["value"])

    @validate("default_ps")
    def _not_negative(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise ValueError(f"default_ps must be 0 or more, got {proposal['value']}")
        return int(proposal["value"])

    @validate("poll_interval", "max_poll_interval", "request_timeout")
    def _positive(self, proposal: Any) -> float:
        if not proposal["value"] > 0:
            raise ValueError(f"{proposal['trait'].name} must be positive")
        return float(proposal["value"])

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell, **kwargs)
        self._client: MagicsClient | None = None
        self._client_key: tuple[str | None, float] | None = None
        # Dashboards still following a job, stopped when the extension is unloaded.
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()

    # ------------------------------------------------------------------ helpers
    @property
    def client(self) -> MagicsClient:
        key = (self.service_url, self.request_timeout)
        if self._client is None or self._client_key != key:
            try:
                self._client = MagicsClient(url=self.service_url or None,
                                            timeout=self.request_timeout)
            except MLPError as e:
                raise UsageError(f"cannot talk to the mlp service: {e.message}") from None
            self._client_key = key
        return self._client

    def defaults(self) -> TrainDefaults:
        return TrainDefaults(
            name=self.default_name, workers=self.default_workers, ps=self.default_ps,
            cpu=self.default_cpu, memory=self.default_memory, gpu=self.default_gpu,
            max_runtime=self.default_max_runtime, runtime=self.default_runtime,
            pool=self.default_pool, max_grid_size=self.max_grid_size,
        )

    def _parse(self, func: Any, line: str) -> Any:
        try:
            return parse_line(func, line)
        except OptionError as e:
            raise UsageError(str(e)) from None

    def _job_id(self, text: str) -> int:
        text = text.strip().lstrip("#")
        if not text.isdigit():
            raise UsageError(f"expected a job id (a number), got {text!r}; %mlp_jobs lists them")
        return int(text)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MLPError as e:
            raise UsageError(f"{what}: {describe_error(e)}") from None

    # ------------------------------------------------------------------ %%mlp_train
    @train_arguments
    @line_cell_magic
    def mlp_train(self, line: str, cell: str | None = None) -> Any:
        """Run the cell (or --from-file / --git) as a training job on the platform."""
        try:
            args = parse_line(self.mlp_train, line)
            plan = build_plan(args, cell, self.defaults(), home=home_folder(), cwd=Path.cwd())
        except OptionError as e:
            raise UsageError(str(e)) from None
        if plan.dry_run:
            return DryRun(plan)
        client = self.client
        dash: JobDashboard | BatchDashboard
        if len(plan.specs) == 1 and plan.batch is None:
            dash = JobDashboard(client, spec=plan.specs[0], log_lines=self.log_lines,
                                interval=self.poll_interval, max_interval=self.max_poll_interval)
        else:
            dash = BatchDashboard(client, batch=plan.batch, specs=plan.specs,
                                  interval=self.poll_interval * 2,
                                  max_interval=self.max_poll_interval)
        dash.start()
        self.live.add(dash)
        if not plan.wait:
            return dash
        return self._wait(dash)

    def _wait(self, dash: JobDashboard | BatchDashboard) -> None:
        handle = display(dash, display_id=True)
        try:
            dash.wait()
        except KeyboardInterrupt:
            # The job is the service's, not the kernel's: interrupting only stops waiting.
            print("stopped waiting; the job keeps running (%mlp_jobs to find it again)")
            return None
        if handle is not None:
            handle.update(dash)  # the text/html snapshot saved in the notebook is the final one
        if isinstance(dash, JobDashboard):
            if dash.job is None:
                raise JobFailed(f"not submitted: {dash.error}")
            if dash.state != "Succeeded":
                raise JobFailed(f"job {dash.job_id} ({dash.job.get('name')}) {dash.state}: "
                                f"{dash.job.get('reason')}")
        else:
            bad = [j for j in dash.jobs.values() if j.get("state") != "Succeeded"]
            if dash.error and not dash.jobs:
                raise JobFailed(f"not submitted: {dash.error}")
            if bad or dash.refused:
                raise JobFailed(f"{len(bad)} of {len(dash.jobs)} jobs did not succeed"
                                f"{f', {len(dash.refused)} refused' if dash.refused else ''}: "
                                + ", ".join(f"{j['id']} {j.get('state')}" for j in bad[:10]))
        return None

    # ------------------------------------------------------------------ other magics
    @magic_arguments()
    @argument("--state", help="Only jobs in these states, e.g. Running or Queued,Running.")
    @argument("--batch", help="Only the jobs of this batch (a --grid).")
    @argument("--limit", type=int, default=50, help="At most this many jobs (newest first).")
    @line_magic
    def mlp_jobs(self, line: str = "") -> JobsTable:
        """List my jobs; `%mlp_job ID` opens one's dashboard."""
        args = self._parse(self.mlp_jobs, line)
        jobs = self._call("listing jobs", self.client.list_jobs, state=args.state,
                          batch=args.batch, limit=args.limit)
        return JobsTable(jobs)

    @magic_arguments()
    @argument("job", help="Job id.")
    @line_magic
    def mlp_job(self, line: str = "") -> JobDashboard:
        """The live dashboard of an existing job (after a restart, in another notebook...)."""
        args = self._parse(self.mlp_job, line)
        dash = JobDashboard(self.client, self._job_id(args.job), log_lines=self.log_lines,
                            interval=self.poll_interval, max_interval=self.max_poll_interval)
        dash.start()
        if dash.job is None and dash.error and not dash.retryable:
            raise UsageError(dash.error)
        self.live.add(dash)
        return dash

    @magic_arguments()
    @argument("jobs", nargs="+", help="A batch name, or job ids.")
    @line_magic
    def mlp_compare(self, line: str = "") -> BatchDashboard:
        """Compare the jobs of a batch (or given ids): table of parameters and final metrics,
        and their curves."""
        args = self._parse(self.mlp_compare, line)
        tokens = [t for item in args.jobs for t in item.replace(",", " ").split()]
        if all(t.lstrip("#").isdigit() for t in tokens):
            dash = BatchDashboard(self.client, job_ids=[self._job_id(t) for t in tokens],
                                  interval=self.poll_interval * 2,
                                  max_interval=self.max_poll_interval)
        elif len(tokens) == 1:
            dash = BatchDashboard(self.client, batch=tokens[0], interval=self.poll_interval * 2,
                                  max_interval=self.max_poll_interval)
        else:
            raise UsageError("give one batch name or several job ids, e.g. "
                             "%mlp_compare sweep-1a2b3c or %mlp_compare 12 13 14")
        dash.start()
        if dash.error and not dash.retryable:
            raise UsageError(dash.error)
        if not dash.ids() and not dash.error:
            raise UsageError(f"no jobs in batch {tokens[0]!r}; %mlp_jobs shows the batches")
        self.live.add(dash)
        return dash

    @magic_arguments()
    @argument("job", help="Job id.")
    @argument("--task", help="Only this task, e.g. worker:0, chief:0, ps:1 or setup.")
    @argument("--tail", type=int, default=100, help="Lines per task (default 100).")
    @argument("--follow", action="store_true",
              help="Keep printing new lines until the job ends (interrupt to stop).")
    @line_magic
    def mlp_logs(self, line: str = "") -> None:
        """Print the logs of a job's tasks."""
        args = self._parse(self.mlp_logs, line)
        job_id = self._job_id(args.job)
        if not args.follow:
            logs = self._call(f"logs of job {job_id}", self.client.logs, job_id,
                              task=args.task, tail=args.tail)
            if not logs:
                print(f"job {job_id} has no logs yet (it has not started)")
            for task, lines in logs.items():
                if len(logs) > 1:
                    print(f"==> {task} <==")
                print("\n".join(lines))
            return
        try:
            for event, data in self.client.follow(job_id, task=args.task, tail=args.tail):
                if event == "log":
                    prefix = "" if args.task else f"[{data.get('task')}] "
                    print(f"{prefix}{data.get('line', '')}", flush=True)
                elif event in ("state", "end"):
                    print(f"--- job {job_id}: {data.get('state')}: {data.get('reason')}",
                          flush=True)
                    if event == "end":
                        break
        except MLPError as e:
            raise UsageError(f"logs of job {job_id}: {describe_error(e)}") from None
        except KeyboardInterrupt:
            print("stopped following; the job keeps running")

    @magic_arguments()
    @argument("jobs", nargs="+", help="Job ids.")
    @line_magic
    def mlp_cancel(self, line: str = "") -> None:
        """Cancel jobs (their tasks are stopped; queued jobs leave the queue)."""
        args = self._parse(self.mlp_cancel, line)
        for token in (t for item in args.jobs for t in item.replace(",", " ").split()):
            job_id = self._job_id(token)
            job = self._call(f"cancel job {job_id}", self.client.cancel, job_id)
            print(f"job {job_id} ({job.get('name')}): {job.get('state')} — {job.get('reason')}")

    @magic_arguments()
    @line_magic
    def mlp_quota(self, line: str = "") -> QuotaView:
        """My quota and current usage, as the service reports them."""
        self._parse(self.mlp_quota, line)
        try:
            quota = self.client.quota()
        except MLPError as e:
            if e.status == 404:
                raise UsageError(
                    "this mlp service does not report quotas yet (GET /quota); the service "
                    f"said: {e.message}") from None
            raise UsageError(f"quota: {describe_error(e)}") from None
        return QuotaView(quota)


def load_ipython_extension(ipython: Any) -> None:
    magics = TrainMagics(shell=ipython)
    ipython.register_magics(magics)
    ipython._mlp_magics = magics
    from mlp_magics.serving_magics import ServingMagics

    ipython.register_magics(ServingMagics(shell=ipython))


def unload_ipython_extension(ipython: Any) -> None:
    magics = getattr(ipython, "_mlp_magics", None)
    if magics is not None:
        for dash in list(magics.live):
            dash.stop()
