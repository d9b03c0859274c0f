"""The embedded default's hub configuration: authentication, services, roles, the spawner."""

from __future__ import annotations

import re
import stat
import time

import pytest
import requests
from mlptest import Hub

pytestmark = pytest.mark.integration


def test_password_generated_private_and_printed(hub: Hub):
    secrets_file = hub.data_dir / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    import json

    creds = json.loads(secrets_file.read_text())
    log = hub.log_path.read_text()
    assert creds["user_password"] in log and "log in at http://127.0.0.1:" in log
    assert len(creds["admin_password"]) >= 32


def login(hub: Hub, user: str, password: str) -> requests.Response:
    s = requests.Session()
    page = s.get(f"{hub.url}/hub/login", timeout=10)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    data = {"username": user, "password": password}
    if xsrf:
        data["_xsrf"] = xsrf.group(1)
    return s.post(f"{hub.url}/hub/login", data=data, allow_redirects=False, timeout=10)


def test_shared_password_login(hub: Hub):
    import json

    creds = json.loads((hub.data_dir / "secrets.json").read_text())
    assert login(hub, "carol", creds["user_password"]).status_code == 302
    assert login(hub, "carol", "wrong").status_code == 403
    assert login(hub, "admin", creds["admin_password"]).status_code == 302


def test_services_and_roles(hub: Hub):
    services = hub.hub_api("GET", "/services").json()
    assert {"mlp", "idle-culler"} <= set(services), services
    assert services["mlp"]["display"] is True
    # The culler runs with exactly its documented scopes and can list users and servers.
    deadline = time.monotonic() + 30
    pattern = re.compile(r"200 GET /hub/api/users\?state=\S+ \(idle-culler@")
    while not pattern.search(hub.log_path.read_text()):
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.5)
    assert not re.search(r"40[13] \S+ /hub/api/\S+ \(idle-culler@", hub.log_path.read_text())


@pytest.mark.slow
def test_spawn_a_notebook_server_in_the_users_folder(hub: Hub):
    hub.user_token("dora")
    r = hub.hub_api("POST", "/users/dora/server")
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 120
    while True:
        model = hub.hub_api("GET", "/users/dora").json()
        server = model["servers"].get("")
        if server and server["ready"]:
            break
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.5)
    assert (hub.data_dir / "users" / "dora").is_dir()
    token = hub.tokens["dora"]
    r = requests.get(f"{hub.url}/user/dora/api/contents", timeout=10,
                     headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    # the server runs as root here: it needed --allow-root (and got it)
    assert "--allow-root" in hub.log_path.read_text() or __import__("os").geteuid() != 0
    r = hub.hub_api("DELETE", "/users/dora/server")
    assert r.status_code in (202, 204)


@pytest.mark.slow
def test_mlp_up_starts_the_platform_and_prints_where_to_log_in(tmp_path):
    """The README's first command ends in `mlp up`: it must start the hub + proxy + services
    and print the login URL and the generated password."""
    import os
    import signal
    import subprocess
    import sys

    from mlptest import REPO, free_port

    port = free_port()
    env = {**os.environ, "MLP_HUB_PORT": str(free_port()),
           "MLP_PROXY_API_PORT": str(free_port()), "MLP_SERVICE_PORT": str(free_port()),
           "PATH": f"{REPO / 'node_modules' / '.bin'}:{os.environ['PATH']}"}
    env.pop("MLP_DATA_DIR", None)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlp", "up", "--port", str(port), "--data-dir",
             str(tmp_path / "data")],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            text = log.read_text(errors="replace")
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/services/mlp/api/v1/openapi.json",
                                     timeout=2).status_code == 200
            except requests.RequestException:
                ready = False
            if ready and "log in at" in text:
                break
            assert proc.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.5)
        import json

        creds = json.loads((tmp_path / "data" / "secrets.json").read_text())
        assert f"log in at http://127.0.0.1:{port}/" in text
        assert creds["user_password"] in text
        assert requests.get(f"http://127.0.0.1:{port}/hub/login", timeout=5).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
