"""The multi-user platform as an attacker and as a user would meet it, through a real hub, proxy,
mlp service and idle culler (root: CI runs as root, so accounts and cgroups are real).

- alice's real kernel cannot read bob's home, the platform's secrets, the hub's database or
  bob's server environment;
- a spawn over quota is refused with the numbers and leaks no reservation; concurrent spawns and
  submissions never exceed a quota; reservations of servers that do not exist are reclaimed;
- idle servers are culled, files and the JupyterLab workspace come back; a running job keeps its
  owner's server; kernels are culled inside a server.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from mlptest import Api, Hub, start_hub, stop_hub

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="multi-user mode needs root (CI runs as root)"),
]
END = {"Succeeded", "Failed", "Cancelled", "TimedOut"}

SERVICE = """
c.QuotaConfig.groups = {
    'tight': {'limits': {'default': {'cpu': 1, 'memory': '1536Mi'}}},
    'race': {'limits': {'default': {'cpu': 4, 'memory': '4Gi'}}},
}
c.MLPService.keep_servers_of_running_jobs = True
c.MLPService.keep_alive_interval = 2
c.MLPService.reclaim_interval = 2
c.MLPService.reclaim_grace = 4
c.LocalProcessBackend.stop_grace_period = 1
"""
HUB = """
c.LocalMLPSpawner.kernel_cull_idle_timeout = 6
# Servers report their activity (API calls, kernels) every 2 s instead of every 5 minutes.
c.Spawner.environment = {**c.Spawner.environment, 'JUPYTERHUB_ACTIVITY_INTERVAL': '2'}
c.LocalMLPSpawner.profile_list = [
    {'slug': 'small', 'display_name': 'Small', 'default': True,
     'resources': {'cpu': '0.5', 'memory': '512Mi'}},
    {'slug': 'large', 'display_name': 'Large', 'resources': {'cpu': '1', 'memory': '2Gi'}},
]
for s in c.JupyterHub.services:
    if s['name'] == 'idle-culler':
        s['command'] = s['command'][:3] + ['--timeout=90', '--cull-every=5']
