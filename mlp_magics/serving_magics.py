"""`%mlp_deploy MODEL[:VERSION]`: deploy a registered model (or roll its live deployment to
VERSION) and show the deployment's dashboard: endpoint, state, live latency and throughput,
and a "try it" request box. `%mlp_models` lists the models you may see."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from mlp_magics.client import MLPError, describe_error
from mlp_magics.dashboards.deployment import DeploymentDashboard
from mlp_magics.serving import ServingClient, parse_target


@magics_class
class ServingMagics(Magics):
    _client: ServingClient | None = None

    @property
    def client(self) -> ServingClient:
        if self._client is None:
            try:
                self._client = ServingClient()
            except MLPError as e:
                raise UsageError(describe_error(e)) from None
        return self._client

    @magic_arguments()
    @argument("target", help="MODEL or MODEL:VERSION (default: production, else the latest)")
    @argument("--cpu", default=None, help="CPU per replica, e.g. 1 or 500m")
    @argument("--memory", default=None, help="memory per replica, e.g. 2Gi")
    @argument("--replicas", type=int, default=None, help="model server processes")
    @argument("--wait", action="store_true", help="block until the deployment runs")
    @line_magic
    def mlp_deploy(self, line: str = "") -> DeploymentDashboard:
        """Deploy a registered model version for online prediction (KServe model server)."""
        args = parse_argstring(self.mlp_deploy, line)
        try:
            name, version = parse_target(args.target)
        except ValueError as e:
            raise UsageError(str(e)) from None
        resources: dict[str, Any] = {"cpu": args.cpu, "memory": args.memory}
        if args.replicas is not None:
            resources["replicas"] = args.replicas
        dash = DeploymentDashboard(self.client, name, version=version, resources=resources)
        dash.start()
        if dash.error and dash.deployment_id is None:
            raise UsageError(f"deploy {args.target}: {dash.error}")
        if args.wait:
            dash.wait_running()
        return dash

    @line_magic
    def mlp_models(self, line: str = "") -> list[dict[str, Any]]:
        """The registered models you may see (name, owner, versions, live deployments)."""
        try:
            models: list[dict[str, Any]] = self.client._request("GET", "/models").json()["models"]
        except MLPError as e:
            raise UsageError(describe_error(e)) from None
        return models
