"""Our scheduler beside Kueue v0.17.0 on the same test control plane (etcd, kube-apiserver,
controller-manager, scheduler, kwok nodes), with the shape of Kueue's scheduler-regression
benchmark (test/performance/scheduler/configs/baseline/generator.yaml), scaled down:

- cohorts of ClusterQueues (ours: quota groups in cohorts), nominal quota 20 cpu each;
- per queue, three workload sets arriving at fixed intervals: small (1 cpu, 200 ms, priority 50,
  every 100 ms), medium (5 cpu, 500 ms, priority 100, every 500 ms), large (20 cpu, 1 s,
  priority 200, every 1.2 s); `--scale` multiplies Kueue's counts (350, 100, 50 per queue).

Both sides run every workload as a pod on kwok nodes that ends after its runtime (a kwok stage,
mlp/devcluster.py), so both pay the same API server and scheduler costs: Kueue as a suspended
batch/v1 Job with the queue-name label (Kueue's webhooks cannot be reached without kube-proxy,
so Jobs are created suspended, as its docs allow), ours through JobManager + KubernetesBackend.

Runs `--runs` pairs, the order alternating (mlp, Kueue; Kueue, mlp; ...), each run in a fresh
namespace deleted before the next. Reports medians (min-max) of: admissions/s, time to admit the
last workload, utilisation (admitted cpu-seconds / (total nominal quota x makespan)), fairness
(Jain's index of the queues' progress, admitted cpu-seconds over demand, when half of all work
is admitted), mean time to admission per class; and the median of each pair's own ratio.

Needs `scripts/k8s-build.sh --with-kueue`. Usage: .venv/bin/python bench/kueue_compare.py
[--scale 0.1] [--cohorts 2] [--queues 3] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp.devcluster import Cluster, NodeShape, free_port, start_cluster

REPO = Path(__file__).resolve().parent.parent

CLASSES = [  # name, cpu, runtime ms, priority, count per queue (Kueue's), interval ms
    ("small", 1, 200, 50, 350, 100),
    ("medium", 5, 500, 100, 100, 500),
    ("large", 20, 1000, 200, 50, 1200),
]
NOMINAL = 20


@dataclass
class Workload:
    queue: str
    cls: str
    cpu: int
    runtime_ms: int
    priority: int
    offset: float  # seconds after the start
    created: float = 0.0
    admitted: float | None = None
    finished: float | None = None
    ok: bool = False  # ended successfully


@dataclass
class Result:
    name: str
    workloads: list[Workload] = field(default_factory=list)
    start: float = 0.0

    def metrics(self, queues: list[str]) -> dict[str, float]:
        adm = [w for w in self.workloads if w.admitted is not None]
        times = {id(w): w.admitted or 0.0 for w in adm}
        last = max(times.values()) - self.start if adm else float("nan")
        end = max((w.finished or w.admitted or 0) for w in adm) - self.start if adm else 1.0
        used = sum(w.cpu * w.runtime_ms / 1000 for w in adm)
        capacity = NOMINAL * len(queues) * max(end, 1e-9)
        out: dict[str, float] = {
            "workloads": len(self.workloads),
            "admitted": len(adm),
            "succeeded": sum(w.ok for w in self.workloads),
            "admissions_per_s": len(adm) / last if last > 0 else float("nan"),
            "last_admitted_s": last,
            "utilisation": used / capacity,
            "fairness": self.fairness(queues),
        }
        for cls, *_ in CLASSES:
            waits = [times[id(w)] - w.created for w in adm if w.cls == cls]
            out[f"wait_{cls}_s"] = statistics.mean(waits) if waits else float("nan")
        return out

    def fairness(self, queues: list[str]) -> float:
        """Jain's index of the queues' progress (admitted cpu-seconds / their demand) at the
        moment half of all work has been admitted. Every queue asks for the same work, so a
        fair scheduler has moved them on alike by then (1.0); at the end every scheduler that
        admits everything would score 1.0, which says nothing."""
        demand = {q: 0.0 for q in queues}
        for w in self.workloads:
            demand[w.queue] += w.cpu * w.runtime_ms
        admitted = sorted((w for w in self.workloads if w.admitted is not None),
                          key=lambda w: w.admitted or 0.0)
        half = sum(demand.values()) / 2
        got = {q: 0.0 for q in queues}
        total = 0.0
        for w in admitted:
            got[w.queue] += w.cpu * w.runtime_ms
            total += w.cpu * w.runtime_ms
            if total >= half:
                break
        shares = [got[q] / demand[q] for q in queues if demand[q]]
        squares = sum(x * x for x in shares)
        return sum(shares) ** 2 / (len(shares) * squares) if squares else float("nan")


def plan(cohorts: int, queues: int, scale: float) -> tuple[list[str], list[Workload]]:
    names = [f"c{c}-q{q}" for c in range(cohorts) for q in range(queues)]
    loads = []
    for name in names:
        for cls, cpu, run, prio, count, interval in CLASSES:
            for i in range(max(1, round(count * scale))):
                loads.append(Workload(name, cls, cpu, run, prio, i * interval / 1000))
    loads.sort(key=lambda w: w.offset)
    return names, loads


def sim_env(run_ms: int) -> dict[str, str]:
    return {"SIM_WORKER_EXIT": "0", "SIM_WORKER_RUN": f"{run_ms}ms"}


# ----------------------------------------------------------------------------- ours
async def run_ours(k8s: Cluster, queues: list[str], loads: list[Workload], ns: str,
                   tmp: Path) -> Result:
    from mlp.backends.kubernetes import KubernetesBackend
    from mlp.core.manager import JobManager, ManagerSettings
    from mlp.core.quota import QuotaService
    from mlp.core.spec import TaskSpec
    from mlp.core.states import JobState
    from mlp.scheduling import QuotaConfig, ScorePolicy
    from mlp.store import Store

    k8s.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    groups = {q: {"cohort": q.split("-")[0], "limits": {"default": {
        "cpu": NOMINAL, "memory": "1Ti"}}} for q in queues}
    total = NOMINAL * len(queues)
    config = QuotaConfig(pools={"default": {"capacity": {"cpu": total, "memory": "64Ti"}}},
                         groups=groups, default_group=queues[0])
    store = Store(f"sqlite:///{tmp / 'mlp.sqlite'}")
    backend = KubernetesBackend(kubeconfig=str(k8s.kubeconfig), namespace=ns,
                                stop_grace_period=0.0, data_dir=str(tmp), image="none")
    result = Result("mlp")
    by_id: dict[int, Workload] = {}
    original_submit = backend.submit

    async def submit(launch: Any) -> dict[str, Any]:
        by_id[launch.job_id].admitted = time.monotonic()
        return await original_submit(launch)

    backend.submit = submit  # type: ignore[method-assign]
    settings = ManagerSettings(runtimes={"default": ["python3"]}, default_runtime="default",
                               poll_interval=0.05, default_task=TaskSpec(1, 1.0, 2**20, 0),
                               default_max_runtime=3600.0, max_runtime_limit=None)
    m = JobManager(store, backend, settings, QuotaService(store, config, ScorePolicy()))
    m.start()
    result.start = time.monotonic()
    pending = set()
    try:
        for w in loads:
            delay = result.start + w.offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            w.created = time.monotonic()
            job = m.submit("bench", {
                "name": f"{w.cls}", "group": w.queue, "priority": w.priority // 2,  # ours -100..100
                "source": {"inline": "pass"}, "env": sim_env(w.runtime_ms),
                "tasks": {"worker": {"count": 1, "cpu": w.cpu, "memory": "1Mi"}},
            }, hub_groups=queues)
            by_id[job.id] = w
            pending.add(job.id)
            m.kick()
        deadline = time.monotonic() + 900
        ended = [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]
        while pending and time.monotonic() < deadline:
            now = time.monotonic()
            for j in store.list_jobs(states=ended):  # one query, not one per job
                if j.id in pending:
                    by_id[j.id].finished = now
                    by_id[j.id].ok = j.job_state == JobState.SUCCEEDED
                    pending.discard(j.id)
            await asyncio.sleep(0.1)
    finally:
        await m.stop()
        await backend.close()
    result.workloads = loads
    return result


# ----------------------------------------------------------------------------- Kueue
def kueue_dir() -> Path:
    out = subprocess.run([str(REPO / "scripts" / "k8s-build.sh"), "--print-bindir"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out).parent / "kueue-v0.17.0"


def start_kueue(k8s: Cluster, run: Path) -> subprocess.Popen[bytes]:
    import yaml

    kdir = kueue_dir()
    if not (kdir / "kueue").exists():
        raise SystemExit(f"Kueue is not built in {kdir}: run scripts/k8s-build.sh --with-kueue")
    k8s.request("POST", "/api/v1/namespaces", {"metadata": {"name": "kueue-system"}})
    for f in sorted((kdir / "crds").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        k8s.apply("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    for f in sorted((kdir / "crds").glob("*.yaml")):
        name = yaml.safe_load(f.read_text())["metadata"]["name"]
        k8s.wait_for(lambda n=name: any(
            c["type"] == "Established" and c["status"] == "True" for c in k8s.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}")
            .get("status", {}).get("conditions", [])), f"CRD {name}")
    # Kueue's webhook server needs a serving certificate; its cert controller would write one
    # into a Secret that a kubelet then mounts. Outside a cluster we make it ourselves.
    certs = run / "kueue-certs"
    certs.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")],
                   check=True, capture_output=True)
    # With its cert controller off, Kueue v0.17.0 reads its metrics certificate from a fixed
    # path (cmd/kueue/main.go); give it the same self-signed pair there.
    metrics = Path("/etc/kueue/metrics/certs")
    metrics.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        (metrics / name).write_bytes((certs / name).read_bytes())
    health, webhook = free_port(), free_port()
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook, "host": "127.0.0.1", "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }
    (run / "kueue.yaml").write_text(yaml.safe_dump(config))
    log = open(k8s.run_dir / "logs" / "kueue.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(kdir / "kueue"), f"--config={run / 'kueue.yaml'}",
         "--feature-gates=VisibilityOnDemand=false"],
        env={**os.environ, "KUBECONFIG": str(k8s.kubeconfig)}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    k8s.procs["kueue"] = proc  # stopped with the cluster
    k8s.wait_for(lambda: _ok(f"http://127.0.0.1:{health}/readyz"), "kueue /readyz", "kueue",
                 timeout=120)
    return proc


def _ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


async def run_kueue(k8s: Cluster, queues: list[str], loads: list[Workload], ns: str) -> Result:
    api = "/apis/kueue.x-k8s.io/v1beta2"
    k8s.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    k8s.apply(f"{api}/resourceflavors", {"apiVersion": "kueue.x-k8s.io/v1beta2",
              "kind": "ResourceFlavor", "metadata": {"name": "default"}})
    for cls, _cpu, _run, prio, _n, _i in CLASSES:
        k8s.apply(f"{api}/workloadpriorityclasses", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
            "metadata": {"name": cls}, "value": prio})
    for q in queues:
        k8s.apply(f"{api}/clusterqueues", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": f"{ns}-{q}"},
            "spec": {"cohortName": f"{ns}-{q.split('-')[0]}", "namespaceSelector": {},
                     "preemption": {"reclaimWithinCohort": "Any",
                                    "withinClusterQueue": "LowerPriority"},
                     "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [{
                         "name": "default", "resources": [{
                             "name": "cpu", "nominalQuota": NOMINAL,
                             "borrowingLimit": 100}]}]}]}})
        k8s.apply(f"{api}/namespaces/{ns}/localqueues", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": q, "namespace": ns},
            "spec": {"clusterQueue": f"{ns}-{q}"}})
    result = Result("kueue")
    by_name: dict[str, Workload] = {}
    stop = asyncio.Event()
    watcher = asyncio.get_running_loop().run_in_executor(
        None, _watch_jobs, k8s, ns, by_name, len(loads), stop)
    result.start = time.monotonic()
    for i, w in enumerate(loads):
        delay = result.start + w.offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        name = f"{w.cls}-{i}"
        by_name[name] = w
        w.created = time.monotonic()
        await asyncio.to_thread(k8s.request, "POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": w.queue,
                                                  "kueue.x-k8s.io/priority-class": w.cls}},
            "spec": {"suspend": True, "backoffLimit": 0, "template": {
                "metadata": {"labels": {"mlp.jupyter.org/task-type": "worker"}},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "task", "image": "none",
                    "env": [{"name": k, "value": v} for k, v in sim_env(w.runtime_ms).items()],
                    "resources": {"requests": {"cpu": str(w.cpu)},
                                  "limits": {"cpu": str(w.cpu)}}}]}}}})
    try:
        await asyncio.wait_for(watcher, 900)
    except TimeoutError:
        print(f"kueue: not every workload finished within 900 s in {ns}", flush=True)
    finally:
        stop.set()
    result.workloads = loads
    return result


def clean_up(k8s: Cluster, ns: str, side: str) -> None:
    """Remove a run's namespace (and Kueue's cluster-scoped queues), and wait until it is
    gone, so every run starts on the same empty cluster."""
    import urllib.error

    k8s.request("DELETE", f"/api/v1/namespaces/{ns}")
    if side == "kueue":
        api = "/apis/kueue.x-k8s.io/v1beta2/clusterqueues"
        for cq in k8s.request("GET", api)["items"]:
            if cq["metadata"]["name"].startswith(f"{ns}-"):
                k8s.request("DELETE", f"{api}/{cq['metadata']['name']}")

    def gone() -> bool:
        try:
            k8s.request("GET", f"/api/v1/namespaces/{ns}")
            return False
        except urllib.error.HTTPError as e:
            return e.code == 404

    k8s.wait_for(gone, f"namespace {ns} deleted", "kube-controller-manager", timeout=600)


def _watch_jobs(k8s: Cluster, ns: str, by_name: dict[str, Workload], total: int,
                stop: asyncio.Event) -> None:
    """Admission = Kueue unsuspends the Job; finished = the Job completes."""
    import urllib.request

    done = 0
    rv = ""
    while done < total and not stop.is_set():
        url = (f"{k8s.server}/apis/batch/v1/namespaces/{ns}/jobs?watch=1&timeoutSeconds=60"
               + (f"&resourceVersion={rv}" if rv else ""))
        with urllib.request.urlopen(urllib.request.Request(url), context=k8s._ssl(),
                                    timeout=90) as r:
            for line in r:
                ev = json.loads(line)
                obj = ev["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                w = by_name.get(obj["metadata"]["name"])
                if w is None:
                    continue
                now = time.monotonic()
                if w.admitted is None and obj["spec"].get("suspend") is False:
                    w.admitted = now
                if w.finished is None and obj.get("status", {}).get("succeeded"):
                    w.finished = now
                    w.ok = True
                    done += 1
                    if done >= total:
                        return


# ----------------------------------------------------------------------------- main
KEYS = [  # metric, label, format
    ("admissions_per_s", "admissions/s", "{:.2f}"),
    ("last_admitted_s", "time to admit the last workload (s)", "{:.1f}"),
    ("utilisation", "utilisation (admitted cpu-s / (quota x makespan))", "{:.3f}"),
    ("fairness", "fairness (Jain's index of queue progress at half the work)", "{:.3f}"),
    ("wait_small_s", "mean wait, small (s)", "{:.2f}"),
    ("wait_medium_s", "mean wait, medium (s)", "{:.2f}"),
    ("wait_large_s", "mean wait, large (s)", "{:.2f}"),
]


def spread(values: list[float], fmt: str) -> str:
    """median (min-max)"""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    """Both columns and the ratio of each run with its partner run (the same pair of the
    alternation), as medians with min-max."""
    lines = ["| metric | mlp | Kueue | mlp/Kueue, same pair |", "|---|---:|---:|---:|"]
    for key in ("workloads", "admitted", "succeeded"):
        na = sorted({int(r[key]) for r in rows["mlp"]})
        nb = sorted({int(r[key]) for r in rows["kueue"]})
        lines.append(f"| {key} per run | {'/'.join(map(str, na))} | {'/'.join(map(str, nb))} | |")
    for key, label, fmt in KEYS:
        a: list[float] = [r[key] for r in rows["mlp"]]
        b: list[float] = [r[key] for r in rows["kueue"]]
        ratios = [x / y for x, y in zip(a, b, strict=True) if y]
        lines.append(f"| {label} | {spread(a, fmt)} | {spread(b, fmt)} | "
                     f"{spread(ratios, '{:.2f}') if ratios else ''} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--cohorts", type=int, default=2)
    ap.add_argument("--queues", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="pairs; the order alternates per pair")
    ap.add_argument("--json", type=Path, help="also write every run's metrics here")
    args = ap.parse_args()
    command = "python bench/kueue_compare.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    queues, loads0 = plan(args.cohorts, args.queues, args.scale)
    total_cpu = NOMINAL * len(queues)
    nodes = {f"node-{i}": NodeShape(cpu="64", memory="256Gi", pods=500)
             for i in range(max(1, total_cpu // 64 + 1))}
    rows: dict[str, list[dict[str, float]]] = {"mlp": [], "kueue": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        k8s = start_cluster(Path(tmp) / "k8s", nodes)
        try:
            print(f"cluster ready in {time.monotonic() - t0:.1f} s; starting Kueue", flush=True)
            start_kueue(k8s, Path(tmp))
            for run in range(args.runs):
                for side in ("mlp", "kueue") if run % 2 == 0 else ("kueue", "mlp"):
                    names, loads = plan(args.cohorts, args.queues, args.scale)
                    ns = f"{side}-{run}"
                    t1 = time.monotonic()
                    if side == "mlp":
                        work = Path(tmp) / ns
                        work.mkdir()
                        res = asyncio.run(run_ours(k8s, names, loads, ns, work))
                    else:
                        res = asyncio.run(run_kueue(k8s, names, loads, ns))
                    rows[side].append(res.metrics(names))
                    print(f"run {run} {side} ({time.monotonic() - t1:.0f} s): "
                          f"{json.dumps(rows[side][-1])}", flush=True)
                    clean_up(k8s, ns, side)
        finally:
            k8s.stop()
    if args.json:
        args.json.write_text(json.dumps({"command": command, "started": started, **rows},
                                        indent=1))
    print(f"\n{command} ({started}): {len(queues)} queues in {args.cohorts} cohorts, "
          f"{len(loads0)} workloads per run, {args.runs} alternated pairs; median (min-max)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