"""


@pytest.fixture(scope="module")
def mhub(tmp_path_factory) -> Any:
    hub = start_hub(tmp_path_factory.mktemp("mhub"), ["--MLPService.poll_interval=0.2"],
                    SERVICE, extra_hub_config=HUB)
    for user in ("alice", "bob", "carol", "tina"):
        hub.user_token(user)
    assert hub.hub_api("POST", "/groups/tight", json={"users": ["tina"]}).status_code == 201
    yield hub
    stop_hub(hub)


def spawn(hub: Hub, user: str, profile: str | None = None, timeout: float = 120) -> dict:
    body = {"profile": profile} if profile else None
    r = hub.hub_api("POST", f"/users/{user}/server", json=body)
    assert r.status_code in (201, 202) or "is already running" in r.text, r.text
    deadline = time.monotonic() + timeout
    while True:
        server = hub.hub_api("GET", f"/users/{user}").json()["servers"].get("")
        if server and server["ready"]:
            return server  # type: ignore[no-any-return]
        assert server is not None, f"{user}'s server is gone:\n{hub.log_tail()}"
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.3)


def stop(hub: Hub, user: str) -> None:
    hub.hub_api("DELETE", f"/users/{user}/server")
    deadline = time.monotonic() + 60
    while hub.hub_api("GET", f"/users/{user}").json()["servers"]:
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.3)


def server_api(hub: Hub, user: str, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"token {hub.user_token(user)}"}
    return requests.request(method, f"{hub.url}/user/{user}{path}", headers=headers,
                            timeout=30, **kw)


def run_cell(hub: Hub, user: str, code: str, timeout: float = 60) -> str:
    """Execute `code` in a new kernel of the user's real server; returns its stdout."""
    import asyncio

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    r = server_api(hub, user, "POST", "/api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]

    async def execute() -> str:
        ws_url = hub.url.replace("http", "ws") + f"/user/{user}/api/kernels/{kernel}/channels"
        ws = await websocket_connect(HTTPRequest(
            ws_url, headers={"Authorization": f"token {hub.user_token(user)}"}))
        msg_id = os.urandom(8).hex()
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user,
                       "session": os.urandom(8).hex(), "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }))
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(ws.read_message(), timeout)
            assert raw is not None, "kernel websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                ws.close()
                return "".join(out)
        raise AssertionError(f"cell did not finish in {timeout} s: {''.join(out)}")

    try:
        return asyncio.run(execute())
    finally:
        server_api(hub, user, "DELETE", f"/api/kernels/{kernel}")


# --------------------------------------------------------------------------- isolation
def test_a_cell_in_alices_kernel_cannot_read_what_is_not_hers(mhub: Hub):
    spawn(mhub, "bob")
    spawn(mhub, "alice")
    bob_home = mhub.data_dir / "users" / "bob"
    probe = {
        "bob_home": str(bob_home),
        "secrets": str(mhub.data_dir / "secrets.json"),
        "hub_db": str(mhub.data_dir / "jupyterhub.sqlite"),
        "cookie": str(mhub.data_dir / "jupyterhub_cookie_secret"),
        "mlp_db": str(mhub.data_dir / "mlp.sqlite"),
        "accounts": str(mhub.data_dir / "accounts.json"),
        "data_dir": str(mhub.data_dir),
    }
    code = f"""
import os, psutil
probe = {probe!r}
for what, path in probe.items():
    try:
        os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read(1)
        print(what, 'READABLE')
    except OSError as e:
        print(what, 'denied', type(e).__name__)
# bob's server and every process not ours: their environment holds their tokens
for p in psutil.process_iter(['username', 'cmdline']):
    if p.info['username'] == {f'{mhub.prefix}bob'!r} or p.info['username'] == 'root':
        try:
            env = p.environ()
            if 'JUPYTERHUB_API_TOKEN' in env or 'JPY_API_TOKEN' in env:
                print('TOKEN OF', p.info['username'], 'READABLE')
        except psutil.Error:
            pass
print('me', os.getuid(), os.environ['USER'])
"""
    out = run_cell(mhub, "alice", code)
    assert "READABLE" not in out, out
    for what in probe:
        assert f"{what} denied" in out, out
    import pwd

    assert f"me {pwd.getpwnam(mhub.prefix + 'alice').pw_uid} {mhub.prefix}alice" in out
    # The files really are there (the denials are permissions, not missing files).
    assert all(os.path.exists(p) for p in probe.values())
    stop(mhub, "bob")


def test_kernels_are_culled_inside_the_server(mhub: Hub):
    spawn(mhub, "alice")
    r = server_api(mhub, "alice", "POST", "/api/kernels", json={"name": "python3"})
    kernel = r.json()["id"]
    deadline = time.monotonic() + 60
    while kernel in [k["id"] for k in server_api(mhub, "alice", "GET", "/api/kernels").json()]:
        assert time.monotonic() < deadline, "an idle kernel was not culled"
        time.sleep(1)
    stop(mhub, "alice")


# --------------------------------------------------------------------------- the ledger
def mlp_admin(hub: Hub) -> Api:
    """The hub-side client the spawner reserves with (an mlp admin)."""
    creds = json.loads((hub.data_dir / "secrets.json").read_text())
    return Api(hub, creds["spawner_token"])


def reservations(hub: Hub) -> list[dict]:
    return mlp_admin(hub)("GET", "/reservations").json()["reservations"]  # type: ignore[no-any-return]


def test_spawn_over_quota_is_refused_with_the_numbers_and_leaks_nothing(mhub: Hub):
    spawn(mhub, "tina")  # small: 0.5 cpu, 512Mi of tight's 1 cpu, 1536Mi
    tina = Api(mhub, mhub.user_token("tina"))
    job = tina.submit({"name": "hold", "source": {"inline": "import time; time.sleep(120)"},
                       "tasks": {"worker": {"cpu": 0.5, "memory": "512Mi"}}})
    tina.wait(job["id"], {"Running"})
    stop(mhub, "tina")
    r = mhub.hub_api("POST", "/users/tina/server", json={"profile": "large"})
    assert r.status_code == 409, r.text
    message = r.json()["message"]
    assert "tight" in message and "2Gi" in message and "1Gi" in message, message
    assert not mhub.hub_api("GET", "/users/tina").json()["servers"]
    assert [h for h in mlp_admin(mhub)("GET", "/reservations").json()["reservations"]
            if h["user"] == "tina"] == []
    # A tampered request for something not offered is refused as well.
    r = mhub.hub_api("POST", "/users/tina/server", json={"profile": "small", "cpu": 64})
    assert r.status_code == 400 and "not offered" in r.json()["message"], r.text
    r = mhub.hub_api("POST", "/users/tina/server", json={"profile": "huge"})
    assert r.status_code == 400 and "'huge' is not offered" in r.json()["message"], r.text
    tina("DELETE", f"/jobs/{job['id']}")


def test_concurrent_reservations_and_submissions_never_exceed_a_quota(mhub: Hub):
    users = [f"r{i:02d}" for i in range(50)]
    for u in users:
        mhub.user_token(u)
    assert mhub.hub_api("POST", "/groups/race", json={"users": users}).status_code == 201
    spawner = mlp_admin(mhub)
    limit_cpu = 4.0
    over: list[float] = []
    done = threading.Event()

    def watch() -> None:
        admin = Api(mhub, mhub.user_token("r00"))
        while not done.is_set():
            q = admin("GET", "/quota").json()["groups"]["race"]["pools"]["default"]
            if q["used_by_group"]["cpu"] > limit_cpu + 1e-9:
                over.append(q["used_by_group"]["cpu"])
            time.sleep(0.05)

    def reserve(u: str) -> int:
        return spawner("POST", "/reservations", json={
            "user": u, "resources": {"cpu": "0.5", "memory": "256Mi"}}).status_code

    def submit(u: str) -> int:
        return Api(mhub, mhub.user_token(u))("POST", "/jobs", json={
            "name": "race", "source": {"inline": "import time; time.sleep(30)"},
            "tasks": {"worker": {"cpu": 0.5, "memory": "256Mi"}}}).status_code

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda iu: (reserve if iu[0] % 2 else submit)(iu[1]),
                                    enumerate(users)))
        time.sleep(1)
    finally:
        done.set()
        watcher.join()
    assert over == [], f"group race used {max(over)} cpu of {limit_cpu}"
    assert results.count(201) == 50 - results.count(409)  # jobs queue, reservations refuse
    assert results.count(409) >= 25 - 8, results  # at most 8 x 0.5 cpu fit
    for u in users:
        for j in Api(mhub, mhub.user_token(u))("GET", "/jobs").json()["jobs"]:
            Api(mhub, mhub.user_token(u))("DELETE", f"/jobs/{j['id']}")


