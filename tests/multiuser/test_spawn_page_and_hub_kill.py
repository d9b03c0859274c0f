"""The embedded spawner through a real hub (root: real accounts and cgroups), where a spawn
meets trouble:

- a browser's spawn form asking for a size over quota: the user sees the ledger's numbers on
  the page (or in its progress stream), and nothing is started or reserved;
- the hub SIGKILLed (with the processes it manages: proxy, mlp service, culler) while servers
  are starting: after its restart, a server that never answers is stopped and its reservation,
  process and cgroup are gone; a server that answers is adopted with its reservation; a spawn
  killed before the hub heard its reservation's answer leaves a reservation the service
  reclaims.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from mlptest import Api, Hub, start_hub, stop_hub, wait_for_service
from tcpproxy import AnswerGate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="multi-user mode needs root (CI runs as root)"),
]

SERVICE = """
c.QuotaConfig.groups = {'tight': {'limits': {'default': {'cpu': 1, 'memory': '1536Mi'}}}}
c.MLPService.reclaim_interval = 2
c.MLPService.reclaim_grace = 4
"""
# Every server starts through HOLD (below): while <hold dir>/hold-<user> exists it has not
# started yet (as a slow image or a busy machine would), which is when the hub is killed.
HUB = """
import sys
# The spawner reaches the mlp service through GATE (below), which can hold back an answer.
c.LocalMLPSpawner.mlp_api_url = 'http://127.0.0.1:{gate_port}/services/mlp/api/v1'
c.LocalMLPSpawner.cmd = [sys.executable, {hold!r}, sys.executable, '-m', 'jupyterhub.singleuser']
c.Spawner.environment = {{**c.Spawner.environment, 'MLP_HOLD_DIR': {hold_dir!r}}}
c.Spawner.http_timeout = 45
c.LocalMLPSpawner.profile_list = [
    {{'slug': 'small', 'display_name': 'Small', 'default': True,
     'resources': {{'cpu': '0.5', 'memory': '512Mi'}}}},
    {{'slug': 'large', 'display_name': 'Large', 'resources': {{'cpu': '1', 'memory': '2Gi'}}}},
]
"""
HOLD = """
import os, sys, time
d, user = os.environ['MLP_HOLD_DIR'], os.environ['JUPYTERHUB_USER']
if os.path.exists(os.path.join(d, 'hold-' + user)):
    with open(os.path.join(d, 'holding-' + user), 'w') as f:
        f.write(str(os.getpid()))
    while os.path.exists(os.path.join(d, 'hold-' + user)):
        time.sleep(0.1)
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture(scope="module")
def gate() -> Iterator[AnswerGate]:
    g = AnswerGate().start_thread()
    yield g
    g.close()


