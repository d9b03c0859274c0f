"""Quotas, queue, score, gang, borrowing with reclaim, expansions, promotion, dependencies,
alerts and notebook-server reservations, through a real hub + mlp service."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from mlptest import Api, Hub, kill_mlp_service, start_hub, stop_hub, wait_for_service

pytestmark = pytest.mark.integration
END = {"Succeeded", "Failed", "Cancelled", "TimedOut"}
SLEEP = "import time; time.sleep(300)"

QUOTAS = """
c.QuotaConfig.pools = {
    'default': {'capacity': {'cpu': 8, 'memory': '32Gi'}},
    'production': {'capacity': {'cpu': 4, 'memory': '16Gi'}, 'priority': 100,
                   'requires_promotion': True},
}
c.QuotaConfig.groups = {
    'ads': {'cohort': 'ml', 'limits': {'default': {'cpu': 2, 'memory': '8Gi'},
                                        'production': {'cpu': 2, 'memory': '8Gi'}},
            'lend_limit': {'default': {'cpu': 2, 'memory': '8Gi'}},
            'member_caps': {'erin': {'cpu': 1, 'memory': '8Gi'}}},
    'search': {'cohort': 'ml', 'limits': {'default': {'cpu': 2, 'memory': '8Gi'}},
               'lend_limit': {'default': {'cpu': 2, 'memory': '8Gi'}}},
    'tight': {'limits': {'default': {'cpu': 2, 'memory': '8Gi'}}},
}
c.QuotaConfig.default_group_quota = {'limits': {'default': {'cpu': 1, 'memory': '4Gi'}}}
c.MLPService.default_task_cpu = '1'
c.MLPService.default_task_memory = '1Gi'
# The webhook receiver of these tests listens on loopback, which alerts may not reach unless
# an admin allows it.
c.OutboundPolicy.allow_networks = ['127.0.0.0/8']
"""


@pytest.fixture(scope="module")
def qhub(tmp_path_factory) -> Hub:
    hub = start_hub(tmp_path_factory.mktemp("qhub"),
                    ["--LocalProcessBackend.stop_grace_period=1", "--MLPService.poll_interval=0.2",
                     # reservations made here have no notebook server behind them: keep the
                     # reclaim loop from releasing them mid-test on a slow machine
                     "--MLPService.reclaim_grace=3600"],
                    QUOTAS)
    # JupyterHub groups map to quota groups of the same name.
    for group, members in {"ads": ["alice", "erin"], "search": ["bob"],
                           "tight": ["tina"]}.items():
        for user in members:
            hub.user_token(user)
        r = hub.hub_api("POST", f"/groups/{group}", json={"users": members})
        assert r.status_code == 201, r.text
    for user in ("alice", "erin", "bob", "tina", "carol", "admin"):
        hub.user_token(user)
    yield hub
    stop_hub(hub)


def api(hub: Hub, user: str) -> Api:
    return Api(hub, hub.user_token(user))


def job(name: str, cpu: float = 1, workers: int = 1, code: str = SLEEP, **kw):
    return {"name": name, "source": {"inline": code},
            "tasks": {"worker": {"count": workers, "cpu": cpu, "memory": "1Gi"}}, **kw}


def cancel_all(hub: Hub, *users: str) -> None:
    for user in users:
        a = api(hub, user)
        for j in a("GET", "/jobs?state=Queued,Starting,Running").json()["jobs"]:
            a("DELETE", f"/jobs/{j['id']}")


def test_a_job_that_could_never_fit_is_refused_with_the_numbers(qhub: Hub):
    alice = api(qhub, "alice")
    before = len(alice("GET", "/jobs").json()["jobs"])
    # ads may reach 2 cpu of its own + 2 its cohort (search) may lend
    r = alice("POST", "/jobs", json=job("huge", cpu=5))
    assert r.status_code == 400 and r.json()["error"] == "never_fits"
    blocking = r.json()["blocking"]
    assert {"scope": "group", "group": "ads", "resource": "cpu", "requested": 5.0,
            "available": 4.0}.items() <= blocking[0].items(), blocking
    assert "5 cpu" in r.json()["message"] and "'ads'" in r.json()["message"]
    assert len(alice("GET", "/jobs").json()["jobs"]) == before


def test_user_in_no_group_gets_the_default_group(qhub: Hub):
    carol = api(qhub, "carol")
    j = carol.submit(job("mine", cpu=1))
    assert j["group"] == "default" and j["pool"] == "default"
    r = carol("POST", "/jobs", json=job("two", cpu=2))
    assert r.status_code == 400 and "'default'" in r.json()["message"]
    quota = carol("GET", "/quota").json()
    assert list(quota["groups"]) == ["default"]
    cancel_all(qhub, "carol")


def test_queue_gang_and_explanation(qhub: Hub):
    tina = api(qhub, "tina")
    a = tina.submit(job("first", cpu=2))
    tina.wait(a["id"], {"Running"})
    # a 2-task gang that needs the group's whole quota waits as a whole
    b = tina.submit(job("gang", cpu=1, workers=2))
    time.sleep(1)
    b = tina("GET", f"/jobs/{b['id']}").json()
    assert b["state"] == "Queued" and b["tasks"] == []
    q = b["queue"]
    assert q["position"] == 0 and isinstance(q["score"], float)
    assert abs(sum(q["score_parts"].values()) - q["score"]) < 1e-6
    assert any(x["scope"] == "group" and x["resource"] == "cpu" and x["available"] == 0
               for x in q["blocking"]), q["blocking"]
    listed = tina("GET", "/queue").json()["queue"]
    assert [e["id"] for e in listed] == [b["id"]]
    # the CLI explains it too
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLP_URL": f"{qhub.url}/services/mlp/",
           "JUPYTERHUB_API_TOKEN": qhub.tokens["tina"]}
    shown = subprocess.run([sys.executable, "-m", "mlp", "show", str(b["id"])], env=env,
                           capture_output=True, text=True, timeout=60).stdout
    assert "0 job(s) ahead" in shown and "blocked: " in shown and "'tight'" in shown, shown
    listed_cli = subprocess.run([sys.executable, "-m", "mlp", "jobs"], env=env,
                                capture_output=True, text=True, timeout=60).stdout
    assert "waiting: " in listed_cli, listed_cli
    # when the first job ends, the gang starts with both tasks
    tina("DELETE", f"/jobs/{a['id']}")
    b = tina.wait(b["id"], {"Running"})
    assert len(b["tasks"]) == 2
    cancel_all(qhub, "tina")


def test_personal_cap(qhub: Hub):
    erin = api(qhub, "erin")
    r = erin("POST", "/jobs", json=job("over-cap", cpu=2))
    assert r.status_code == 400 and "personal cap of 'erin'" in r.json()["message"]


def test_borrowing_and_reclaim_preempts_and_requeues(qhub: Hub):
    alice, bob = api(qhub, "alice"), api(qhub, "bob")
    own = alice.submit(job("own", cpu=2))
    alice.wait(own["id"], {"Running"})
    borrowed = alice.submit(job("borrowed", cpu=2))
    borrowed = alice.wait(borrowed["id"], {"Running"})
    assert borrowed["reservation"]["preemptible"] is True
    assert borrowed["reservation"]["borrowed"]["cpu"] == 2
    assert alice("GET", f"/jobs/{own['id']}").json()["reservation"]["preemptible"] is False
    assert "borrowed quota (preemptible)" in next(e for e in borrowed["events"]
                                              if e["to"] == "Starting")["reason"]
    # search wants its own quota back: alice's borrowed job is preempted and requeued
    mine = bob.submit(job("mine", cpu=2))
    mine = bob.wait(mine["id"], {"Running"}, timeout=60)
    borrowed = alice.wait(borrowed["id"], {"Queued"}, timeout=30)
    states = [e["to"] for e in borrowed["events"]]
    assert states[-3:] == ["Running", "Preempted", "Queued"], states
    assert borrowed["attempt"] == 2
    assert "attempt 2" in borrowed["reason"]
    assert all(t is not None for t in [borrowed["queue"]])
    # the first job of alice was never touched
    assert alice("GET", f"/jobs/{own['id']}").json()["state"] == "Running"
    usage = api(qhub, "admin")("GET", "/admin/usage").json()
    assert usage["groups"]["search"]["pools"]["default"]["used"]["cpu"] == 2
    assert usage["groups"]["ads"]["pools"]["default"]["borrowed"]["cpu"] == 0
    cancel_all(qhub, "alice", "bob")


def test_expansion_lets_a_waiting_job_start_and_bad_expansions(qhub: Hub):
    carol, admin = api(qhub, "carol"), api(qhub, "admin")
    first = carol.submit(job("one", cpu=1))
    carol.wait(first["id"], {"Running"})
    second = carol.submit(job("two", cpu=1, max_runtime="1m"))
    time.sleep(0.8)
    assert carol("GET", f"/jobs/{second['id']}").json()["state"] == "Queued"
    bad = [
        ({"group": "default", "amount": {"cpu": 1}, "duration": "1h"}, 400, "reason"),
        ({"group": "default", "amount": {"cpu": -1}, "duration": "1h", "reason": "x"}, 400,
         "cpu"),
        ({"group": "default", "amount": {"cpu": "lots"}, "duration": "1h", "reason": "x"}, 400,
         "cpu"),
        ({"group": "default", "amount": {"cpu": 1}, "duration": -5, "reason": "x"}, 400,
         "duration"),
        ({"group": "nope", "amount": {"cpu": 1}, "duration": "1h", "reason": "x"}, 404, "nope"),
        ({"group": "default", "pool": "gpu", "amount": {"cpu": 1}, "duration": "1h",
          "reason": "x"}, 404, "gpu"),
    ]
    for body, status, word in bad:
        r = admin("POST", "/admin/expansions", json=body)
        assert r.status_code == status and word in r.json()["message"], (body, r.text)
    r = carol("POST", "/admin/expansions", json={"group": "default", "amount": {"cpu": 1},
                                                 "duration": "1h", "reason": "demo"})
    assert r.status_code == 403
    r = admin("POST", "/admin/expansions", json={"group": "default", "amount": {"cpu": 1},
                                                 "duration": "1h", "reason": "deadline"})
    assert r.status_code == 201, r.text
    carol.wait(second["id"], {"Running"})
    listed = admin("GET", "/admin/expansions").json()["expansions"]
    assert any(e["id"] == r.json()["id"] and e["state"] == "active" for e in listed)
    assert admin("DELETE", f"/admin/expansions/{r.json()['id']}").status_code == 200
    cancel_all(qhub, "carol")


def test_promotion_to_production(qhub: Hub):
    alice, admin = api(qhub, "alice"), api(qhub, "admin")
    r = alice("POST", "/jobs", json=job("ctr-model", cpu=1, pool="production"))
    assert r.status_code == 400 and "promoted" in r.json()["message"]
    assert alice("POST", "/admin/promotions", json={"user": "alice", "name": "ctr-model"}
                 ).status_code == 403
    blocker = alice.submit(job("blocker", cpu=1, code="import time; time.sleep(2)"))
    waiting = alice.submit(job("ctr-model", cpu=1, code="print('w')",
                               depends_on=[blocker["id"]]))
    r = admin("POST", "/admin/promotions", json={"user": "alice", "name": "ctr-model"})
    assert r.status_code == 201
    # a job of the model still waiting for its dependency moves to production too
    assert r.json()["moved_to_production"] == [waiting["id"]]
    waiting = alice.wait(waiting["id"], END)
    assert waiting["state"] == "Succeeded" and waiting["pool"] == "production"
    j = alice.submit(job("ctr-model", cpu=1, code="print('prod')"))
    assert j["pool"] == "production"
    assert alice.wait(j["id"], END)["state"] == "Succeeded"
    assert admin("DELETE", "/admin/promotions/alice/ctr-model").status_code == 200
    assert alice.submit(job("ctr-model", code="print(1)"))["pool"] == "default"


def test_dependencies(qhub: Hub):
    alice, bob = api(qhub, "alice"), api(qhub, "bob")
    first = alice.submit(job("step-1", code="import time; time.sleep(1)"))
    second = alice.submit(job("step-2", code="print('after')", depends_on=[first["id"]]))
    assert second["queue"]["waiting_for"] == [first["id"]]
    assert alice.wait(second["id"], END)["state"] == "Succeeded"
    events = alice("GET", f"/jobs/{second['id']}").json()["events"]
    started = next(e["at"] for e in events if e["to"] == "Starting")
    first_done = alice("GET", f"/jobs/{first['id']}").json()["finished_at"]
    assert started >= first_done
    failing = alice.submit(job("bad", code="raise SystemExit(2)"))
    after = alice.submit(job("after-bad", code="print(1)", depends_on=[failing["id"]]))
    after = alice.wait(after["id"], END)
    assert after["state"] == "Failed" and f"job {failing['id']} ended Failed" in after["reason"]
    r = bob("POST", "/jobs", json=job("foreign", depends_on=[first["id"]]))
    assert r.status_code == 403 and "another user" in r.json()["message"]
    r = alice("POST", "/jobs", json=job("future", depends_on=[10**9]))
    assert r.status_code == 400 and r.json()["field"] == "depends_on"
    r = alice("POST", "/jobs", json=job("dead", depends_on=[failing["id"]]))
    assert r.status_code == 400 and "could never run" in r.json()["message"]


def test_alert_webhook_on_failure(qhub: Hub):
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        alice = api(qhub, "alice")
        url = f"http://127.0.0.1:{server.server_port}/hook"
        r = alice("POST", "/jobs", json=job("x", alerts=[{"on": ["failed"],
                                                           "webhook": "ftp://x"}]))
        assert r.status_code == 400 and r.json()["field"].startswith("alerts[0]")
        r = alice("POST", "/jobs", json=job("x", alerts=[{"on": ["failed"],
                                                           "email": "a@example.org"}]))
        assert r.status_code == 400 and "not configured" in r.json()["message"]
        j = alice.submit(job("alerting", code="raise SystemExit(5)",
                             alerts=[{"on": ["failed", "succeeded"], "webhook": url}]))
        alice.wait(j["id"], END)
        deadline = time.monotonic() + 20
        while not received:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert received[0]["event"] == "failed" and received[0]["job"]["id"] == j["id"]
        assert "exited with code 5" in received[0]["job"]["reason"]
    finally:
        server.shutdown()


def test_notebook_server_reservations_share_the_ledger(qhub: Hub):
    tina, bob, admin = api(qhub, "tina"), api(qhub, "bob"), api(qhub, "admin")
    r = tina("POST", "/reservations", json={"server": "", "resources": {"cpu": 1.5,
                                                                        "memory": "2Gi"}})
    assert r.status_code == 201, r.text
    assert r.json()["group"] == "tight"
    # the job now cannot get the group's 2 cpu: it waits, blocked by the group limit
    j = tina.submit(job("behind-server", cpu=1))
    time.sleep(0.8)
    j = tina("GET", f"/jobs/{j['id']}").json()
    assert j["state"] == "Queued" and j["queue"]["blocking"]
    r = tina("POST", "/reservations", json={"server": "gpu", "resources": {"cpu": 1}})
    assert r.status_code == 409 and r.json()["error"] == "over_quota"
    assert r.json()["blocking"][0]["scope"] in ("group", "user")
    assert tina("POST", "/reservations", json={"server": "", "resources": {"cpu": 0.1}}
                ).status_code == 409  # already holds one
    assert tina("POST", "/reservations", json={"resources": {"cpu": "abc"}}).status_code == 400
    assert tina("POST", "/reservations", json={"user": "bob", "resources": {"cpu": 1}}
                ).status_code == 403
    assert bob("DELETE", "/reservations/tina/").status_code == 403
    assert admin("GET", "/reservations").json()["reservations"]
    assert tina("DELETE", "/reservations/tina/").status_code == 200
    assert tina.wait(j["id"], {"Running"})["state"] == "Running"
    cancel_all(qhub, "tina")


def test_admin_api_and_bad_quotas(qhub: Hub):
    admin, alice = api(qhub, "admin"), api(qhub, "alice")
    for path in ("/admin/groups", "/admin/pools", "/admin/usage", "/admin/promotions",
                 "/admin/expansions"):
        assert admin("GET", path).status_code == 200, path
        assert alice("GET", path).status_code == 403, path
    r = admin("PUT", "/admin/groups/new-team", json={"limits": {"default": {"cpu": -1}}})
    assert r.status_code == 400 and "cpu" in r.json()["message"]
    r = admin("PUT", "/admin/groups/new-team", json={"limits": {"default": {"cpu": "x"}}})
    assert r.status_code == 400
    r = admin("PUT", "/admin/groups/new-team", json={"limits": {"gpu-pool": {"cpu": 1}}})
    assert r.status_code == 404 and "gpu-pool" in r.json()["message"]
    r = admin("PUT", "/admin/groups/new-team", json={"cohort": "ml", "limits": {
        "default": {"cpu": 1, "memory": "2Gi"}}})
    assert r.status_code == 200
    assert "new-team" in admin("GET", "/admin/groups").json()["groups"]
    r = admin("PUT", "/admin/pools/gpu", json={"capacity": {"cpu": 4, "gpu": 2}})
    assert r.status_code == 200
    assert admin("GET", "/admin/pools").json()["pools"]["gpu"]["capacity"]["gpu"] == 2


def test_200_parallel_submissions_never_exceed_the_limit(qhub: Hub):
    tina, admin = api(qhub, "tina"), api(qhub, "admin")
    code = "import time; time.sleep(0.5)"

    def submit(i: int) -> int:
        r = tina("POST", "/jobs", json=job(f"p{i}", cpu=0.5, code=code))
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(submit, range(200)))
    assert len(set(ids)) == 200
    # sample while the queue drains: the group never holds more than its 2 cpu
    peak = 0.0
    deadline = time.monotonic() + 240
    while True:
        usage = admin("GET", "/admin/usage").json()
        used = usage["groups"]["tight"]["pools"]["default"]["used"]["cpu"]
        peak = max(peak, used)
        assert used <= 2.0, usage["groups"]["tight"]
        running = tina("GET", "/jobs?state=Starting,Running&limit=10000").json()["jobs"]
        assert len(running) <= 4
        left = tina("GET", "/jobs?state=Queued,Starting,Running&limit=10000").json()["jobs"]
        if not left:
            break
        assert time.monotonic() < deadline, f"{len(left)} jobs left"
        time.sleep(0.3)
    assert peak > 0
    states = {j["state"] for j in tina("GET", "/jobs?limit=10000").json()["jobs"]
              if j["id"] in set(ids)}
    assert states == {"Succeeded"}


def test_restart_keeps_quota_state(qhub: Hub, tmp_path: Path):
    # the ledger's holders are in the store: usage survives a service restart


    tina, admin = api(qhub, "tina"), api(qhub, "admin")
    j = tina.submit(job("long", cpu=2))
    tina.wait(j["id"], {"Running"})
    kill_mlp_service(qhub)
    wait_for_service(admin)
    usage = admin("GET", "/admin/usage").json()
    assert usage["groups"]["tight"]["pools"]["default"]["used"]["cpu"] == 2
    waiting = tina.submit(job("waits", cpu=1))
    time.sleep(0.8)
    assert tina("GET", f"/jobs/{waiting['id']}").json()["state"] == "Queued"
    cancel_all(qhub, "tina")
