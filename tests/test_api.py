"""The REST API through a real JupyterHub + proxy + mlp service on loopback."""

from __future__ import annotations

import json
import re
import socket
import time

import psutil
import pytest
import requests
from mlptest import EXAMPLES, Api, Hub, kill_mlp_service, wait_for_service

from mlp.api import documented_methods, response_models, route_table, route_template

pytestmark = pytest.mark.integration
END = {"Succeeded", "Failed", "Cancelled", "TimedOut"}


def inline(code: str, name: str = "job", **kw):
    return {"name": name, "source": {"inline": code}, **kw}


@pytest.mark.slow
def test_parameter_server_training_job_succeeds_with_logs_from_every_task(alice: Api):
    code = (EXAMPLES / "ps_minimal.py").read_text()
    job = alice.submit(
        inline(code, name="ps-minimal", params={"steps": 10},
               tasks={"ps": {"count": 2, "memory": "1Gi"}, "worker": {"count": 1, "cpu": 1}})
    )
    assert job["state"] == "Queued"
    job = alice.wait(job["id"], END, timeout=240)
    logs = alice("GET", f"/jobs/{job['id']}/logs").json()["logs"]
    assert job["state"] == "Succeeded", (job["reason"], logs)
    assert sorted(logs) == ["chief:0", "ps:0", "ps:1", "worker:0"]
    for task in ("ps:0", "ps:1", "worker:0"):
        assert f"{task} serving" in logs[task], logs[task]
    chief = "\n".join(logs["chief:0"])
    m = re.search(r"trained 10 steps, loss ([\d.]+) -> ([\d.]+)", chief)
    assert m and float(m.group(2)) < float(m.group(1)), chief
    assert job["reason"] == "chief finished"
    assert [t["name"] for t in job["tasks"]] == ["chief:0", "ps:0", "ps:1", "worker:0"]
    assert [e["to"] for e in job["events"]] == ["Queued", "Starting", "Running", "Succeeded"]
    # the ps and worker servers were stopped once the chief was done
    for t in job["tasks"]:
        assert not psutil.pid_exists(t["pid"]) or psutil.Process(t["pid"]).status() == "zombie"


def test_failing_worker(alice: Api):
    code = "import os, sys\nif os.environ['MLP_TASK_INDEX'] == '1': sys.exit(4)\nimport time; time.sleep(30)"
    job = alice.submit(inline(code, tasks={"worker": {"count": 2}}))
    job = alice.wait(job["id"], END)
    assert job["state"] == "Failed"
    assert job["reason"].startswith("task worker:1 exited with code 4")


