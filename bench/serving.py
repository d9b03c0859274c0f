"""Online prediction latency: a vlps model deployed on the platform (KServe's model server,
reached through the hub's proxy with a user's token) against the same SavedModel called
in-process (the ceiling), in the same run.

Starts a real JupyterHub + proxy + mlp service (`mlp.devhub`), trains a small Wide & Deep model
with a platform job (vlps, exported as a SavedModel), registers and deploys it, then measures
per request, for batch 1 and batch 256:

  in-process   the SavedModel's serving signature called in this process (TensorFlow, no HTTP)
  proxy v1     POST /services/models/ctr/v1/models/ctr:predict  {"instances": [...]}
  proxy v2     POST /services/models/ctr/v2/models/ctr/infer     (Open Inference Protocol)
  direct v2    the same v2 request to the replica's loopback port (no proxy, no router, no
               token check): what the hub's proxy and the models router add

Rounds alternate the cases (in-process, direct, v1, v2, then v2, v1, direct, in-process, ...),
so all see the same machine state; p50/p99 over every request of a case, requests/s = requests
/ time of one client sending them back to back. A last phase measures throughput with `--clients`
concurrent clients through the proxy.

    .venv/bin/python bench/serving.py [--rounds 10] [--requests 20] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlp.devhub import Api, start_hub, stop_hub

TRAIN = textwrap.dedent("""
    import keras, tensorflow as tf, vlps
    from vlps.data import synthetic_ctr
    from vlps.models import wide_deep
    trainer = vlps.Trainer(lambda: wide_deep(dim=8, hidden=(64, 32), learning_rate=0.1),
                           loss=keras.losses.BinaryCrossentropy(), optimizer=vlps.Adagrad(0.05),
                           report_every=20, cluster=vlps.ClusterInfo())
    trainer.fit(lambda ctx: synthetic_ctr(256, seed=1, zipf_a=1.5), steps=60)
    trainer.export("export", {"cat": tf.TensorSpec([None, 26], tf.int64, name="cat"),
                              "num": tf.TensorSpec([None, 13], tf.float32, name="num")})
