"""A real JupyterHub + proxy + mlp service on free loopback ports, for the test suite and the
benchmarks (bench/submit_latency.py): `start_hub`, `stop_hub`, REST calls as a user (`Api`).

Runs from a source checkout (it loads the repository's
hub_config/mlp_hub_config/jupyterhub_config.py) with the proxy from the repository's
node_modules (scripts/install.sh installs it).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from mlp.core.ports import free_port

REPO = Path(__file__).resolve().parent.parent
HUB_CONFIG = REPO / "hub_config" / "mlp_hub_config" / "jupyterhub_config.py"


@dataclass
class Hub:
    url: str
    service_url: str
    admin_token: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=dict)

    def hub_api(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        headers = {"Authorization": f"token {self.admin_token}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kw)

    def user_token(self, name: str, admin: bool = False) -> str:
        if name in self.tokens:
            return self.tokens[name]
        r = self.hub_api("GET", f"/users/{name}")
        if r.status_code == 404:
            r = self.hub_api("POST", f"/users/{name}", json={"admin": admin})
            if r.status_code != 201:
                raise RuntimeError(f"creating hub user {name} failed: {r.status_code} {r.text}")
        r = self.hub_api("POST", f"/users/{name}/tokens", json={"note": "tests"})
        if r.status_code != 201:
            raise RuntimeError(f"creating a token for {name} failed: {r.status_code} {r.text}")
        self.tokens[name] = r.json()["token"]
        return self.tokens[name]

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


class Api:
    """Calls of the mlp REST API through the proxy, as one user."""

    def __init__(self, hub: Hub, token: str | None):
        self.hub = hub
        self.base = f"{hub.url}/services/mlp/api/v1"
        self.headers = {"Authorization": f"token {token}"} if token else {}

    def __call__(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        headers = {**self.headers, **kw.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, **kw)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = self("POST", "/jobs", json=spec)
        if r.status_code != 201:
            raise RuntimeError(f"POST /jobs answered {r.status_code}: {r.text}")
        return r.json()

    def wait(self, job_id: int, states: set[str], timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self("GET", f"/jobs/{job_id}").json()
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} is {job['state']} ({job['reason']}) after "
                    f"{timeout} s; wanted {states}\n{self.hub.log_tail()}"
                )
            time.sleep(0.2)


def start_hub(tmp: Path, extra_service_args: list[str], extra_service_config: str = "") -> Hub:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True)
    admin_token = secrets.token_hex(24)
    port, hub_port, proxy_port, service_port = (free_port() for _ in range(4))
    service_config = tmp / "mlp_test_config.py"
    service_config.write_text(
        "c = get_config()\n"
        "big = {'cpu': 64, 'memory': '256Gi'}\n"
        "c.QuotaConfig.pools = {'default': {'capacity': big},\n"
        "    'production': {'capacity': big, 'priority': 100, 'requires_promotion': True}}\n"
        "c.QuotaConfig.default_group_quota = {'limits': {'default': big}}\n"
        + extra_service_config
    )
    extra_service_args = [*extra_service_args, "--extra-config", str(service_config)]
    wrapper = tmp / "test_jupyterhub_config.py"
    wrapper.write_text(
        f"""
c = get_config()
load_subconfig({str(HUB_CONFIG)!r})
c.JupyterHub.services.append({{"name": "test-admin", "api_token": {admin_token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "test-admin", "services": ["test-admin"],
    "scopes": ["admin:users", "admin:servers", "tokens", "admin:groups", "list:users",
               "read:services", "list:services"],
}})
for s in c.JupyterHub.services:
    if s["name"] == "mlp":
        s["command"] = s["command"] + {extra_service_args!r}
"""
    )
    env = dict(os.environ)
    env.update(
        MLP_DATA_DIR=str(data_dir),
        MLP_PORT=str(port),
        MLP_HUB_PORT=str(hub_port),
        MLP_PROXY_API_PORT=str(proxy_port),
        MLP_SERVICE_PORT=str(service_port),
        MLP_ADMIN_USERS="admin",
        PATH=f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{Path(sys.executable).parent}"
        f"{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("JUPYTERHUB_API_TOKEN", None)
    log_path = tmp / "hub.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(wrapper), "--debug"],
        cwd=data_dir,
        env=env,
        stdout=open(log_path, "wb"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    hub = Hub(
        url=f"http://127.0.0.1:{port}",
        service_url=f"http://127.0.0.1:{service_port}/services/mlp/",
        admin_token=admin_token,
        data_dir=data_dir,
        log_path=log_path,
        proc=proc,
    )
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterHub exited with {proc.returncode}:\n{hub.log_tail()}")
        try:
            ok_hub = hub.hub_api("GET", "/users", timeout=2).status_code == 200
            ok_mlp = (
                requests.get(f"{hub.url}/services/mlp/api/v1/openapi.json", timeout=2).status_code
                == 200
            )
            if ok_hub and ok_mlp:
                return hub
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop_hub(hub)
            raise RuntimeError(f"JupyterHub + mlp not ready after 120 s:\n{hub.log_tail()}")
        time.sleep(0.3)


def stop_hub(hub: Hub) -> None:
    if hub.proc.poll() is None:
        hub.proc.send_signal(signal.SIGTERM)
        try:
            hub.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(hub.proc.pid, signal.SIGKILL)
            hub.proc.wait()