def test_cancel(alice: Api):
    job = alice.submit(inline("import time; print('up', flush=True); time.sleep(300)"))
    alice.wait(job["id"], {"Running"})
    r = alice("DELETE", f"/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["state"] == "Cancelled"
    assert r.json()["reason"] == "cancelled by alice"
    # cancelling again is harmless
    assert alice("DELETE", f"/jobs/{job['id']}").json()["state"] == "Cancelled"


def test_timeout(alice: Api):
    job = alice.submit(inline("import time; time.sleep(300)", max_runtime="1s"))
    job = alice.wait(job["id"], END, timeout=60)
    assert job["state"] == "TimedOut" and "max_runtime of 1 s" in job["reason"]


def test_code_that_does_not_parse(alice: Api):
    job = alice.submit(inline("print('unclosed'\n"))
    job = alice.wait(job["id"], END)
    assert job["state"] == "Failed"
    logs = alice("GET", f"/jobs/{job['id']}/logs?task=worker:0").json()["logs"]["worker:0"]
    assert any("SyntaxError" in line for line in logs)
    assert alice("GET", "/openapi.json").status_code == 200  # the service lives on


def test_git_url_that_cannot_be_cloned(alice: Api):
    job = alice.submit({"name": "g", "source": {"git": "https://127.0.0.1:9/none.git"}})
    job = alice.wait(job["id"], END)
    # Loopback is the platform's own network: refused before git runs (no allow-list here).
    assert job["state"] == "Failed" and "127.0.0.1, a loopback address" in job["reason"]
    logs = alice("GET", f"/jobs/{job['id']}/logs?task=setup").json()["logs"]["setup"]
    assert logs and logs[0].startswith("refused: source.git host 127.0.0.1")


def test_authentication_and_ownership(hub: Hub, alice: Api, bob: Api, admin: Api):
    job = alice.submit(inline("print(1)", name="mine"))
    anon = Api(hub, None)
    bad = Api(hub, "not-a-token")
    for api in (anon, bad):
        r = api("GET", "/jobs")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert api("POST", "/jobs", json=inline("print(1)")).status_code == 401
    r = bob("GET", f"/jobs/{job['id']}")
    assert r.status_code == 403 and r.json() == {
        "error": "forbidden", "message": f"job {job['id']} belongs to another user"}
    assert bob("DELETE", f"/jobs/{job['id']}").status_code == 403
    assert bob("GET", f"/jobs/{job['id']}/logs").status_code == 403
    assert all(j["user"] == "bob" for j in bob("GET", "/jobs").json()["jobs"])
    assert bob("GET", "/jobs?user=alice").status_code == 403
    # admins (custom:mlp:admin through the mlp-admin role) see everyone's
    assert admin("GET", f"/jobs/{job['id']}").status_code == 200
    users = {j["user"] for j in admin("GET", "/jobs?user=*").json()["jobs"]}
    assert "alice" in users
    assert {j["user"] for j in admin("GET", "/jobs?user=alice").json()["jobs"]} == {"alice"}


def test_a_token_without_access_to_the_service(hub: Hub):
    r = hub.hub_api("POST", "/users/alice/tokens", json={"scopes": ["read:users:name!user"]})
    assert r.status_code == 201, r.text
    api = Api(hub, r.json()["token"])
    assert api("GET", "/jobs").status_code in (401, 403)


@pytest.mark.parametrize("job_id,message", [("999999", "job 999999 does not exist"),
                                            ("abc", "'abc' is not a job id"),
                                            ("-1", "'-1' is not a job id"),
                                            ("1e3", "'1e3' is not a job id"),
                                            ("9" * 30, "is not a job id")])
def test_unknown_and_malformed_ids(alice: Api, job_id, message):
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/logs")):
        r = alice(method, f"/jobs/{job_id}{path}")
        assert r.status_code == 404
        assert r.json()["error"] == "not_found" and message in r.json()["message"]


def test_unknown_route_and_method(alice: Api):
    r = alice("GET", "/nothing-here")
    assert r.status_code == 404 and "openapi.json" in r.json()["message"]
    r = alice("PUT", "/jobs")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "body,field",
    [
        (b"{not json", None),
        (b"\xff\xfe", None),
        (json.dumps(inline("x", colour="red")), "colour"),
        (json.dumps(inline("x", tasks={"worker": {"count": 0}})), "tasks.worker.count"),
        (json.dumps(inline("x", tasks={"worker": {"count": -1}})), "tasks.worker.count"),
        (json.dumps(inline("x", tasks={"ps": {"memory": "abc"}, "worker": {}})),
         "tasks.ps.memory"),
        (json.dumps(inline("x", name="a/b")), "name"),
        (json.dumps(inline("x", name="..")), "name"),
        (json.dumps(inline("x", name="\u6a21\u578b")), "name"),
        (json.dumps(inline("x", name="n" * 1000)), "name"),
        (json.dumps(inline("x", runtime="tf-1.15")), "runtime"),
        (json.dumps([1, 2, 3]), "spec"),
    ],
)
def test_bad_submissions_get_400_and_lose_nothing(alice: Api, body, field):
    before = len(alice("GET", "/jobs").json()["jobs"])
    r = alice("POST", "/jobs", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()
    assert set(err) >= {"error", "message"}
    if field is None:
        assert err["error"] == "malformed_json"
    else:
        assert err["error"] == "invalid_spec" and err["field"] == field
        assert field in err["message"]
    assert len(alice("GET", "/jobs").json()["jobs"]) == before


def test_runtime_error_lists_available(alice: Api):
    r = alice("POST", "/jobs", json=inline("x", runtime="nope"))
    assert "available: default" in r.json()["message"]


def test_memory_units_accepted(alice: Api):
    job = alice.submit(inline("print(1)", tasks={"worker": {"memory": "512Mi"}, "ps": {
        "memory": "4Gi"}}))
    assert job["spec"]["tasks"]["worker"]["memory"] == 512 * 1024**2
    assert job["spec"]["tasks"]["ps"]["memory"] == 4 * 1024**3
    alice("DELETE", f"/jobs/{job['id']}")


def test_logs_tail_and_unknown_task(alice: Api):
    job = alice.submit(inline("for i in range(50): print('line', i)"))
    alice.wait(job["id"], END)
    r = alice("GET", f"/jobs/{job['id']}/logs?task=worker:0&tail=3").json()
    assert r["logs"]["worker:0"] == ["line 47", "line 48", "line 49"]
    r = alice("GET", f"/jobs/{job['id']}/logs?task=worker:7")
    assert r.status_code == 404 and "tasks with logs: worker:0" in r.json()["message"]
    assert alice("GET", f"/jobs/{job['id']}/logs?tail=lots").status_code == 400
    assert alice("GET", f"/jobs/{job['id']}/logs?tail=-1").status_code == 400


def sse(response):
    event = "message"
    for raw in response.iter_lines(decode_unicode=True):
        if raw.startswith("event:"):
            event = raw[6:].strip()
        elif raw.startswith("data:"):
            yield event, json.loads(raw[5:])
        elif raw.startswith(":"):
            yield "comment", raw


def test_follow_streams_logs_and_state_until_the_end(alice: Api):
    code = "import time\nfor i in range(5):\n    print('tick', i, flush=True); time.sleep(0.3)"
    job = alice.submit(inline(code))
    r = alice("GET", f"/jobs/{job['id']}/logs?follow=true", stream=True, timeout=60)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = list(sse(r))
    lines = [d["line"] for e, d in events if e == "log"]
    assert lines == [f"tick {i}" for i in range(5)]
    states = [d["state"] for e, d in events if e == "state"]
    assert states[-1] == "Succeeded" or events[-1][1]["state"] == "Succeeded"
    assert events[-1][0] == "end" and events[-1][1]["state"] == "Succeeded"


def test_follow_sends_keepalives_and_survives_a_client_that_leaves(hub: Hub, alice: Api):
    job = alice.submit(inline("import time; print('start', flush=True); time.sleep(300)"))
    alice.wait(job["id"], {"Running"})
    url = f"{hub.url}/services/mlp/api/v1/jobs/{job['id']}/logs?follow=1"
    r = requests.get(url, headers={"Authorization": f"token {hub.tokens['alice']}"},
                     stream=True, timeout=30)
    seen = []
    for kind, _data in sse(r):
        seen.append(kind)
        if kind == "comment":  # keepalive interval is 1 s in the test hub
            break
    assert "log" in seen and "state" in seen
    r.close()  # disconnect mid-stream
    # a raw socket that vanishes without reading
    s = socket.create_connection(("127.0.0.1", int(hub.url.rsplit(":", 1)[1])))
    s.sendall(f"GET /services/mlp/api/v1/jobs/{job['id']}/logs?follow=1 HTTP/1.1\r\n"
              f"Host: x\r\nAuthorization: token {hub.tokens['alice']}\r\n\r\n".encode())
    s.close()
    time.sleep(1.5)
    assert alice("GET", "/jobs").status_code == 200  # the service is fine
    assert alice("DELETE", f"/jobs/{job['id']}").json()["state"] == "Cancelled"


def test_openapi_documents_every_route():
    from mlp.api.openapi import build_openapi

    doc = build_openapi("/services/mlp/api/v1", "test")
    assert doc["openapi"].startswith("3.1")
    prefix = "/services/mlp/api/v1"
    checked = 0
    for pattern, handler in route_table(prefix):
        if pattern.endswith("/.*"):
            continue  # the JSON 404 for unknown routes
        path = route_template(pattern, prefix)
        assert path in doc["paths"], f"{handler.__name__} ({path}) is not in openapi.json"
        for method in documented_methods(handler):
            assert method in doc["paths"][path], f"{method.upper()} {path} undocumented"
            checked += 1
    assert checked >= 6
    routed = {route_template(pattern, prefix) for pattern, _ in route_table(prefix)}
    for path in doc["paths"]:
        assert path in routed, f"openapi.json documents {path}, which no handler serves"
    # Every documented JSON answer is checked against its model when the service writes it.
    checked_models = response_models(prefix)
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            status = next(code for code in op["responses"] if code.startswith("2"))
            content = op["responses"][status].get("content", {})
            if "$ref" in content.get("application/json", {}).get("schema", {}):
                handler = next(h for p, h in route_table(prefix)
                               if route_template(p, prefix) == path)
                assert (handler, method, int(status)) in checked_models, (
                    f"{method.upper()} {path} answers without a response-model check")


def test_openapi_served(hub: Hub):
    r = requests.get(f"{hub.url}/services/mlp/api/v1/openapi.json", timeout=10)
    assert r.status_code == 200 and r.json()["info"]["title"] == "jupyterhub-mlp"


@pytest.mark.slow
def test_service_restart_while_a_job_runs(hub: Hub, alice: Api):
    job = alice.submit(inline("import time; print('a', flush=True); time.sleep(8); print('b')"))
    alice.wait(job["id"], {"Running"})
    kill_mlp_service(hub)
    wait_for_service(alice)
    job = alice.wait(job["id"], END, timeout=60)
    assert job["state"] == "Succeeded", job["reason"]
    logs = alice("GET", f"/jobs/{job['id']}/logs").json()["logs"]["worker:0"]
    assert logs == ["a", "b"]