@pytest.fixture(scope="module")
def hold_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mlp-hold-", dir="/tmp"))
    os.chmod(d, 0o777 | 0o1000)  # the servers' accounts read it; sticky
    (d / "hold.py").write_text(HOLD)
    os.chmod(d / "hold.py", 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def khub(tmp_path_factory: pytest.TempPathFactory, hold_dir: Path, gate: AnswerGate) -> Iterator[Hub]:
    hub = start_hub(tmp_path_factory.mktemp("khub"), ["--MLPService.poll_interval=0.2"], SERVICE,
                    extra_hub_config=HUB.format(hold=str(hold_dir / "hold.py"),
                                                hold_dir=str(hold_dir), gate_port=gate.port),
                    # a browser logs in: the shared password (per-user passwords have tests of
                    # their own)
                    extra_env={"MLP_AUTH": "shared"})
    gate.target = int(hub.service_url.split(":")[2].split("/")[0])
    for user in ("tess", "hana", "ivo", "jon"):
        hub.user_token(user)
    assert hub.hub_api("POST", "/groups/tight", json={"users": ["tess"]}).status_code == 201
    yield hub
    for user in ("tess", "hana", "ivo", "jon"):
        (hold_dir / f"hold-{user}").unlink(missing_ok=True)
        hub.hub_api("DELETE", f"/users/{user}/server")
    stop_hub(hub)


def reservations(hub: Hub) -> dict[str, Any]:
    creds = json.loads((hub.data_dir / "secrets.json").read_text())
    r = Api(hub, creds["spawner_token"])("GET", "/reservations")
    assert r.status_code == 200, r.text
    return {h["id"]: h for h in r.json()["reservations"]}


def cgroup_exists(hub: Hub, user: str, server: str = "") -> bool:
    from mlp.isolation import MLPIsolation
    from mlp.isolation.names import server_cgroup_name

    driver = MLPIsolation(data_dir=str(hub.data_dir),
                          cgroup_parent=f"mlp-test-{hub.prefix[:-1]}").cgroups
    if not driver.available:
        return False
    return any(d.exists() for d in driver.cgroup(server_cgroup_name(user, server)).dirs.values())


def spawner_state(hub: Hub, user: str) -> dict[str, Any]:
    """The state the hub keeps of user's default server, read from its database."""
    db = sqlite3.connect(f"file:{hub.data_dir / 'jupyterhub.sqlite'}?mode=ro", uri=True,
                         timeout=30)
    try:
        row = db.execute("SELECT s.state FROM spawners s JOIN users u ON s.user_id = u.id "
                         "WHERE u.name = ? AND s.name = ''", (user,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row and row[0] else {}


def xsrf(html: str) -> str:
    m = re.search(r'name="_xsrf"\s+value="([^"]+)"', html)
    assert m, f"no _xsrf field in the page:\n{html[:2000]}"
    return unescape(m.group(1))


# --------------------------------------------------------------------------- the spawn page
def test_the_spawn_page_shows_the_numbers_of_an_over_quota_size(khub: Hub):
    hub = khub
    password = json.loads((hub.data_dir / "secrets.json").read_text())["user_password"]
    browser = requests.Session()
    page = browser.get(f"{hub.url}/hub/login", timeout=30)
    r = browser.post(f"{hub.url}/hub/login", timeout=30, data={
        "username": "tess", "password": password, "_xsrf": xsrf(page.text)})
    assert r.status_code == 200 and "jupyterhub-session-id" in browser.cookies, r.text[:2000]
    form = browser.get(f"{hub.url}/hub/spawn/tess", timeout=60)
    assert form.status_code == 200, form.text[:2000]
    # The form offers "large" disabled: tight's 1.5Gi cannot hold 2Gi.
    assert 'value="large" disabled> Large (more than you may still reserve)' in form.text
    assert "You may still reserve: cpu 1, memory 1.5Gi" in form.text, form.text
    # A browser posts it anyway (the page was open while the quota filled, or was edited),
    # to the form's action (which carries the _xsrf token), as multipart form data.
    action = re.search(r'id="spawn_form"\s+action="([^"]+)"', form.text)
    assert action, form.text[:3000]
    r = browser.post(hub.url + unescape(action.group(1)), timeout=60, allow_redirects=False,
                     files={"profile": (None, "large")})
    if r.status_code in (302, 303):  # the refusal came after the hub's first second
        pending = browser.get(hub.url + r.headers["Location"], timeout=60)
        assert pending.status_code == 200, pending.text[:2000]
        with browser.get(f"{hub.url}/hub/api/users/tess/server/progress", stream=True,
                         timeout=60) as stream:
            events = [json.loads(line[5:]) for line in stream.iter_lines()
                      if line.startswith(b"data:")]
        seen = events[-1]["message"]
        assert events[-1].get("failed"), events
    else:
        # The hub's error page (409), or the form again with the refusal above it (200).
        assert r.status_code in (200, 409), r.text[:3000]
        body = r.text.split("<body", 1)[1]
        seen = unescape(re.sub(r"<[^>]+>", " ", re.sub(r"(?s)<script.*?</script>", "", body)))
    said = re.sub(r"\s+", " ", seen)
    assert "Over quota: 1 CPU, 2Gi memory requested for this server, but" in said, said
    # the ledger's numbers: the group, what it has free, what the server needs
    assert "group 'tight' has 1.5Gi memory of its quota free" in said, said
    assert "needs 2Gi" in said, said
    assert not hub.hub_api("GET", "/users/tess").json()["servers"]
    assert not [k for k in reservations(hub) if k.startswith("tess/")]
    assert not cgroup_exists(hub, "tess")


# --------------------------------------------------------------------------- hub killed
def kill_hub(hub: Hub) -> tuple[list[str], dict[str, str], str]:
    """SIGKILL the hub and what it manages (proxy, mlp service, culler); the users' servers
    (their own sessions and accounts) are left. Returns what restarts it."""
    proc = psutil.Process(hub.proc.pid)
    how = (proc.cmdline(), proc.environ(), proc.cwd())
    managed = [p for p in proc.children(recursive=True)
               if p.uids().real == 0 and "MLP_HOLD_DIR" not in p.environ()]
    proc.kill()
    hub.proc.wait(30)
    for p in managed:
        p.kill()
    psutil.wait_procs(managed, timeout=30)
    return how


def restart_hub(hub: Hub, how: tuple[list[str], dict[str, str], str]) -> None:
    cmd, env, cwd = how
    hub.proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                                stdout=open(hub.log_path, "ab"),  # noqa: SIM115
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        assert hub.proc.poll() is None, f"the hub did not restart:\n{hub.log_tail()}"
        try:
            if hub.hub_api("GET", "/users", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"the hub is not back after 120 s:\n{hub.log_tail()}"
        time.sleep(0.3)
    wait_for_service(Api(hub, hub.user_token("hana")))


def wait_until(check: Any, what: str, hub: Hub, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} after {timeout} s:\n{hub.log_tail(80)}"
        time.sleep(0.3)


def test_a_hub_killed_mid_spawn_leaves_nothing_behind_or_adopts_consistently(khub: Hub,
                                                                            hold_dir: Path):
    hub = khub
    pids = {}
    for user in ("hana", "ivo"):
        (hold_dir / f"hold-{user}").touch()
        r = hub.hub_api("POST", f"/users/{user}/server")
        assert r.status_code in (201, 202), r.text
        wait_until(lambda u=user: (hold_dir / f"holding-{u}").exists(),
                   f"{user}'s server process did not start", hub)
        pids[user] = int((hold_dir / f"holding-{user}").read_text())
        # The hub has written the spawner's state (pid, reservation, cgroup) to its database:
        # start() returned, the hub waits for the server to answer.
        wait_until(lambda u=user: spawner_state(hub, u).get("pid") == pids[u],
                   f"the hub did not record {user}'s server", hub)
        assert spawner_state(hub, user)["mlp_reservation"] == f"{user}/"
        assert f"{user}/" in reservations(hub)  # reserved, process started, not yet answering
        assert cgroup_exists(hub, user)
    how = kill_hub(hub)
    assert all(psutil.pid_exists(p) for p in pids.values())  # the servers outlive the hub
    restart_hub(hub, how)
    # ivo's server answers now: the restarted hub adopts it, with its reservation.
    (hold_dir / "hold-ivo").unlink()

    def ready(user: str) -> bool:
        return bool((hub.hub_api("GET", f"/users/{user}").json()["servers"].get("") or {})
                    .get("ready"))

    # hana's never does: the hub stops it (its http_timeout), which gives everything back.
    wait_until(lambda: not hub.hub_api("GET", "/users/hana").json()["servers"],
               "hana's never-answering server is still known to the hub", hub)
    wait_until(lambda: "hana/" not in reservations(hub), "hana's reservation is still held", hub)
    wait_until(lambda: not psutil.pid_exists(pids["hana"]) or
               psutil.Process(pids["hana"]).status() == psutil.STATUS_ZOMBIE,
               "hana's server process is still running", hub)
    assert not cgroup_exists(hub, "hana")
    wait_until(lambda: ready("ivo"), "ivo's server was not adopted", hub)
    held = reservations(hub)["ivo/"]
    assert held["amount"]["cpu"] == 0.5 and held["amount"]["memory"] == 512 * 2**20, held
    assert psutil.pid_exists(pids["ivo"]) and cgroup_exists(hub, "ivo")
    r = requests.get(f"{hub.url}/user/ivo/api/status", timeout=30,
                     headers={"Authorization": f"token {hub.user_token('ivo')}"})
    assert r.status_code == 200, r.text
    # Adopted means stopped like any other: the reservation and the cgroup go with it.
    hub.hub_api("DELETE", "/users/ivo/server")
    wait_until(lambda: "ivo/" not in reservations(hub), "ivo's reservation outlived it", hub)
    wait_until(lambda: not cgroup_exists(hub, "ivo"), "ivo's cgroup outlived the server", hub)


def test_a_hub_killed_while_its_reservation_is_answered_leaves_no_reservation(khub: Hub,
                                                                             gate: AnswerGate):
    hub = khub
    # The service makes the reservation; the hub is killed before it hears back, so it never
    # recorded a server process (there is none).
    gate.held.clear()
    gate.drop = "POST /services/mlp/api/v1/reservations"

    def spawn() -> None:
        with contextlib.suppress(requests.RequestException):  # the hub dies under it
            hub.hub_api("POST", "/users/jon/server", timeout=120)

    asker = threading.Thread(target=spawn)
    asker.start()
    assert gate.held.wait(120), f"the spawn never reserved:\n{hub.log_tail()}"
    assert "jon/" in reservations(hub)
    how = kill_hub(hub)
    asker.join(60)
    gate.drop = ""
    restart_hub(hub, how)
    # The restarted hub has no server of jon's, so the service reclaims the reservation.
    wait_until(lambda: not hub.hub_api("GET", "/users/jon").json()["servers"],
               "the hub still lists jon's server that never started", hub)
    wait_until(lambda: "jon/" not in reservations(hub), "jon's reservation is still held", hub)
    assert "reclaimed the reservation of jon's server ''" in hub.log_path.read_text()
    assert not cgroup_exists(hub, "jon")
    # And jon can start a server again, which holds one reservation.
    r = hub.hub_api("POST", "/users/jon/server")
    assert r.status_code in (201, 202), r.text
    wait_until(lambda: (hub.hub_api("GET", "/users/jon").json()["servers"].get("") or {})
               .get("ready"), "jon's new server did not start", hub)
    assert [k for k in reservations(hub) if k.startswith("jon/")] == ["jon/"]
    hub.hub_api("DELETE", "/users/jon/server")
    wait_until(lambda: "jon/" not in reservations(hub), "jon's reservation outlived it", hub)
