"""Submit latency: REST API call -> every task process of the job running.

Starts a real JupyterHub + proxy + mlp service (the embedded default, `mlp.devhub`) on free
loopback ports, submits N jobs of a tiny non-TensorFlow entrypoint (1 ps + 2 workers, so 4
processes with the added chief) and measures, per job, the time from sending POST /jobs until
every task process has started (each task touches a marker file first thing). The baseline
starts the same 4 processes directly with subprocess.Popen, with the interpreter, environment
and working directory a platform task had (recorded by a first, untimed platform job), while
the hub runs: baseline and platform runs alternate run by run (B P, P B, B P, ...), so both
see the same machine state. The ratio is the platform's overhead over bare process start-up.

    .venv/bin/python bench/submit_latency.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlp.devhub import Api, start_hub, stop_hub

ENTRY = """
import json, os, pathlib, sys, time
pathlib.Path(os.environ["MARKERS"], os.environ.get("MLP_TASK_TYPE", "t") + os.environ.get(
    "MLP_TASK_INDEX", os.environ.get("I", "0"))).touch()
if os.environ.get("CAPTURE"):
    pathlib.Path(os.environ["CAPTURE"] + "." + os.environ.get("MLP_TASK_TYPE", "t")
                 + os.environ.get("MLP_TASK_INDEX", "0")).write_text(json.dumps(
        {"env": dict(os.environ), "cwd": os.getcwd(), "python": sys.executable}))
time.sleep(60)
"""
TASKS = 4


def wait_markers(folder: Path, n: int, timeout: float = 30.0) -> float:
    deadline = time.perf_counter() + timeout
    while True:
        if len(os.listdir(folder)) >= n:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {n} tasks started")
        time.sleep(0.002)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-"))
    hub = start_hub(tmp / "hub", ["--MLPService.poll_interval=0.5",
                                  "--LocalProcessBackend.stop_grace_period=1"])
    baseline: list[float] = []
    platform: list[float] = []
    try:
        api = Api(hub, hub.user_token("bench"))

        def run_platform(i: int, capture: str = "") -> float:
            markers = tmp / f"job-{i}"
            markers.mkdir()
            env = {"MARKERS": str(markers), **({"CAPTURE": capture} if capture else {})}
            spec = {"name": f"lat-{i}", "source": {"inline": ENTRY}, "env": env,
                    "tasks": {"ps": {"count": 1}, "worker": {"count": 2}}}
            t0 = time.perf_counter()
            job = api.submit(spec)
            took = wait_markers(markers, TASKS) - t0
            api("DELETE", f"/jobs/{job['id']}")
            return took

        # An untimed first job records what a platform task runs with.
        capture = str(tmp / "task-env")
        run_platform(-1, capture)
        deadline = time.perf_counter() + 30
        while not Path(capture + ".worker0").exists():
            if time.perf_counter() > deadline:
                raise TimeoutError("the first platform job did not record its environment")
            time.sleep(0.01)
        task = json.loads(Path(capture + ".worker0").read_text())
        script = tmp / "entry.py"
        script.write_text(ENTRY)

        def run_baseline(i: int) -> float:
            markers = tmp / f"base-{i}"
            markers.mkdir()
            env = {k: v for k, v in task["env"].items() if k != "CAPTURE"}
            env["MARKERS"] = str(markers)
            t0 = time.perf_counter()
            procs = [subprocess.Popen([task["python"], "-u", str(script)],
                                      env={**env, "MLP_TASK_INDEX": str(k)}, cwd=task["cwd"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT, start_new_session=True)
                     for k in range(TASKS)]
            took = wait_markers(markers, TASKS) - t0
            for p in procs:
                p.kill()
                p.wait()
            return took

        for i in range(args.jobs):
            if i % 2 == 0:
                baseline.append(run_baseline(i))
                platform.append(run_platform(i))
            else:
                platform.append(run_platform(i))
                baseline.append(run_baseline(i))
    finally:
        stop_hub(hub)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [("bare Popen of the 4 processes, same env/cwd/python (baseline)", baseline),
            ("POST /jobs -> 4 task processes running", platform)]
    base_p50 = statistics.median(baseline)
    ratio = statistics.median(p / b for p, b in zip(platform, baseline, strict=True))
    print(f"\nsubmit latency, {args.jobs} jobs of 1 ps + 2 workers (+ chief), non-TF "
          "entrypoint; baseline and platform alternate run by run\n")
    print("| case | p50 ms | p95 ms | p50 x baseline |")
    print("|---|---:|---:|---:|")
    for name, values in rows:
        p50 = statistics.median(values)
        print(f"| {name} | {1000 * p50:.0f} | {1000 * pct(values, 0.95):.0f} | "
              f"{p50 / base_p50:.2f} |")
    p50 = statistics.median(platform)
    print(f"\nmedian of the per-pair ratios platform/baseline: {ratio:.2f}")
    print(f"target p50 < 1000 ms: {'met' if p50 < 1 else 'NOT met'} ({1000 * p50:.0f} ms)")


if __name__ == "__main__":
    main()
