"""GPU devices through the REST API of a real hub + mlp service: a notebook-server reservation
and a job never share a device, and a crash and restart of the service keeps both allocations."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
from mlptest import Api, Hub, kill_mlp_service, start_hub, stop_hub, wait_for_service

POOLS = """
gpus = {'cpu': 8, 'memory': '16Gi', 'gpu': 2}
c.QuotaConfig.pools = {'default': {'capacity': gpus}}
c.QuotaConfig.default_group_quota = {'limits': {'default': gpus}}
"""
SLEEP = "import time; time.sleep(300)"


@pytest.fixture(scope="module")
def ghub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    # The reservations below belong to no real notebook server: a long grace keeps the
    # service's reclaim loop (which releases reservations the hub has no server for) from
    # taking them back on a slow machine before the restart is checked.
    hub = start_hub(tmp_path_factory.mktemp("gpuhub"),
                    ["--MLPService.poll_interval=0.2", "--MLPService.reclaim_grace=3600"], POOLS)
    yield hub
    stop_hub(hub)


def visible_devices(api: Api, job_id: int) -> str | None:
    """CUDA_VISIBLE_DEVICES of the job's training process (the child of its task wrapper)."""
    task = api("GET", f"/jobs/{job_id}").json()["tasks"][0]
    wrapper = psutil.Process(task["pid"])
    deadline = time.monotonic() + 30
    while not wrapper.children():
        assert time.monotonic() < deadline, f"job {job_id} started no process"
        time.sleep(0.02)
    return wrapper.children()[0].environ().get("CUDA_VISIBLE_DEVICES")


def gpu_job(name: str) -> dict:
    return {"name": name, "source": {"inline": SLEEP},
            "tasks": {"worker": {"gpu": 1, "cpu": 0.1, "memory": "64Mi"}}}


def test_reservations_and_jobs_hold_their_own_devices_across_a_restart(ghub: Hub):
    ann = Api(ghub, ghub.user_token("ann"))
    doc = ann("GET", "/openapi.json").json()
    assert "devices" in doc["components"]["schemas"]["Reservation"]["required"]
    r = ann("POST", "/reservations", json={"server": "", "resources": {"cpu": 1, "gpu": 1}})
    assert r.status_code == 201, r.text
    server_devices = r.json()["devices"]
    assert len(server_devices) == 1
    cpu_only = ann("POST", "/reservations", json={"server": "cpu", "resources": {"cpu": 1}})
    assert cpu_only.status_code == 201 and cpu_only.json()["devices"] == []
    job = ann.submit(gpu_job("beside-server"))
    ann.wait(job["id"], {"Running"})
    job_device = visible_devices(ann, job["id"])
    assert {job_device, *server_devices} == {"0", "1"}, (job_device, server_devices)
    waiting = ann.submit(gpu_job("no-device-left"))
    queued = ann("GET", f"/jobs/{waiting['id']}").json()
    assert queued["state"] == "Queued"
    assert queued["queue"]["blocking"][0]["resource"] == "gpu", queued["queue"]

    kill_mlp_service(ghub)  # a crash: the hub starts the service again on the same store
    wait_for_service(ann)
    held = {x["id"]: x["devices"] for x in ann("GET", "/reservations").json()["reservations"]}
    assert held == {"ann/": server_devices, "ann/cpu": []}
    assert ann("GET", f"/jobs/{job['id']}").json()["state"] == "Running"
    assert visible_devices(ann, job["id"]) == job_device
    assert ann("GET", f"/jobs/{waiting['id']}").json()["state"] == "Queued"

    assert ann("DELETE", "/reservations/ann/").status_code == 200
    ann.wait(waiting["id"], {"Running"})
    assert visible_devices(ann, waiting["id"]) == server_devices[0]
    for j in (job, waiting):
        ann("DELETE", f"/jobs/{j['id']}")
    ann("DELETE", "/reservations/ann/cpu")