""")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def batch(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 100_000, (n, 26)), rng.random((n, 13)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--requests", type=int, default=20, help="per case and round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serving.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-serving-"))
    hub = start_hub(tmp, [], extra_service_config="c.ModelServing.ready_timeout = 300\n")
    try:
        token = hub.user_token("alice")
        api = Api(hub, token)
        job = api.submit({"name": "ctr-bench", "source": {"inline": TRAIN},
                          "tasks": {"worker": {"count": 1, "cpu": 1, "memory": "2Gi"}},
                          "max_runtime": "30m"})
        job = api.wait(job["id"], {"Succeeded", "Failed", "Cancelled"}, timeout=900)
        if job["state"] != "Succeeded":
            raise SystemExit(f"training failed: {job['reason']}")
        r = api("POST", "/models/ctr/versions", json={"job_id": job["id"]})
        r.raise_for_status()
        d = api("POST", "/models/ctr/deployments", json={"cpu": 1, "memory": "2Gi"}).json()
        deadline = time.monotonic() + 600
        while (state := api("GET", f"/models/ctr/deployments/{d['id']}").json())["state"] \
                != "running":
            if state["state"] == "failed" or time.monotonic() > deadline:
                raise SystemExit(f"deployment: {state['reason']}")
            time.sleep(0.5)
        port = state["replicas"][0]["port"]
        results = measure(hub.url, token, str(hub.data_dir / "models" / "ctr" / "1"), port,
                          args)
    finally:
        stop_hub(hub)
    results["date"] = datetime.now(UTC).date().isoformat()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))


def measure(hub_url: str, token: str, model_dir: str, port: int,
            args: Any) -> dict[str, Any]:
    import tensorflow as tf

    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    direct = requests.Session()
    base = f"{hub_url}/services/models/ctr"
    out: dict[str, Any] = {"cases": {}, "settings": vars(args)}
    for size in (1, 256):
        cat, num = batch(size)
        tcat, tnum = tf.constant(cat), tf.constant(num)
        v1 = json.dumps({"instances": [{"cat": c.tolist(), "num": n.tolist()}
                                       for c, n in zip(cat, num, strict=True)]})
        v2 = json.dumps({"inputs": [
            {"name": "cat", "datatype": "INT64", "shape": list(cat.shape),
             "data": cat.ravel().tolist()},
            {"name": "num", "datatype": "FP32", "shape": list(num.shape),
             "data": num.ravel().tolist()}]})
        expected = next(iter(fn(cat=tcat, num=tnum).values())).numpy()

        def in_process(tcat: Any = tcat, tnum: Any = tnum) -> None:
            fn(cat=tcat, num=tnum)

        def proxy_v1(v1: str = v1) -> None:
            r = session.post(f"{base}/v1/models/ctr:predict", data=v1,
                             headers={"Content-Type": "application/json"}, timeout=60)
            r.raise_for_status()

        def proxy_v2(v2: str = v2) -> None:
            r = session.post(f"{base}/v2/models/ctr/infer", data=v2,
                             headers={"Content-Type": "application/json"}, timeout=60)
            r.raise_for_status()

        # The deployment answers what the SavedModel computes (checked once per batch size).
        r = session.post(f"{base}/v1/models/ctr:predict", data=v1, timeout=60,
                         headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise SystemExit(f"the deployment answered {r.status_code}: {r.text[:1000]}")
        if not np.allclose(np.array(r.json()["predictions"]), expected, atol=1e-6):
            raise SystemExit("the deployment's predictions differ from the SavedModel's")
        def direct_v2(v2: str = v2) -> None:
            r = direct.post(f"http://127.0.0.1:{port}/v2/models/ctr/infer", data=v2,
                            headers={"Content-Type": "application/json"}, timeout=60)
            r.raise_for_status()

        cases = {"in-process": in_process, "direct v2": direct_v2, "proxy v1": proxy_v1,
                 "proxy v2": proxy_v2}
        for f in cases.values():  # warm-up
            for _ in range(3):
                f()
        times: dict[str, list[float]] = {k: [] for k in cases}
        spans: dict[str, float] = {k: 0.0 for k in cases}
        order = list(cases)
        for rnd in range(args.rounds):
            for name in order if rnd % 2 == 0 else reversed(order):
                start = time.perf_counter()
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    cases[name]()
                    times[name].append(time.perf_counter() - t0)
                spans[name] += time.perf_counter() - start
        for name, ts in times.items():
            out["cases"][f"{name} b{size}"] = {
                "batch": size, "p50_ms": round(pct(ts, 0.5) * 1000, 2),
                "p99_ms": round(pct(ts, 0.99) * 1000, 2),
                "req_per_s": round(len(ts) / spans[name], 1),
                "rows_per_s": round(len(ts) * size / spans[name], 1),
            }
        out["cases"][f"proxy v2 b{size} x{args.clients} clients"] = concurrent(
            proxy_v2, args.clients, args.requests * args.rounds // 2, size)
    return out


def concurrent(call: Any, clients: int, per_client: int, size: int) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        mine = []
        for _ in range(per_client):
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    span = time.perf_counter() - start
    return {"batch": size, "p50_ms": round(pct(latencies, 0.5) * 1000, 2),
            "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
            "req_per_s": round(len(latencies) / span, 1),
            "rows_per_s": round(len(latencies) * size / span, 1)}


def table(results: dict[str, Any]) -> str:
    lines = ["| case | batch | p50 ms | p99 ms | req/s | rows/s | p50 x in-process |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    cases = results["cases"]
    for name, c in cases.items():
        ceiling = cases[f"in-process b{c['batch']}"]["p50_ms"]
        ratio = c["p50_ms"] / ceiling if ceiling else float("nan")
        lines.append(f"| {name} | {c['batch']} | {c['p50_ms']} | {c['p99_ms']} | "
                     f"{c['req_per_s']} | {c['rows_per_s']} | {ratio:.1f} |")
    return "\n".join(lines) + f"\n\n(p50 over alternated rounds; {results['date']})"


if __name__ == "__main__":
    main()