def test_reservations_of_servers_that_do_not_exist_are_reclaimed(mhub: Hub):
    r = mlp_admin(mhub)("POST", "/reservations", json={
        "user": "carol", "server": "", "resources": {"cpu": "0.5", "memory": "256Mi"}})
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 30
    while any(h["user"] == "carol" for h in
              mlp_admin(mhub)("GET", "/reservations").json()["reservations"]):
        assert time.monotonic() < deadline, mhub.log_tail()
        time.sleep(0.5)
    assert "reclaimed the reservation of carol's server ''" in mhub.log_path.read_text()


# --------------------------------------------------------------------------- culling
def test_cull_keeps_files_and_workspace_and_spares_owners_of_running_jobs(mhub: Hub):
    spawn(mhub, "carol")
    spawn(mhub, "bob")
    bob = Api(mhub, mhub.user_token("bob"))
    job = bob.submit({"name": "long", "source": {"inline": "import time; time.sleep(300)"},
                      "tasks": {"worker": {"cpu": 0.5, "memory": "256Mi"}}})
    bob.wait(job["id"], {"Running"})
    r = server_api(mhub, "carol", "PUT", "/api/contents/notes.txt",
                   json={"type": "file", "format": "text", "content": "kept"})
    assert r.status_code in (200, 201), r.text
    layout = {"data": {"layout-restorer:data": {"main": {"current": "editor:notes.txt"}}},
              "metadata": {"id": "mine"}}
    r = server_api(mhub, "carol", "PUT", "/lab/api/workspaces/mine", json=layout)
    assert r.status_code == 204, r.text
    # The culler (timeout 90 s) stops carol's idle server; bob's is kept by his running job.
    deadline = time.monotonic() + 300
    while mhub.hub_api("GET", "/users/carol").json()["servers"]:
        assert time.monotonic() < deadline, mhub.log_tail()
        time.sleep(1)
    assert mhub.hub_api("GET", "/users/bob").json()["servers"][""]["ready"]
    assert not any(h["user"] == "carol" for h in reservations(mhub))
    spawn(mhub, "carol")
    r = server_api(mhub, "carol", "GET", "/api/contents/notes.txt")
    assert r.json()["content"] == "kept"
    r = server_api(mhub, "carol", "GET", "/lab/api/workspaces/mine")
    assert r.json()["data"] == layout["data"], r.text
    bob("DELETE", f"/jobs/{job['id']}")
    stop(mhub, "carol")
    stop(mhub, "bob")


def test_spawn_while_the_mlp_service_is_down_fails_clearly_and_leaks_nothing(mhub: Hub):
    from mlptest import kill_mlp_service, wait_for_service

    kill_mlp_service(mhub)
    r = mhub.hub_api("POST", "/users/alice/server")
    assert r.status_code == 503, r.text
    assert "mlp service is not reachable" in r.json()["message"], r.text
    assert not mhub.hub_api("GET", "/users/alice").json()["servers"]
    wait_for_service(Api(mhub, mhub.user_token("alice")))
    assert not any(h["user"] == "alice" for h in reservations(mhub))
    spawn(mhub, "alice")  # and once it is back, spawning works again
    stop(mhub, "alice")
