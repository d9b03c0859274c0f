"""The embedded default's hub configuration: authentication, services, roles, the spawner."""

from __future__ import annotations

import re
import stat
import time

import pytest
import requests
from mlptest import Hub

pytestmark = pytest.mark.integration


def test_admin_password_generated_private_and_printed_once(hub: Hub, tmp_path):
    import json
    import subprocess
    import sys

    from mlptest import HUB_CONFIG

    secrets_file = hub.data_dir / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    creds = json.loads(secrets_file.read_text())
    assert len(creds["admin_password"]) >= 32
    assert hub.log_path.read_text().count(creds["admin_password"]) == 1
    # Printed at the first start only: load the configuration twice on a fresh data dir.
    load = ("from traitlets.config.loader import PyFileConfigLoader as L; "
            f"L({HUB_CONFIG.name!r}, {str(HUB_CONFIG.parent)!r}).load_config()")
    env = {**__import__("os").environ, "MLP_DATA_DIR": str(tmp_path / "d")}
    env.pop("JUPYTERHUB_SERVICE_NAME", None)
    outs = [subprocess.run([sys.executable, "-c", load], env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    password = json.loads((tmp_path / "d" / "secrets.json").read_text())["admin_password"]
    assert password in outs[0] and password not in outs[1] and "log in at" in outs[1]


def session(hub: Hub) -> tuple[requests.Session, str]:
    s = requests.Session()
    page = s.get(f"{hub.url}/hub/login", timeout=10)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    return s, xsrf.group(1) if xsrf else s.cookies.get("_xsrf", "")


def login(hub: Hub, user: str, password: str) -> requests.Response:
    s, xsrf = session(hub)
    data = {"username": user, "password": password, "_xsrf": xsrf}
    return s.post(f"{hub.url}/hub/login", data=data, allow_redirects=False, timeout=10)


def signup(hub: Hub, user: str, password: str) -> str:
    s, xsrf = session(hub)
    r = s.post(f"{hub.url}/hub/signup", timeout=10, data={
        "username": user, "signup_password": password,
        "signup_password_confirmation": password, "_xsrf": xsrf})
    return r.text


def test_per_user_passwords_with_admin_authorization(hub: Hub):
    import json

    admin_password = json.loads((hub.data_dir / "secrets.json").read_text())["admin_password"]
    assert login(hub, "admin", admin_password).status_code == 302
    # Nobody can take the admin's name: the account exists since the first start.
    signup(hub, "admin", "another-password-123")
    assert login(hub, "admin", "another-password-123").status_code != 302
    # A new user signs up, and may log in once an admin authorized them.
    signup(hub, "carol", "carols-own-password-7")
    assert login(hub, "carol", "carols-own-password-7").status_code != 302
    admin = login(hub, "admin", admin_password)
    s = requests.Session()
    s.cookies.update(admin.cookies)
    r = s.get(f"{hub.url}/hub/authorize/carol", timeout=10, allow_redirects=False)
    assert r.status_code == 302, r.text
    assert login(hub, "carol", "carols-own-password-7").status_code == 302
    assert login(hub, "carol", "wrong-password-000").status_code != 302
    # The shared password of earlier versions is gone unless opted in (MLP_AUTH=shared).
    creds = json.loads((hub.data_dir / "secrets.json").read_text())
    assert login(hub, "dave", creds["user_password"]).status_code != 302


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


def wait_ready(hub: Hub, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        model = hub.hub_api("GET", f"/users/{name}").json()
        server = model["servers"].get("")
        if server and server["ready"]:
            return server  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.3)


@pytest.mark.slow
def test_spawn_a_notebook_server_in_the_users_folder(hub: Hub):
    import os
    import pwd

    import psutil

    hub.user_token("dora")
    r = hub.hub_api("POST", "/users/dora/server")
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, "dora")
    home = hub.data_dir / "users" / "dora"
    token = hub.tokens["dora"]
    r = requests.get(f"{hub.url}/user/dora/api/contents", timeout=10,
                     headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    # The server holds a reservation of its size in the ledger, like a job.
    held = requests.get(f"{hub.url}/services/mlp/api/v1/reservations", timeout=10,
                        headers={"Authorization": f"token {token}"}).json()["reservations"]
    assert [(h["id"], h["amount"]) for h in held] == [
        ("dora/", {"cpu": 0.5, "memory": 2**30, "gpu": 0})
    ]
    if os.geteuid() == 0:
        # Multi-user mode: the server runs as dora's own account, never as root.
        uid = pwd.getpwnam(f"{hub.prefix}dora").pw_uid
        servers = [p for p in psutil.Process(hub.proc.pid).children(recursive=True)
                   if "jupyterhub.singleuser" in " ".join(p.cmdline())]
        assert [p.uids().real for p in servers] == [uid]
        st = home.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)
        assert "--allow-root" not in hub.log_path.read_text()
    r = hub.hub_api("DELETE", "/users/dora/server")
    assert r.status_code in (202, 204)
    deadline = time.monotonic() + 60
    while requests.get(f"{hub.url}/services/mlp/api/v1/reservations", timeout=10,
                       headers={"Authorization": f"token {token}"}).json()["reservations"]:
        assert time.monotonic() < deadline, "the reservation outlived the server"
        time.sleep(0.3)


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
    from mlptest import platform_data_dir, remove_platform_leftovers

    data = platform_data_dir(tmp_path)
    data.rmdir()  # `mlp up` creates it
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlp", "up", "--port", str(port), "--data-dir", str(data)],
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

        creds = json.loads((data / "secrets.json").read_text())
        assert f"log in at http://127.0.0.1:{port}/" in text
        assert creds["admin_password"] in text
        assert requests.get(f"http://127.0.0.1:{port}/hub/login", timeout=5).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        if os.geteuid() == 0:
            remove_platform_leftovers(data, "mlp-")
