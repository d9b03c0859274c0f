"""One hub and two trained vlps models for the serving tests (module scope: a few minutes),
and the helpers the tests share (imported from here, as conftest is a name every test folder has).

`served` starts a real JupyterHub + mlp service, trains two small Wide & Deep models with real
platform jobs (vlps, in-process training, export to `export/`), and registers the first as
version 1 of model `ctr`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from mlptest import REPO, Api, Hub, start_hub, stop_hub

SERVING_PYTHON = REPO / ".venv-serving" / "bin" / "python"

TRAIN = textwrap.dedent("""
    import json, os
    import keras, tensorflow as tf, vlps
    from vlps.data import synthetic_ctr
    from vlps.models import wide_deep

    params = json.loads(os.environ["MLP_PARAMS"])
    trainer = vlps.Trainer(
        lambda: wide_deep(dim=4, hidden=(8,), learning_rate=0.1, seed=params["seed"]),
        loss=keras.losses.BinaryCrossentropy(), optimizer=vlps.Adagrad(0.05),
        report_every=10, cluster=vlps.ClusterInfo())
    trainer.fit(lambda ctx: synthetic_ctr(64, seed=params["seed"], zipf_a=1.5),
                steps=params["steps"])
    trainer.export("export", {"cat": tf.TensorSpec([None, 26], tf.int64, name="cat"),
                              "num": tf.TensorSpec([None, 13], tf.float32, name="num")})
    print("exported", flush=True)
""")


@dataclass
class Served:
    hub: Hub
    alice: Api
    bob: Api
    admin: Api
    jobs: list[dict[str, Any]]

    def models_url(self, name: str) -> str:
        return f"{self.hub.url}/services/models/{name}"

    def query(self, name: str, path: str, body: Any, user: str = "alice",
              token: str | None = None) -> requests.Response:
        tok = token if token is not None else self.hub.user_token(user)
        headers = {"Authorization": f"token {tok}"} if tok else {}
        return requests.post(f"{self.models_url(name)}/{path}", json=body, headers=headers,
                             timeout=60)

    def wait_deployment(self, name: str, dep_id: int, check: Any,
                        timeout: float = 240.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            d = self.alice("GET", f"/models/{name}/deployments/{dep_id}").json()
            if check(d):
                return d
            if time.monotonic() > deadline:
                raise TimeoutError(f"deployment {dep_id}: {json.dumps(d)[:3000]}\n"
                                   f"{self.hub.log_tail(40)}")
            time.sleep(0.3)


def train_spec(seed: int) -> dict[str, Any]:
    return {
        "name": f"ctr-{seed}",
        "source": {"inline": TRAIN},
        "params": {"steps": 30, "seed": seed},
        "tasks": {"worker": {"count": 1, "cpu": 1, "memory": "2Gi"}},
        "max_runtime": "15m",
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not SERVING_PYTHON.exists():
        pytest.fail(f"{SERVING_PYTHON} is missing: run scripts/install.sh (it builds the "
                    "serving environment with kserve)")
    # Deployments never borrow (as notebook servers): the group has quota in production too.
    hub = start_hub(tmp_path_factory.mktemp("serving"), [], extra_service_config=(
        "c.ModelServing.ready_timeout = 300\n"
        "c.QuotaConfig.default_group_quota = {'limits': {'default': big, 'production': big}}\n"))
    try:
        alice = Api(hub, hub.user_token("alice"))
        bob = Api(hub, hub.user_token("bob"))
        admin = Api(hub, hub.user_token("admin", admin=True))
        jobs = [alice.submit(train_spec(seed)) for seed in (1, 2)]
        done = [alice.wait(j["id"], {"Succeeded", "Failed", "Cancelled", "TimedOut"},
                           timeout=600) for j in jobs]
        for j in done:
            if j["state"] != "Succeeded":
                logs = alice("GET", f"/jobs/{j['id']}/logs").json()
                pytest.fail(f"training job {j['id']} {j['state']}: {j['reason']}\n{logs}")
        yield Served(hub, alice, bob, admin, done)
    finally:
        stop_hub(hub)


def saved_model_outputs(path: str, body: dict[str, Any]) -> Any:
    """The SavedModel's own output for `body` (v1 instances), in a fresh TensorFlow process."""
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, tensorflow as tf
        body = json.loads(sys.stdin.read())
        m = tf.saved_model.load({path!r})
        cat = np.array([i["cat"] for i in body["instances"]], dtype=np.int64)
        num = np.array([i["num"] for i in body["instances"]], dtype=np.float32)
        out = m.signatures["serving_default"](cat=tf.constant(cat), num=tf.constant(num))
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], input=json.dumps(body), text=True,
                         capture_output=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2",
                              "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def ctr_instances(n: int, seed: int = 7) -> list[dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{"cat": rng.integers(0, 500, 26).tolist(),
             "num": rng.random(13).round(4).tolist()} for _ in range(n)]


def registry_path(served: Served, name: str, version: int) -> str:
    return str(Path(served.hub.data_dir) / "models" / name / str(version))
