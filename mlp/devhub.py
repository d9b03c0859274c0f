"""A real JupyterHub + proxy + mlp service on free loopback ports, for the test suite and the
benchmarks (bench/submit_latency.py, bench/spawn.py): `start_hub`, `stop_hub`, REST calls as a
user (`Api`), and the clean-up of what a hub's users leave behind (`remove_platform_leftovers`).

Runs from a source checkout (it loads the repository's
hub_config/mlp_hub_config/jupyterhub_config.py) with the proxy from the repository's
node_modules (scripts/install.sh installs it). As root (multi-user mode) every hub gets an
account prefix and a cgroup parent of its own, removed again by `stop_hub`, so runs never meet
accounts of an earlier run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
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
    prefix: str
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


def make_python_reachable() -> None:
    """The accounts run this interpreter: let them pass through the folders above it (o+x,
    no listing), e.g. /root when Python was installed with pyenv as root."""
    from mlp.isolation.process import unreachable_ancestor

    while (parent := unreachable_ancestor(Path(sys.executable))) is not None:
        os.chmod(parent, parent.stat().st_mode | 0o001)
    # The editable install imports mlp, mlp_magics and vlps from the repository's root, which
    # Python lists to find them: a clone made in a 0700 folder (mktemp -d) must be listable.
    os.chmod(REPO, REPO.stat().st_mode | 0o005)


def platform_data_dir(tmp: Path) -> Path:
    """A data directory the platform's accounts can reach: as root (multi-user mode) pytest's
    own tmp folders are 0700, so the data directory goes under a 0711 folder in /tmp, linked
    from `tmp` for inspection and removed by `stop_hub`."""
    if os.geteuid() != 0:
        data_dir = tmp / "data"
        data_dir.mkdir(parents=True)
        return data_dir
    import tempfile

    make_python_reachable()
    base = Path(tempfile.mkdtemp(prefix="mlp-test-", dir="/tmp"))
    os.chmod(base, 0o711)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "data").symlink_to(base / "data")
    (base / "data").mkdir()
    return base / "data"


def start_hub(
    tmp: Path,
    extra_service_args: list[str],
    extra_service_config: str = "",
    extra_hub_config: str = "",
    extra_env: dict[str, str] | None = None,
) -> Hub:
    data_dir = platform_data_dir(tmp)
    # A prefix of its own for the system accounts of this hub (removed by stop_hub), so test
    # runs never meet accounts of an earlier run.
    prefix = f"t{secrets.token_hex(2)}-"
    shared = (f"c.MLPIsolation.account_prefix = {prefix!r}\n"
              f"c.MLPIsolation.cgroup_parent = 'mlp-test-{prefix[:-1]}'\n")
    admin_token = secrets.token_hex(24)
    port, hub_port, proxy_port, service_port, models_port = (free_port() for _ in range(5))
    service_config = tmp / "mlp_test_config.py"
    service_config.write_text(
        "c = get_config()\n"
        "big = {'cpu': 64, 'memory': '256Gi'}\n"
        "c.QuotaConfig.pools = {'default': {'capacity': big},\n"
        "    'production': {'capacity': big, 'priority': 100, 'requires_promotion': True}}\n"
        "c.QuotaConfig.default_group_quota = {'limits': {'default': big}}\n"
        + shared
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
{shared}
{extra_hub_config}
"""
    )
    env = dict(os.environ)
    env.update(
        MLP_DATA_DIR=str(data_dir),
        MLP_PORT=str(port),
        MLP_HUB_PORT=str(hub_port),
        MLP_PROXY_API_PORT=str(proxy_port),
        MLP_SERVICE_PORT=str(service_port),
        MLP_MODELS_PORT=str(models_port),
        MLP_ADMIN_USERS="admin",
        PATH=f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{Path(sys.executable).parent}"
        f"{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra_env or {})
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
        prefix=prefix,
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
    if os.geteuid() == 0:
        remove_platform_leftovers(hub.data_dir, hub.prefix)


def remove_platform_leftovers(data_dir: Path, prefix: str) -> None:
    """Kill what the hub's users still run, delete their system accounts and cgroups."""
    import psutil

    from mlp.isolation import MLPIsolation
    from mlp.isolation.accounts import AccountManager

    accounts = AccountManager(data_dir, prefix)
    registry = accounts.registered()
    uids = set(registry.values())
    for p in psutil.process_iter(["uids"]):
        if p.info["uids"] and p.info["uids"].real in uids:
            with contextlib.suppress(psutil.Error):
                p.kill()
    for name in registry:
        accounts.delete(name)
    isolation = MLPIsolation(data_dir=str(data_dir), cgroup_parent=f"mlp-test-{prefix[:-1]}")
    isolation.cgroups.remove_all()
    if data_dir.parent.name.startswith("mlp-test-"):
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def kill_mlp_service(hub: Hub) -> None:
    """SIGKILL the hub's managed mlp service (a crash); the hub restarts it within ~30 s."""
    import psutil

    service = next(p for p in psutil.Process(hub.proc.pid).children(recursive=True)
                   if "serve" in p.cmdline() and "mlp" in " ".join(p.cmdline()))
    service.kill()
    deadline = time.monotonic() + 10
    # It stays a zombie until the hub's next poll reaps it; either way it no longer serves.
    while service.is_running() and service.status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the mlp service (pid {service.pid}) survived SIGKILL for 10 s")
        time.sleep(0.05)


def service_answers(api: Api) -> bool:
    """Whether the mlp service answers an API call now."""
    try:
        return api("GET", "/jobs", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def wait_for_service(api: Api, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if service_answers(api):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the mlp service did not answer within {timeout} s:\n"
                               f"{api.hub.log_tail()}")
        time.sleep(0.5)
