"""`c.ModelServing.*`: the registry, the deployment supervisor and the `models` hub service's
router, wired into the mlp service (`mlp/app.py` creates one `ModelServing`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from mlp.core.quota import QuotaService
from mlp.isolation import MLPIsolation
from mlp.serving.registry import ModelRegistry
from mlp.serving.router import router_app, router_auth
from mlp.serving.supervisor import DeploymentSupervisor
from mlp.store import Store

REPO = Path(__file__).resolve().parent.parent.parent


class ModelServing(LoggingConfigurable):
    python = Unicode(
        config=True,
        help="""The Python of the serving environment (kserve + TensorFlow) that runs model
        servers and reads SavedModel signatures. Default: $MLP_SERVING_PYTHON, else the
        .venv-serving that scripts/install.sh builds next to the package.""",
    )

    @default("python")
    def _default_python(self) -> str:
        venv = REPO / ".venv-serving" / "bin" / "python"
        return os.environ.get("MLP_SERVING_PYTHON") or str(venv)

    port = Integer(
        config=True,
        help="""Loopback port of the `models` hub service (the router to deployments).
        Default: $MLP_MODELS_PORT, else 10102. 0 turns the router off.""",
    )

    @default("port")
    def _default_port(self) -> int:
        return int(os.environ.get("MLP_MODELS_PORT", "10102"))

    ready_timeout = Float(180.0, config=True,
                          help="Seconds a replica may take to load its model and answer ready.")
    max_restarts = Integer(3, config=True, help="""Exits of one replica within restart_window
        after which the deployment is marked failed instead of restarting it again.""")
    restart_window = Float(300.0, config=True, help="Seconds over which max_restarts counts.")
    stop_grace = Float(10.0, config=True,
                       help="Seconds a replica gets after SIGTERM before SIGKILL.")
    default_cpu = Unicode("1", config=True, help="CPU per replica when a deployment gives none.")
    default_memory = Unicode("2Gi", config=True,
                             help="Memory per replica when a deployment gives none.")
    max_replicas = Integer(16, config=True, help="Most replicas one deployment may ask for.")

    registry: ModelRegistry
    supervisor: DeploymentSupervisor
    _server: HTTPServer | None = None

    def setup(self, store: Store, quota: QuotaService, isolation: MLPIsolation,
              data_dir: str) -> None:
        self.registry = ModelRegistry(store, data_dir, isolation, self.python)
        self.supervisor = DeploymentSupervisor(
            store, self.registry, quota, isolation, python=self.python, data_dir=data_dir,
            log=self.log, ready_timeout=self.ready_timeout, max_restarts=self.max_restarts,
            restart_window=self.restart_window, stop_grace=self.stop_grace,
        )

    def serving_ready(self) -> str | None:
        """None when model servers can start, else what is missing and how to get it."""
        if not os.access(self.python, os.X_OK):
            return (f"the serving environment's Python {self.python} is missing: run "
                    "scripts/install.sh (it builds .venv-serving with kserve) or set "
                    "c.ModelServing.python")
        return None

    def start(self, admin_scope: str) -> None:
        self.supervisor.start_supervising()
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        api_url = os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
        if not self.port or not token:
            self.log.info("the models router is off (no port or not run by the hub)")
            return
        app = router_app(self.registry, self.supervisor, router_auth(token, api_url),
                         admin_scope)
        try:
            self._server = app.listen(self.port, "127.0.0.1", xheaders=True)
        except OSError as e:
            self.log.error("the models router cannot listen on 127.0.0.1:%d (%s): deployments "
                           "are not reachable through /services/models/; set MLP_MODELS_PORT "
                           "to a free port", self.port, e)
            return
        self.log.info("models router serving /services/models/ on 127.0.0.1:%d", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        await self.supervisor.stop()


__all__: list[Any] = ["ModelServing"]
