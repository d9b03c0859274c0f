"""Submit latency: REST API call -> every task process of the job running.

Starts a real JupyterHub + proxy + mlp service (the embedded default) on free loopback ports,
submits N jobs of a tiny non-TensorFlow entrypoint (1 ps + 2 workers, so 4 processes with the
added chief) and measures, per job, the time from sending POST /jobs until every task process
has started (each task touches a marker file first thing). The baseline, measured in the same
run, starts the same 4 processes directly with subprocess.Popen: the ratio is the platform's
overhead over bare process start-up.

    .venv/bin/python bench/submit_latency.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from mlptest import Api, start_hub, stop_hub  # noqa: E402

ENTRY = """
import os, pathlib, time
pathlib.Path(os.environ["MARKERS"], os.environ.get("MLP_TASK_TYPE", "t") + os.environ.get(
    "MLP_TASK_INDEX", os.environ.get("I", "0"))).touch()
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
    script = tmp / "entry.py"
    script.write_text(ENTRY)

    baseline: list[float] = []
    for i in range(args.jobs):
        markers = tmp / f"base-{i}"
        markers.mkdir()
        env = {**os.environ, "MARKERS": str(markers)}
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-u", str(script)], env={**env, "I": str(k)},
                                  start_new_session=True) for k in range(TASKS)]
        baseline.append(wait_markers(markers, TASKS) - t0)
        for p in procs:
            p.kill()
            p.wait()

    hub = start_hub(tmp / "hub", ["--MLPService.poll_interval=0.5",
                                  "--LocalProcessBackend.stop_grace_period=1"])
    platform: list[float] = []
    try:
        api = Api(hub, hub.user_token("bench"))
        for i in range(args.jobs):
            markers = tmp / f"job-{i}"
            markers.mkdir()
            spec = {"name": f"lat-{i}", "source": {"inline": ENTRY},
                    "env": {"MARKERS": str(markers)},
                    "tasks": {"ps": {"count": 1}, "worker": {"count": 2}}}
            t0 = time.perf_counter()
            job = api.submit(spec)
            platform.append(wait_markers(markers, TASKS) - t0)
            api("DELETE", f"/jobs/{job['id']}")
    finally:
        stop_hub(hub)

    rows = [("bare Popen of the 4 processes (baseline)", baseline),
            ("POST /jobs -> 4 task processes running", platform)]
    base_p50 = statistics.median(baseline)
    print(f"\nsubmit latency, {args.jobs} jobs of 1 ps + 2 workers (+ chief), non-TF entrypoint\n")
    print("| case | p50 ms | p95 ms | p50 x baseline |")
    print("|---|---:|---:|---:|")
    for name, values in rows:
        p50 = statistics.median(values)
        print(f"| {name} | {1000 * p50:.0f} | {1000 * pct(values, 0.95):.0f} | "
              f"{p50 / base_p50:.2f} |")
    p50 = statistics.median(platform)
    print(f"\ntarget p50 < 1000 ms: {'met' if p50 < 1 else 'NOT met'} ({1000 * p50:.0f} ms)")


if __name__ == "__main__":
    main()
