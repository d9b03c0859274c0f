"""`mlp serve`: the platform's control plane, run by JupyterHub as the managed service "mlp"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web
from traitlets import Bool, Dict, Float, Integer, List, Type, Unicode, Union, default, validate
from traitlets.config import Application

from mlp import __version__
from mlp.api import response_models, route_table
from mlp.api.home import HomeHandler
from mlp.api.openapi import build_openapi
from mlp.backends.base import JobBackend
from mlp.backends.local import LocalProcessBackend
from mlp.core.alerts import AlertNotifier
from mlp.core.hubsync import HubSync
from mlp.core.manager import JobManager, ManagerSettings
from mlp.core.quota import QuotaService
from mlp.core.spec import TaskSpec
from mlp.isolation import MLPIsolation
from mlp.isolation.netguard import OutboundPolicy
from mlp.isolation.process import unreachable_ancestor
from mlp.scheduling import QuotaConfig, ScorePolicy
from mlp.scheduling.resources import parse_cpu, parse_memory
from mlp.serving.service import ModelServing
from mlp.store import Store


def default_data_dir() -> str:
    return os.environ.get("MLP_DATA_DIR") or str(Path.home() / ".local" / "share" / "mlp")


class MLPService(Application):
    name = "mlp"
    description = "The mlp control plane: job store, queue and backends, behind a REST API."
    version = __version__

    classes = [LocalProcessBackend, QuotaConfig, ScorePolicy, AlertNotifier, MLPIsolation,
               OutboundPolicy, ModelServing]

    aliases = {
        "config": "MLPService.config_file",
        "extra-config": "MLPService.extra_config_file",
        "data-dir": "MLPService.data_dir",
        "port": "MLPService.port",
        "log-level": "Application.log_level",
    }

    config_file = Unicode(
        "",
        config=True,
        help="""A traitlets config file to load, usually the hub's jupyterhub_config.py, so one
        file configures the whole platform (`c.MLPService.*`, `c.LocalProcessBackend.*`).""",
    )
    extra_config_file = Unicode(
        "",
        config=True,
        help="""A second config file loaded after `config_file` (site overrides, tests).""",
    )
    quota_file = Unicode(
        "",
        config=True,
        help="""A YAML file declaring quotas instead of (or on top of) `c.QuotaConfig`: top-level
        keys `pools`, `groups`, `default_group`, `default_group_quota`, `extra_resources`, each
        as in QuotaConfig. Precedence: the store (admin API changes) > this file > traitlets
        config. See docs/scheduling.md.""",
    )
    backfill = Bool(
        True,
        config=True,
        help="""Let smaller jobs start ahead of a blocked job when they finish (by their
        declared max_runtime) before it could start. See docs/scheduling.md.""",
    )
    data_dir = Unicode(
        config=True,
        help="""Where the platform keeps its state: the job database and one folder per user
        (<data_dir>/users/<name>, where notebooks and jobs run). Default: $MLP_DATA_DIR or
        ~/.local/share/mlp.""",
    )

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return default_data_dir()

    db_url = Unicode(
        config=True,
        help="""SQLAlchemy URL of the job store. Default: SQLite at <data_dir>/mlp.sqlite.
        Migrations (Alembic) run at start.""",
    )

    @default("db_url")
    def _default_db_url(self) -> str:
        return f"sqlite:///{Path(self.data_dir) / 'mlp.sqlite'}"

    ip = Unicode(config=True, help="Address to listen on (default: from JUPYTERHUB_SERVICE_URL).")
    port = Integer(config=True, help="Port to listen on (default: from JUPYTERHUB_SERVICE_URL).")

    @default("ip")
    def _default_ip(self) -> str:
        return (
            urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")).hostname
            or "127.0.0.1"
        )

    @default("port")
    def _default_port(self) -> int:
        return (
            urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")).port
            or 10101
        )

    base_url = Unicode(
        config=True, help="URL prefix the service is served under (from JupyterHub's env)."
    )

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/mlp/")

    backend_class = Type(
        LocalProcessBackend,
        klass=JobBackend,
        config=True,
        help="""Where job tasks run: LocalProcessBackend (embedded default, local processes)
        or a Kubernetes backend.""",
    )
    runtimes = Dict(
        value_trait=Union([Unicode(), List(Unicode())]),
        config=True,
        help="""Named Python environments jobs can select with `runtime:`, as an interpreter
        path or command list, e.g. {"tf-2.21": "/opt/envs/tf221/bin/python"}. The default
        runtime is always available and is this service's own interpreter unless set here.""",
    )

    @validate("runtimes")
    def _validate_runtimes(self, proposal: Any) -> dict[str, Any]:
        value = dict(proposal["value"])
        for name, cmd in value.items():
            if not cmd:
                raise ValueError(f"MLPService.runtimes[{name!r}] is empty")
        return value

    default_runtime = Unicode("default", config=True, help="Runtime used when a job names none.")
    poll_interval = Float(0.5, config=True, help="Seconds between checks of running jobs' tasks.")
    default_task_cpu = Unicode("1", config=True, help="CPU per task when a job gives none.")
    default_task_memory = Unicode(
        "2Gi", config=True, help="Memory per task when a job gives none (e.g. 2Gi)."
    )
    default_max_runtime = Float(
        86400.0, config=True, help="Seconds a job may run when it declares no max_runtime."
    )
    max_runtime_limit = Float(
        7 * 86400.0,
        allow_none=True,
        config=True,
        help="Largest max_runtime a job may declare, in seconds (None: no limit).",
    )
    admin_scope = Unicode(
        "custom:mlp:admin",
        config=True,
        help="""The JupyterHub scope that makes a token an mlp admin (may see and cancel every
        user's jobs). hub_config grants it to the hub's admin users through a role.""",
    )
    sse_keepalive_interval = Float(
        15.0, config=True, help="Seconds between keep-alive comments on idle event streams."
    )
    sse_poll_interval = Float(
        0.25, config=True, help="Seconds between reads of log files while following them."
    )

    keep_servers_of_running_jobs = Bool(
        False,
        config=True,
        help="""Report the owner of a running job (and their notebook servers) active to the
        hub every `keep_alive_interval` seconds, so the idle culler does not stop the notebook
        that launched a long training. Needs the users:activity scope (hub_config grants it).""",
    )
    keep_alive_interval = Float(
        300.0, config=True, help="Seconds between activity reports for owners of running jobs."
    )
    reclaim_interval = Float(
        30.0,
        config=True,
        help="""Seconds between checks that every notebook-server reservation belongs to a
        server the hub knows (running or starting); others are released.""",
    )
    reclaim_grace = Float(
        30.0, config=True, help="A reservation younger than this many seconds is never reclaimed."
    )

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        for path in (self.config_file, self.extra_config_file):
            if path:
                self.load_config_file(path)
        # Command-line options win over the files, as in JupyterHub.
        if self.cli_config:
            self.update_config(self.cli_config)
        self.log.setLevel(self.log_level)
        self.isolation = MLPIsolation(parent=self, log=self.log)
        if not self.isolation.data_dir:
            self.isolation.data_dir = self.data_dir
        prepare_data_dir(Path(self.data_dir), self.isolation.multi_user)
        self.store = Store(self.db_url)
        with contextlib.suppress(OSError):
            os.chmod(Path(self.data_dir) / "mlp.sqlite", 0o600)
        # A Type trait holds a concrete subclass of the abstract JobBackend (traitlets checks).
        make_backend: Any = self.backend_class
        self.backend: JobBackend = make_backend(parent=self, log=self.log)
        if self.backend.has_trait("data_dir") and not getattr(self.backend, "data_dir", ""):
            self.backend.data_dir = self.data_dir
        if isinstance(self.backend, LocalProcessBackend):
            self.backend.isolation = self.isolation
        runtimes = {
            name: [cmd] if isinstance(cmd, str) else list(cmd)
            for name, cmd in self.runtimes.items()
        }
        runtimes.setdefault("default", [sys.executable])
        if self.default_runtime not in runtimes:
            raise ValueError(
                f"MLPService.default_runtime {self.default_runtime!r} is not one of "
                f"the configured runtimes: {', '.join(sorted(runtimes))}"
            )
        settings = ManagerSettings(
            runtimes=runtimes,
            default_runtime=self.default_runtime,
            poll_interval=self.poll_interval,
            default_task=TaskSpec(
                1, parse_cpu(self.default_task_cpu), parse_memory(self.default_task_memory), 0
            ),
            default_max_runtime=self.default_max_runtime,
            max_runtime_limit=self.max_runtime_limit,
        )
        self.quota_config = QuotaConfig(parent=self)
        if self.quota_file:
            self.load_quota_file(self.quota_config, self.quota_file)
        self.quota = QuotaService(
            self.store, self.quota_config, ScorePolicy(parent=self), backfill=self.backfill
        )
        self.notifier = AlertNotifier(parent=self, log=self.log)
        self.manager = JobManager(
            self.store, self.backend, settings, self.quota, notifier=self.notifier, log=self.log
        )
        self.serving = ModelServing(parent=self, log=self.log)
        self.serving.setup(self.store, self.quota, self.isolation, self.data_dir)

    @staticmethod
    def load_quota_file(config: QuotaConfig, path: str) -> None:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"MLPService.quota_file {path}: cannot be read as YAML: {e}") from None
        allowed = {"pools", "groups", "default_group", "default_group_quota", "extra_resources"}
        if not isinstance(data, dict) or set(data) - allowed:
            raise ValueError(
                f"MLPService.quota_file {path}: expected a mapping with keys "
                f"{', '.join(sorted(allowed))}"
            )
        for key, value in data.items():
            setattr(config, key, value)

    cookie_secret_file = Unicode(
        config=True,
        help="""Where the service keeps the secret that signs its login cookies, created at first
        start (mode 0600) and kept, so users stay logged in to the service across restarts, as
        the hub does with `c.JupyterHub.cookie_secret_file`. Default:
        <data_dir>/mlp_cookie_secret.""",
    )

    @default("cookie_secret_file")
    def _default_cookie_secret_file(self) -> str:
        return str(Path(self.data_dir) / "mlp_cookie_secret")

    def load_cookie_secret(self) -> bytes:
        """The persisted cookie secret (hex in a 0600 file), created on first use."""
        path = Path(self.cookie_secret_file)
        try:
            secret = bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            secret = os.urandom(32)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret.hex())
            return secret
        except ValueError:
            raise ValueError(
                f"{path}: not a hex cookie secret; delete it to have a new one generated "
                "(users will have to log in to the service again)"
            ) from None
        if path.stat().st_mode & 0o077:
            raise ValueError(
                f"{path} is readable by other users; run `chmod 600 {path}` and restart"
            )
        if len(secret) < 32:
            raise ValueError(f"{path}: the cookie secret must be at least 32 bytes")
        return secret

    def make_app(self) -> web.Application:
        prefix = self.base_url.rstrip("/")
        api_prefix = f"{prefix}/api/v1"
        hub_auth = HubOAuth(cache_max_age=30)
        handlers: list[Any] = [
            (rf"{prefix}/?", HomeHandler),
            (rf"{prefix}/oauth_callback", HubOAuthCallbackHandler),
            *route_table(api_prefix),
        ]
        return web.Application(
            handlers,
            hub_auth=hub_auth,
            cookie_secret=self.load_cookie_secret(),
            mlp_manager=self.manager,
            mlp_isolation=self.isolation,
            mlp_serving=self.serving,
            admin_scope=self.admin_scope,
            api_prefix=api_prefix,
            openapi=build_openapi(api_prefix, self.version),
            response_models=response_models(api_prefix),
            sse_keepalive_interval=self.sse_keepalive_interval,
            sse_poll_interval=self.sse_poll_interval,
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        level = logging.INFO if status < 400 else logging.WARNING
        if status >= 500:
            level = logging.ERROR
        self.log.log(
            level,
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.uri,
            1000 * handler.request.request_time(),
        )

    async def serve(self) -> None:
        app = self.make_app()
        server = app.listen(self.port, self.ip, xheaders=True)
        self.manager.start()
        self.serving.start(self.admin_scope)
        info = self.isolation.describe()
        self.log.log(logging.INFO if info["mode"] == "multi-user" else logging.WARNING,
                     "mlp isolation: %s mode; %s", info["mode"], info["accounts"])
        if info["limits_enforced"]:
            self.log.info("mlp resource limits: %s", info["limits"])
        else:
            self.log.warning(
                "mlp resource limits are NOT enforced (%s): reservations are only counted",
                info["limits"],
            )
        sync = HubSync(self.manager, self.isolation, self.reclaim_grace, parent=self,
                       log=self.log)
        loops = [asyncio.get_running_loop().create_task(
            self._every(self.reclaim_interval, sync.reclaim, "reclaiming reservations"))]
        if self.keep_servers_of_running_jobs:
            loops.append(asyncio.get_running_loop().create_task(
                self._every(self.keep_alive_interval, sync.keep_owners_active,
                            "keeping owners of running jobs active")))
        self.log.info(
            "mlp %s serving at http://%s:%d%s (data in %s)",
            self.version,
            self.ip,
            self.port,
            self.base_url,
            self.data_dir,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("mlp stopping; running jobs keep running and are adopted at next start")
        server.stop()
        for loop_task in loops:
            loop_task.cancel()
        await self.serving.stop()
        await self.manager.stop()

    async def _every(self, interval: float, step: Any, what: str) -> None:
        while True:
            try:
                await step()
            except Exception as e:  # the hub may be restarting: try again next round
                self.log.warning("%s failed: %s", what, e)
            await asyncio.sleep(interval)

    def start(self) -> None:
        asyncio.run(self.serve())


def prepare_data_dir(path: Path, multi_user: bool, source: Path | None = None) -> None:
    """The data directory: 0700 in personal mode; 0711 in multi-user mode, where the accounts
    must pass through it to reach their homes (nothing inside can be listed or read by them:
    databases, secrets and logs are 0600/0700, each home 0700 owned by its account).

    In multi-user mode the accounts must also reach the Python environment and, for an
    editable install (`source`: the folder the platform's packages are imported from, outside
    any site-packages), list that folder: Python lists it to find `mlp`, `mlp_magics`, `vlps`."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o711 if multi_user else 0o700)
    if not multi_user:
        return
    if source is None:
        source = Path(__file__).resolve().parent.parent
    reach = [("the data directory", path), ("the Python environment", Path(sys.executable))]
    editable = "site-packages" not in source.parts
    if editable:
        reach.append(("the platform's source (an editable install)", source / "mlp"))
    for what, where in reach:
        parent = unreachable_ancestor(where)
        if parent is not None:
            raise ValueError(
                f"{what} {where} is below {parent}, which other users cannot pass through "
                "(no o+x): the users' accounts could not reach it. Move it, or "
                f"`chmod o+x {parent}`"
            )
    if editable and source.stat().st_mode & 0o005 != 0o005:
        raise ValueError(
            f"the platform's source {source} (an editable install) cannot be listed by other "
            "users (it needs o+rx): the users' accounts import mlp, mlp_magics and vlps from "
            f"it and would fail. `chmod o+rx {source}`, or install without -e"
        )


def main(argv: list[str] | None = None) -> None:
    app = MLPService()
    app.initialize(argv)
    app.start()
