"""From training to online prediction, end to end on a real hub: vlps models trained by real
jobs are registered, deployed on KServe's model server, queried through the hub's proxy with
users' tokens, rolled to a new version under load, and restarted after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from servekit import Served, ctr_instances, registry_path, saved_model_outputs

from mlp.client import REGISTER_TIMEOUT


# --------------------------------------------------------------------------- registry
def test_register_a_trained_version(served: Served) -> None:
    job = served.jobs[0]
    r = served.alice("POST", "/models/ctr/versions", timeout=REGISTER_TIMEOUT,
                     json={"job_id": job["id"], "description": "wide & deep on synthetic ctr"})
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["version"] == 1 and v["job_id"] == job["id"]
    assert v["params"] == {"steps": 30, "seed": 1}
    assert v["signature"]["inputs"] == {"cat": {"dtype": "int64", "shape": [None, 26]},
                                        "num": {"dtype": "float32", "shape": [None, 13]}}
    assert "loss" in v["metrics"]["worker:0"], v["metrics"]
    assert v["source"].endswith("/export") and v["stage"] == "none"
    # An immutable copy: read-only files in the registry, not the job's folder.
    copy = Path(registry_path(served, "ctr", 1))
    assert (copy / "saved_model.pb").is_file()
    assert not (copy / "saved_model.pb").stat().st_mode & 0o222
    listed = served.alice("GET", "/models").json()["models"]
    assert [(m["name"], m["owner"], m["latest_version"]) for m in listed] == [
        ("ctr", "alice", 1)]
    versions = served.alice("GET", "/models/ctr/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1]


def test_bad_versions_are_refused_with_the_reason(served: Served) -> None:
    job = served.jobs[0]
    missing = served.alice("POST", "/models/ctr/versions",
                           json={"job_id": job["id"], "path": "no-such-export"})
    assert missing.status_code == 400
    assert "does not exist" in missing.json()["message"], missing.text
    # A folder that exists but is not a SavedModel (the job's logs folder has no saved_model.pb)
    home = Path(served.hub.data_dir) / "users" / "alice"
    not_model = served.alice("POST", "/models/ctr/versions", json={"path": "mlp-jobs"})
    assert not_model.status_code == 400
    assert "not a SavedModel" in not_model.json()["message"], not_model.text
    escape = served.alice("POST", "/models/ctr/versions", json={"path": "../bob"})
    assert escape.status_code == 400 and "leaves" in escape.json()["message"]
    # Nothing was registered by the refusals.
    assert len(served.alice("GET", "/models/ctr/versions").json()["versions"]) == 1
    assert home.is_dir()


def test_another_user_cannot_see_or_take_the_model(served: Served) -> None:
    assert served.bob("GET", "/models").json()["models"] == []
    r = served.bob("GET", "/models/ctr")
    assert r.status_code == 403 and "alice" in r.json()["message"]
    taken = served.bob("POST", "/models/ctr/versions", json={"path": "x"})
    assert taken.status_code == 403
    assert served.admin("GET", "/models/ctr").status_code == 200


def test_promotion_of_a_version_ties_in_with_the_production_pool(served: Served) -> None:
    refused = served.alice("POST", "/models/ctr/versions/1/stage", json={"stage": "production"})
    assert refused.status_code == 403, refused.text
    r = served.admin("POST", "/models/ctr/versions/1/stage", json={"stage": "production"})
    assert r.status_code == 200 and r.json()["stage"] == "production", r.text
    assert served.alice("GET", "/models/ctr").json()["production_version"] == 1
    promotions = served.admin("GET", "/admin/promotions").json()["promotions"]
    assert any(p["user"] == "alice" and p["name"] == "ctr" for p in promotions), promotions
    bad = served.admin("POST", "/models/ctr/versions/9/stage", json={"stage": "production"})
    assert bad.status_code == 404


# --------------------------------------------------------------------------- deployments
def deploy(served: Served, name: str, **body: Any) -> dict[str, Any]:
    r = served.alice("POST", f"/models/{name}/deployments",
                     json={"cpu": 1, "memory": "2Gi", **body})
    assert r.status_code == 201, r.text
    return r.json()


def running(d: dict[str, Any]) -> bool:
    if d["state"] == "failed":
        raise AssertionError(f"deployment failed: {d['reason']}\n{d.get('logs')}")
    return d["state"] == "running"


def test_deploy_and_query_through_the_hub(served: Served) -> None:
    d = deploy(served, "ctr")
    assert d["state"] == "starting" and d["endpoint"] == "/services/models/ctr/"
    # The production version of a promoted model is deployed in the production pool.
    assert d["version"] == 1 and d["pool"] == "production", d
    served.wait_deployment("ctr", d["id"], running)
    body = {"instances": ctr_instances(5)}
    expected = saved_model_outputs(registry_path(served, "ctr", 1), body)
    (out_name,) = expected
    v1 = served.query("ctr", "v1/models/ctr:predict", body)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == expected[out_name]
    cat = [i["cat"] for i in body["instances"]]
    num = [i["num"] for i in body["instances"]]
    v2 = served.query("ctr", "v2/models/ctr/infer", {"inputs": [
        {"name": "cat", "datatype": "INT64", "shape": [5, 26], "data": [x for row in cat for x in row]},
        {"name": "num", "datatype": "FP32", "shape": [5, 13], "data": [x for row in num for x in row]},
    ]})
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["name"] == out_name and output["shape"] == [5, 1]
    assert output["data"] == [x for row in expected[out_name] for x in row]
    # Metrics of the requests and the replica's log in the deployment's view.
    view = served.alice("GET", f"/models/ctr/deployments/{d['id']}").json()
    assert view["metrics"]["requests"] >= 2 and view["metrics"]["latency_ms"]["p50"] > 0
    assert any("loaded" in text for text in view["logs"].values()), view["logs"]
    # The reservation is in the ledger like a notebook server's (holder deploy:<id>).
    reservations = served.alice("GET", "/reservations").json()["reservations"]
    assert any(r["id"] == str(d["id"]) and r["amount"]["cpu"] == 1
               for r in reservations), reservations


def test_other_users_and_anonymous_callers_are_refused(served: Served) -> None:
    body = {"instances": ctr_instances(1)}
    bob = served.query("ctr", "v1/models/ctr:predict", body, user="bob")
    assert bob.status_code == 403 and "alice" in bob.json()["message"]
    anonymous = served.query("ctr", "v1/models/ctr:predict", body, token="")
    assert anonymous.status_code in (401, 403)
    # Admins may query every model.
    assert served.query("ctr", "v1/models/ctr:predict", body, user="admin").status_code == 200


def test_requests_that_do_not_match_the_signature_are_400_naming_the_input(
        served: Served) -> None:
    good = ctr_instances(2)
    wrong_name = [{"cats": i["cat"], "num": i["num"]} for i in good]
    r = served.query("ctr", "v1/models/ctr:predict", {"instances": wrong_name})
    assert r.status_code == 400 and "'cats'" in r.text, r.text
    short = [{"cat": i["cat"][:20], "num": i["num"]} for i in good]
    r = served.query("ctr", "v1/models/ctr:predict", {"instances": short})
    assert r.status_code == 400 and "'cat'" in r.text and "shape" in r.text, r.text
    r = served.query("ctr", "v2/models/ctr/infer", {"inputs": [
        {"name": "cat", "datatype": "FP32", "shape": [1, 26], "data": [0.5] * 26},
        {"name": "num", "datatype": "FP32", "shape": [1, 13], "data": [0.0] * 13},
    ]})
    assert r.status_code == 400 and "'cat'" in r.text and "INT64" in r.text, r.text
    fractional = [{"cat": [0.5] * 26, "num": i["num"]} for i in good]
    r = served.query("ctr", "v1/models/ctr:predict", {"instances": fractional})
    assert r.status_code == 400 and "'cat'" in r.text, r.text


def test_mlp_deploy_magic_shows_the_endpoint_metrics_and_a_try_it_box(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("MLP_URL", served.hub.service_url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", served.hub.user_token("alice"))
    monkeypatch.setenv("MLP_MODELS_URL", f"{served.hub.url}/services/models/")
    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("mlp_magics")
    try:
        (live,) = served.alice("GET", "/models/ctr/deployments").json()["deployments"]
        dash = ip.run_line_magic("mlp_deploy", "ctr")  # attaches to the live deployment
        try:
            assert dash.deployment_id == live["id"]
            dash.refresh()
            assert "running" in dash.text() and "/services/models/ctr/" in dash.text()
            body = json.dumps({"instances": [{"cat": [1] * 26, "num": [0.5] * 13}]})
            answer = dash.try_it(body)
            assert answer.startswith("HTTP 200") and "predictions" in answer, answer
            bad = dash.try_it(json.dumps({"instances": [{"cat": [1], "num": [0.5] * 13}]}))
            assert bad.startswith("HTTP 400") and "'cat'" in bad, bad
            box = dash.widget  # the widget: status, metrics, the try-it box and its answer
            assert "p99" in dash.html() and box.children[3].value
        finally:
            dash.close()
        with pytest.raises(UsageError, match="does not exist"):
            ip.run_line_magic("mlp_deploy", "no-such-model")
    finally:
        ip.extension_manager.unload_extension("mlp_magics")


def test_a_deployment_over_quota_is_refused_with_numbers(served: Served) -> None:
    r = served.alice("POST", "/models/ctr-big/versions", json={"job_id": served.jobs[0]["id"]},
                     timeout=REGISTER_TIMEOUT)
    assert r.status_code == 201, r.text
    r = served.alice("POST", "/models/ctr-big/deployments", json={"cpu": 60, "replicas": 2})
    assert r.status_code == 409, r.text
    err = r.json()
    assert err["error"] == "over_quota" and err["blocking"], err
    assert "cpu" in err["message"], err
    assert served.alice("GET", "/models/ctr-big/deployments").json()["deployments"] == []


def test_rolling_to_a_new_version_drops_no_request(served: Served) -> None:
    r = served.alice("POST", "/models/ctr/versions", json={"job_id": served.jobs[1]["id"]},
                     timeout=REGISTER_TIMEOUT)
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    (d,) = served.alice("GET", "/models/ctr/deployments").json()["deployments"]
    body = {"instances": ctr_instances(3)}
    old = saved_model_outputs(registry_path(served, "ctr", 1), body)
    new = saved_model_outputs(registry_path(served, "ctr", 2), body)
    (key,) = old
    assert old[key] != new[key]  # two trainings, two models: the switch is visible
    answers: list[Any] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            r = served.query("ctr", "v1/models/ctr:predict", body)
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:300]}")
            else:
                answers.append(r.json()["predictions"])

    thread = threading.Thread(target=client)
    thread.start()
    try:
        r = served.alice("PATCH", f"/models/ctr/deployments/{d['id']}", json={"version": 2})
        assert r.status_code == 200 and r.json()["state"] == "rolling", r.text
        served.wait_deployment(
            "ctr", d["id"], lambda x: running(x) and x["version"] == 2
            and all(p["version"] == 2 for p in x["replicas"]))
        seen = len(answers)
        deadline = time.monotonic() + 30
        while len(answers) < seen + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(60)
    assert failures == []
    assert answers[0] == old[key] and answers[-1] == new[key]
    assert all(a in (old[key], new[key]) for a in answers)


def test_a_killed_model_server_is_restarted(served: Served) -> None:
    (d,) = served.alice("GET", "/models/ctr/deployments").json()["deployments"]
    (replica,) = d["replicas"]
    os.kill(replica["pid"], signal.SIGKILL)
    after = served.wait_deployment(
        "ctr", d["id"], lambda x: x["restarts"] == d["restarts"] + 1 and running(x)
        and x["replicas"][0]["pid"] != replica["pid"])
    assert any("exited with code -9" in e["event"] for e in after["events"]), after["events"]
    deadline = time.monotonic() + 240
    while True:
        r = served.query("ctr", "v1/models/ctr:predict", {"instances": ctr_instances(1)})
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)


def test_the_inference_service_manifest(served: Served) -> None:
    (d,) = served.alice("GET", "/models/ctr/deployments").json()["deployments"]
    m = served.alice("GET", f"/models/ctr/deployments/{d['id']}/manifest").json()
    assert m["apiVersion"] == "serving.kserve.io/v1beta1" and m["kind"] == "InferenceService"
    assert m["metadata"]["name"] == "ctr"
    model = m["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "tensorflow"}
    assert model["storageUri"] == "pvc://mlp-models/ctr/2"
    assert model["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}


def test_deleting_a_model_with_a_live_deployment_needs_force(served: Served) -> None:
    (d,) = served.alice("GET", "/models/ctr/deployments").json()["deployments"]
    r = served.alice("DELETE", "/models/ctr")
    assert r.status_code == 409 and str(d["id"]) in r.json()["message"], r.text
    assert served.bob("DELETE", "/models/ctr").status_code == 403
    pids = [p["pid"] for p in d["replicas"]]
    r = served.alice("DELETE", "/models/ctr?force=true")
    assert r.status_code == 200 and r.json()["stopped_deployments"] == [d["id"]], r.text
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().split()[2]
    assert served.alice("GET", "/models/ctr").status_code == 404
    assert not any(r["id"] == str(d["id"])
                   for r in served.alice("GET", "/reservations").json()["reservations"])
    r = served.query("ctr", "v1/models/ctr:predict", {"instances": ctr_instances(1)})
    assert r.status_code == 404


def test_a_server_that_keeps_dying_marks_the_deployment_failed_with_the_reason(
        served: Served) -> None:
    d = deploy(served, "ctr-big")
    d = served.wait_deployment("ctr-big", d["id"], running)
    # More exits than c.ModelServing.max_restarts (3) within restart_window: failed.
    for _ in range(4):
        (replica,) = d["replicas"]
        os.kill(replica["pid"], signal.SIGKILL)
        d = served.wait_deployment(
            "ctr-big", d["id"],
            lambda x, pid=replica["pid"]: x["state"] == "failed"
            or (x["replicas"] and x["replicas"][0]["pid"] != pid), timeout=60)
    assert d["state"] == "failed", d
    assert "exited with code -9" in d["reason"] and "max_restarts=3" in d["reason"], d
    assert not any(r["id"] == str(d["id"])
                   for r in served.alice("GET", "/reservations").json()["reservations"])
    r = served.query("ctr-big", "v1/models/ctr-big:predict", {"instances": ctr_instances(1)})
    assert r.status_code == 503 and "no running deployment" in r.json()["message"], r.text


def test_the_command_line_registers_a_version_saying_what_it_waits_for(served: Served) -> None:
    env = {**os.environ, "MLP_URL": f"{served.hub.url}/services/mlp/",
           "JUPYTERHUB_API_TOKEN": served.hub.user_token("alice")}

    def mlp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlp", "model", *args], env=env,
                              capture_output=True, text=True, timeout=REGISTER_TIMEOUT + 60,
                              stdin=subprocess.DEVNULL)

    job = served.jobs[0]["id"]
    r = mlp("register", "--name", "ctr-cli", str(job))
    assert r.returncode == 0, r.stderr
    assert (f"registering export (in job {job}'s folder) as a new version of ctr-cli"
            in r.stderr), r.stderr
    assert r.stdout.strip() == (f"model ctr-cli version 1 (job {job}): inputs "
                                "cat int64[None, 26], num float32[None, 13]"), r.stdout
    listed = mlp("list")
    assert listed.returncode == 0 and any(
        line.split()[:3] == ["ctr-cli", "owner", "alice"] for line in listed.stdout.splitlines()
    ), listed.stdout
    # A refusal names the cause and stores nothing.
    bad = mlp("register", "--name", "ctr-cli", str(job), "no-such-export")
    assert bad.returncode != 0 and "does not exist" in bad.stderr, bad.stderr
    assert len(served.alice("GET", "/models/ctr-cli/versions").json()["versions"]) == 1
