"""The dashboard of `%mlp_deploy`: one deployment's state, endpoint and live request metrics
(latency quantiles, throughput), and a "try it" box that sends a request to the model through
the models router and shows the answer with its latency."""

from __future__ import annotations

import html
import json
from typing import Any

import ipywidgets as w

from mlp_magics.dashboards.base import Dashboard
from mlp_magics.serving import ServingClient, describe_deployment, example_body

ENDED = ("failed", "stopped")


class DeploymentDashboard(Dashboard):
    def __init__(self, client: ServingClient, model: str, *, version: int | None = None,
                 deployment_id: int | None = None, resources: dict[str, Any] | None = None,
                 interval: float = 2.0, max_interval: float = 10.0):
        super().__init__(client, interval=interval, max_interval=max_interval)
        self.serving = client
        self.model = model
        self.version = version
        self.deployment_id = deployment_id
        self.resources = resources or {}
        self.deployment: dict[str, Any] = {}
        self.signature: dict[str, Any] = {}
        self.last_try: str = ""

    @property
    def ended(self) -> bool:
        return self.deployment.get("state") in ENDED

    def _needs_submit(self) -> bool:
        return self.deployment_id is None

    def submit(self) -> bool:
        from mlp_magics.client import MLPError

        try:
            live = [d for d in self.serving.deployments(self.model)
                    if d["state"] in ("starting", "running", "rolling")]
            if live and self.version is not None and live[0]["version"] != self.version:
                d = self.serving.roll(self.model, live[0]["id"], self.version)
            elif live:
                d = live[0]
            else:
                d = self.serving.deploy(self.model, version=self.version, **self.resources)
        except MLPError as e:
            self._set_error(e)
            return False
        with self._lock:
            self._newest()
            self.deployment_id = d["id"]
            self.deployment = d
        return True

    def _fetch(self) -> Any:
        d = self.serving.deployment(self.model, int(self.deployment_id or 0))
        versions = self.serving._request("GET", f"/models/{self.model}/versions").json()
        return d, versions["versions"]

    def _apply(self, answer: Any) -> bool:
        d, versions = answer
        changed = d != self.deployment
        self.deployment = d
        for v in versions:
            if v["version"] == d.get("version"):
                self.signature = v.get("signature") or {}
        self.error = None
        return changed

    def _poller_name(self) -> str:
        return f"mlp-deploy-{self.model}"

    def wait_running(self, timeout: float = 600.0) -> dict[str, Any]:
        """Block until the deployment serves (or ended); its last state."""
        import time

        deadline = time.monotonic() + timeout
        while self.deployment.get("state") not in ("running", *ENDED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployment of {self.model} not running after {timeout} s: "
                                   f"{self.text()}")
            time.sleep(0.5)
            self.refresh()
        return self.deployment

    # ------------------------------------------------------------------ widgets
    def _build(self) -> dict[str, Any]:
        status = w.HTML()
        metrics = w.HTML()
        body = w.Textarea(value=example_body(self.signature), layout=w.Layout(width="100%",
                                                                               height="6em"))
        send = w.Button(description="Send", tooltip="POST to the model (v1 predict)")
        answer = w.HTML()
        send.on_click(lambda _b: self.try_it(body.value))
        box = w.VBox([status, metrics, w.HTML("<b>Try it</b> (v1: {\"instances\": [...]})"),
                      body, send, answer])
        return {"box": box, "status": status, "metrics": metrics, "body": body,
                "answer": answer}

    def try_it(self, text: str) -> str:
        """Send `text` (a JSON v1 request) to the model; the answer and its latency."""
        try:
            payload = json.loads(text)
        except ValueError as e:
            self.last_try = f"not JSON: {e}"
        else:
            code, answer, seconds = self.serving.predict(self.model, payload)
            self.last_try = (f"HTTP {code} in {seconds * 1000:.1f} ms: "
                             f"{json.dumps(answer)[:2000]}")
        self._render()
        return self.last_try

    def _render_ui(self, ui: dict[str, Any]) -> None:
        ui["status"].value = self._status_html()
        ui["metrics"].value = self._metrics_html()
        if ui["body"].value == example_body({}) and self.signature:
            ui["body"].value = example_body(self.signature)
        ui["answer"].value = f"<pre>{html.escape(self.last_try)}</pre>"

    def _status_html(self) -> str:
        d = self.deployment
        if self.error:
            return f"<b style='color:#b00'>{html.escape(self.error)}</b>"
        if not d:
            return "deploying…"
        return (f"<b>{html.escape(self.model)}:{d.get('version')}</b> — {d.get('state')}: "
                f"{html.escape(str(d.get('reason')))}<br>endpoint "
                f"<code>{html.escape(str(d.get('endpoint')))}v1/models/{html.escape(self.model)}"
                f":predict</code>")

    def _metrics_html(self) -> str:
        m = self.deployment.get("metrics") or {}
        lat = m.get("latency_ms") or {}
        return (f"requests {m.get('requests', 0)} (errors {m.get('errors', 0)}) · "
                f"p50 {lat.get('p50')} ms · p90 {lat.get('p90')} ms · p99 {lat.get('p99')} ms · "
                f"{m.get('requests_per_s', 0)} req/s")

    def text(self) -> str:
        if self.error:
            return f"{self.model}: {self.error}"
        if not self.deployment:
            return f"{self.model}: deploying…"
        out = describe_deployment(self.deployment)
        return out + (f"\ntry it: {self.last_try}" if self.last_try else "")

    def html(self) -> str:
        return f"<div>{self._status_html()}<br>{self._metrics_html()}</div>"
