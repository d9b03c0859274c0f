"""Benchmark: a Wide&Deep CTR model on synthetic Criteo-shaped data (26 Zipf categorical fields
over a 10^9 id space, 13 numeric), vlps against what users pick instead.

Every case trains the same model (deep table dim 16 + wide table dim 1, MLP 256-128-1, Adagrad
0.05 everywhere) on the same batches 0..steps-1 of `vlps.data.synthetic_ctr(batch, seed=7)`,
each batch exactly once, and is scored on the same held-out split of the same generating model.
Each case runs in its own process(es), so peak RSS is per case:

  vlps      vlps.Trainer in one process (local tables)
  cluster   vlps.Trainer as chief + 2 ps + 1 worker on localhost (4 processes running this
            file with TF_CONFIG); peak RSS is the sum of the 4 processes' peaks (VmHWM)
  hashed    the baseline: keras.layers.Hashing(bins) + keras.layers.Embedding, Keras Adagrad,
            fit(); bins chosen so its tables take the same bytes as vlps's hash tables at the end
            of the vlps run (buckets x (8 B key + row)), and again with 1/8 of those bins
  tfra      TensorFlow Recommenders-Addons 0.8.1 in its own venv (bench/vlps_tfra_peer.py run by
            $VLPS_TFRA_PYTHON, default /work/tfra-venv/bin/python, with TF_USE_LEGACY_KERAS=1)
Throughput: the first `--warm` steps are untimed, then 5 windows; the median window is
reported. AUC is exact (rank based) over --test-batches x 4096 held-out samples; the "oracle"
row scores with the generating model's true probability, the "numeric only" row with its
numeric term alone (the best any model ignoring the ids can do).

  .venv/bin/python bench/vlps_ctr.py [--steps 210] [--batch 4096] [--dim 16] [--no-cluster]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from vlps_tfra_peer import auc, fingerprint  # noqa: E402

from mlp.core.ports import free_ports  # noqa: E402

DEFAULT_TFRA = "/work/tfra-venv/bin/python"
BIN_BYTES_PER_DIM = 2 * 4  # a Keras Embedding row: float32 value + float32 Adagrad accumulator


def schedule(args: argparse.Namespace) -> tuple[int, int]:
    chunk = (args.steps - args.warm) // 5
    return chunk, args.warm + 5 * chunk


def dataset_fn(args: argparse.Namespace):
    from vlps.data import synthetic_ctr

    return lambda ctx=None: synthetic_ctr(args.batch, seed=7)


def evaluate(predict, args: argparse.Namespace) -> dict:
    import numpy as np
    import tensorflow as tf

    from vlps.data import generating_logit, synthetic_ctr

    labels, scores, oracle, numeric = [], [], [], []
    for features, y in synthetic_ctr(4096, seed=7, split="test", num_batches=args.test_batches):
        scores.append(np.asarray(predict(features)).ravel())
        labels.append(y.numpy().ravel())
        oracle.append(generating_logit(features).numpy())
        no_ids = {"cat": tf.zeros_like(features["cat"]), "num": features["num"]}
        # generating_logit's id term for id 0 is one constant; ranking is by the numeric term.
        numeric.append(generating_logit(no_ids).numpy())
    y = np.concatenate(labels)
    return {"auc": auc(y, np.concatenate(scores)), "oracle_auc": auc(y, np.concatenate(oracle)),
            "numeric_auc": auc(y, np.concatenate(numeric))}


def table_bytes(tables) -> int:
    """Bytes the hash tables hold: buckets x (8-byte key + float32 row), side tables aside."""
    import tensorflow as tf

    total = 0
    for t in tables:
        for s in t.shards:
            buckets = int(tf.size(s.main.export()[0]))
            total += buckets * (8 + 4 * t.width)
    return total


def run_vlps(args: argparse.Namespace) -> dict:
    """One process, or the chief of a cluster when TF_CONFIG is set."""
    import keras

    import vlps
    from vlps.models import wide_deep

    chunk, _ = schedule(args)
    make_ds = dataset_fn(args)
    def opt() -> vlps.Adagrad:
        return vlps.Adagrad(args.lr, initial_accumulator_value=args.init_acc)

    trainer = vlps.Trainer(lambda: wide_deep(dim=args.dim, optimizer=opt()),
                           loss=keras.losses.BinaryCrossentropy(),
                           optimizer=opt(), report_every=10**9,
                           cluster=vlps.ClusterInfo() if args.case == "vlps" else None)
    trainer.build(make_ds)
    step_fn = trainer._make_step_fn()
    coord = trainer.coordinator
    if coord is not None:
        strategy = trainer.strategy
        assert strategy is not None
        it = iter(coord.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(make_ds)))
    else:
        it = iter(make_ds())

    def run(n: int) -> None:
        result = None
        for _ in range(n):
            result = coord.schedule(step_fn, args=(it,)) if coord else step_fn(it)
        if coord:
            coord.join()
        else:
            float(result)

    run(args.warm)
    windows = []
    for _ in range(5):
        t0 = time.perf_counter()
        run(chunk)
        windows.append(chunk * args.batch / (time.perf_counter() - t0))
    out = {"samples_per_s": statistics.median(windows), "windows": windows,
           "steps": int(trainer.global_step.numpy()), **evaluate(trainer.predict, args),
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out["rows"] = {t.name: t.size() for t in trainer.tables}
    if coord is None:
        out["table_bytes"] = table_bytes(trainer.tables)  # after the peak-RSS reading
    first = next(iter(make_ds()))
    out["data"] = fingerprint(*first)
    return out


def run_hashed(args: argparse.Namespace) -> dict:
    import keras

    from vlps.models import hashed_wide_deep

    chunk, total = schedule(args)
    model = hashed_wide_deep(num_bins=args.bins, dim=args.dim)
    model.compile(optimizer=keras.optimizers.Adagrad(
                      args.lr, initial_accumulator_value=args.init_acc),
                  loss=keras.losses.BinaryCrossentropy())
    marks: dict[int, float] = {}
    ends = {args.warm + k * chunk - 1 for k in range(6)}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in ends:
                marks[batch] = time.perf_counter()

    ds = dataset_fn(args)()
    model.fit(ds.take(total), epochs=1, verbose=0, callbacks=[Timer()])
    points = [marks[e] for e in sorted(ends)]
    windows = [chunk * args.batch / (b - a) for a, b in itertools.pairwise(points)]
    out = {"samples_per_s": statistics.median(windows), "windows": windows, "steps": total,
           "bins": args.bins, **evaluate(lambda x: model(x, training=False), args),
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out["data"] = fingerprint(*next(iter(ds)))
    return out


# -- process plumbing ---------------------------------------------------------------------
def common_args(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--warm", str(args.warm), "--batch", str(args.batch),
            "--dim", str(args.dim), "--test-batches", str(args.test_batches),
            "--lr", str(args.lr), "--init-acc", str(args.init_acc)]


def last_json(out: subprocess.CompletedProcess, what: str) -> dict:
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def child(case: str, args: argparse.Namespace, bins: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--bins", str(bins), *common_args(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    return last_json(out, f"case {case}")


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cluster(args: argparse.Namespace) -> dict:
    """chief + 2 ps + 1 worker on localhost, every process running this file."""
    chief, ps0, ps1, w0 = free_ports(4)
    spec = {"chief": [f"localhost:{chief}"], "ps": [f"localhost:{ps0}", f"localhost:{ps1}"],
            "worker": [f"localhost:{w0}"]}
    servers: list[subprocess.Popen] = []

    def env(task: str, index: int) -> dict[str, str]:
        tf_config = {"cluster": spec, "task": {"type": task, "index": index}}
        return {**os.environ, "TF_CONFIG": json.dumps(tf_config)}

    try:
        for task, index in (("ps", 0), ("ps", 1), ("worker", 0)):
            servers.append(subprocess.Popen(
                [sys.executable, __file__, "--case", "server"], env=env(task, index),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        out = subprocess.run(
            [sys.executable, __file__, "--case", "chief", *common_args(args)],
            env=env("chief", 0), capture_output=True, text=True, timeout=3600)
        for p in servers:
            if p.poll() is not None:
                raise RuntimeError(f"cluster task pid {p.pid} exited early (rc {p.returncode})")
        result = last_json(out, "cluster chief")
        per_task = {"chief": result["peak_rss_mib"]}
        for (task, index), p in zip((("ps", 0), ("ps", 1), ("worker", 0)), servers,
                                    strict=True):
            per_task[f"{task}:{index}"] = peak_rss_mib(p.pid)
        result["peak_rss_per_task_mib"] = per_task
        result["peak_rss_mib"] = sum(per_task.values())
        return result
    finally:
        for p in servers:  # only the process groups this function started
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in servers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def tfra(args: argparse.Namespace) -> dict | str:
    python = os.environ.get("VLPS_TFRA_PYTHON", DEFAULT_TFRA)
    if not os.path.exists(python):
        return (f"not run: no TFRA interpreter at {python} (create its venv and/or set "
                "VLPS_TFRA_PYTHON; see docs/vlps.md)")
    peer = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vlps_tfra_peer.py")
    out = subprocess.run([python, peer, *common_args(args)], capture_output=True, text=True,
                         timeout=3600, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    try:
        return last_json(out, "TFRA peer")
    except RuntimeError as e:
        return f"failed: {str(e).splitlines()[0]} (see stderr by running the peer by hand)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=210)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--test-batches", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.05, help="Adagrad learning rate (all cases)")
    ap.add_argument("--init-acc", type=float, default=0.0,
                    help="Adagrad initial_accumulator_value (all cases); with Keras's 0.1 the "
                         "rows (mean-loss gradients ~1e-4) hardly move and no model learns "
                         "the per-id effects")
    ap.add_argument("--bins", type=int, default=0)
    ap.add_argument("--no-cluster", action="store_true")
    ap.add_argument("--no-tfra", action="store_true")
    ap.add_argument("--json", default="", help="also write all results to this file")
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case == "server":
        import vlps

        vlps.run_server_if_needed()  # serves until SIGTERM
        return
    if args.case:
        fn = run_hashed if args.case == "hashed" else run_vlps
        print(json.dumps({"case": args.case, **fn(args)}), flush=True)
        return

    chunk, total = schedule(args)
    res: dict[str, dict | str] = {}
    v = res["vlps"] = child("vlps", args)
    same = max(1024, v["table_bytes"] // ((args.dim + 1) * BIN_BYTES_PER_DIM))
    res["hashed"] = child("hashed", args, same)
    res["hashed8"] = child("hashed", args, max(1024, same // 8))
    res["hashed64"] = child("hashed", args, max(1024, same // 64))
    res["cluster"] = "not run (--no-cluster)" if args.no_cluster else cluster(args)
    res["tfra"] = "not run (--no-tfra)" if args.no_tfra else tfra(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)

    rows = sum(v["rows"].values()) // 2
    print(f"Wide&Deep (dim {args.dim} + wide, MLP 256-128-1, Adagrad lr {args.lr} "
          f"initial_accumulator {args.init_acc}), batch {args.batch}, "
          f"{total} steps ({args.warm} untimed + 5 windows of {chunk}; median window), 26 "
          "Zipf(1.2) fields over 1e9 ids + 13 numeric, seed 7; AUC on "
          f"{args.test_batches * 4096:,} held-out samples; data fingerprint {v['data']}")
    print(f"vlps ids seen: {rows:,} per table; vlps hash-table bytes {v['table_bytes']:,} = "
          f"same memory as {same:,} Keras bins ({(args.dim + 1) * BIN_BYTES_PER_DIM} B/bin)")
    h = res["hashed"]
    assert isinstance(h, dict)
    print("| case | samples/s | x baseline | peak RSS MiB | AUC |")
    print("| --- | ---: | ---: | ---: | ---: |")
    names = {"hashed": f"Keras Hashing({same:,})+Embedding, same memory [baseline]",
             "hashed8": f"Keras Hashing({max(1024, same // 8):,})+Embedding, 1/8 memory",
             "hashed64": f"Keras Hashing({max(1024, same // 64):,})+Embedding, 1/64 memory",
             "vlps": "vlps, one process",
             "cluster": "vlps, chief + 2 ps + 1 worker (localhost)",
             "tfra": "TFRA 0.8.1 (TF 2.16.2), one process"}
    for key, name in names.items():
        r = res[key]
        if isinstance(r, str):
            print(f"| {name} | {r} | | | |")
            continue
        note = ""
        if r.get("data") not in (None, v["data"]):
            note = f" (DIFFERENT DATA: fingerprint {r['data']})"
        print(f"| {name}{note} | {r['samples_per_s']:,.0f} | "
              f"{r['samples_per_s'] / h['samples_per_s']:.2f} | {r['peak_rss_mib']:,.0f} | "
              f"{r['auc']:.4f} |")
    print(f"| oracle: the generating model's true probability | | | | {v['oracle_auc']:.4f} |")
    print(f"| numeric features only (true numeric term) | | | | {v['numeric_auc']:.4f} |")
    c = res["cluster"]
    if isinstance(c, dict):
        per = ", ".join(f"{k} {m:,.0f}" for k, m in c["peak_rss_per_task_mib"].items())
        print(f"cluster peak RSS per task (MiB): {per}")
    t = res["tfra"]
    if isinstance(t, dict):
        print(f"TFRA: {t['versions']}; vlps one process / TFRA samples/s = "
              f"{v['samples_per_s'] / t['samples_per_s']:.2f} (target >= 1)")


if __name__ == "__main__":
    main()
