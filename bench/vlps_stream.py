"""Bounded memory over a stream: a CTR model trained on a stream where `--new` of every batch's
ids were never seen before, with and without eviction (TTL + a per-shard cap).

The stream: `--batch` samples x 26 fields; each id is new (never seen before, never seen
again) with probability `--new`, else drawn Zipf(1.2) from a pool of `--pool` recurring ids.
Unbounded, the table grows by batch x 26 x new rows per step; the run is long enough for it to
more than double. Bounded: `Eviction(ttl_steps, max_rows_per_shard)` with
`Trainer(evict_every)`. Each case runs in its own process (RSS is per process); the table
prints rows and RSS every `--every` steps, and the eviction cost: time in eviction passes per
training step, against the step time.

  .venv/bin/python bench/vlps_stream.py [--steps 600] [--batch 1024] [--new 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stream(args: argparse.Namespace, start: int = 0):
    import tensorflow as tf

    fields = 26

    def batch(i):
        seed = tf.stack([tf.constant(11, tf.int64), i])
        u = tf.random.stateless_uniform([args.batch, fields], seed, 1e-7, 1.0, tf.float64)
        rank = tf.cast(tf.minimum(tf.floor(tf.pow(u, -5.0)), args.pool - 1.0), tf.int64)
        fresh = tf.random.stateless_uniform([args.batch, fields], seed + 1) < args.new
        # New ids: unique per (step, position), above the pool's id range.
        new_ids = (args.pool + i * args.batch * fields
                   + tf.reshape(tf.range(args.batch * fields, dtype=tf.int64),
                                [args.batch, fields]))
        cat = tf.where(fresh, new_ids, rank * fields + tf.range(fields, dtype=tf.int64))
        num = tf.random.stateless_normal([args.batch, 13], seed + 2)
        label = tf.cast(tf.random.stateless_uniform([args.batch, 1], seed + 3) < 0.25,
                        tf.float32)
        return {"cat": cat, "num": num}, label

    return tf.data.Dataset.range(start, 1 << 40).map(batch).prefetch(2)


def run(args: argparse.Namespace, bounded: bool) -> dict:
    import keras

    import vlps
    from vlps.models import wide_deep

    eviction = (vlps.Eviction(ttl_steps=args.ttl, max_rows_per_shard=args.cap)
                if bounded else None)
    trainer = vlps.Trainer(
        lambda: wide_deep(dim=16, hidden=(64,), eviction=eviction, num_shards=args.shards),
        loss=keras.losses.BinaryCrossentropy(), report_every=10**9,
        evict_every=args.evict_every if bounded else None, cluster=vlps.ClusterInfo())
    passes: list[float] = []
    original = trainer.evict

    def timed_evict(step=None):
        t0 = time.perf_counter()
        out = original(step)
        passes.append(time.perf_counter() - t0)
        return out

    trainer.evict = timed_evict  # type: ignore[method-assign]
    trace, train_seconds = [], 0.0
    for step in range(args.every, args.steps + 1, args.every):
        t0 = time.perf_counter()
        trainer.fit(lambda ctx=None, s=step: stream(args, s - args.every), steps=step)
        train_seconds += time.perf_counter() - t0
        deep = trainer.tables[0]
        trace.append({"step": step, "rows": deep.size(), "rss_mib": rss_mib()})
    c = trainer.tables[0].counters()
    return {"trace": trace, "counters": c, "train_seconds": train_seconds,
            "evict_seconds": sum(passes), "passes": passes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=50, help="steps between rows of the table")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--new", type=float, default=0.05, help="share of never-seen ids per batch")
    ap.add_argument("--pool", type=int, default=200_000, help="recurring ids")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--ttl", type=int, default=100, help="Eviction.ttl_steps")
    ap.add_argument("--cap", type=int, default=150_000, help="Eviction.max_rows_per_shard")
    ap.add_argument("--evict-every", type=int, default=25)
    ap.add_argument("--case", default="")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run(args, args.case == "bounded")), flush=True)
        return
    res = {}
    argv = sys.argv[1:]
    for case in ("unbounded", "bounded"):
        out = subprocess.run([sys.executable, __file__, *argv, "--case", case],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
        res[case] = json.loads(out.stdout.strip().splitlines()[-1])
    new_per_step = args.batch * 26 * args.new
    print(f"stream: batch {args.batch} x 26 fields, {args.new:.0%} of ids new each step "
          f"(~{new_per_step:,.0f} new ids/step), the rest Zipf over {args.pool:,} recurring "
          f"ids; Wide&Deep dim 16, Adagrad, {args.shards} shards. bounded = Eviction(ttl_steps="
          f"{args.ttl}, max_rows_per_shard={args.cap:,}) every {args.evict_every} steps")
    print("| step | rows, unbounded | RSS MiB, unbounded | rows, bounded | RSS MiB, bounded |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for u, b in zip(res["unbounded"]["trace"], res["bounded"]["trace"], strict=True):
        print(f"| {u['step']} | {u['rows']:,} | {u['rss_mib']:,.0f} | {b['rows']:,} | "
              f"{b['rss_mib']:,.0f} |")
    b = res["bounded"]
    c = b["counters"]
    # The first pass traces the eviction graph: the median pass is the steady cost.
    per_pass = statistics.median(b["passes"])
    per_step = per_pass / args.evict_every
    step_time = (b["train_seconds"] - b["evict_seconds"]) / args.steps
    print(f"bounded: created {c['created']:,}, evicted by TTL {c['evicted_ttl']:,}, by cap "
          f"{c['evicted_cap']:,}; eviction {1e3 * per_pass:.0f} ms "
          f"per pass (median) = {1e3 * per_step:.1f} ms per training step "
          f"({per_step / step_time:.1%} of the {1e3 * step_time:.0f} ms step)")


if __name__ == "__main__":
    main()
