"""Benchmark: resident bytes per id of a vlps table (dim 16, Adagrad) at 10^7 ids, against
the payload (8-byte key + embedding + accumulator): grown on demand, pre-sized, and pre-sized
over 3 shards (DenseHashTable bucket counts are powers of two: 10^7 rows need 2^24 buckets in
one table, 3 x 2^22 in three). The bare DenseHashTable of the same rows is measured too.

Rows are created by pushes of `--batch` ids (default 65,536, the batch of bench/vlps_ops.py);
the 3-shard table is also measured with 1,000,000-id pushes and with TensorFlow's oneDNN
allocator off (TF_ENABLE_ONEDNN_OPTS=0), each in its own process. RSS is read before the
table is created and after the last push (the 3-shard cases go on with `--updates` pushes
of existing ids, as training does), once the harness's own tensors (ids, gradients) are
dropped; "at creation" is RSS right after the (pre-sized) table is constructed.

  .venv/bin/python bench/vlps_memory.py [--ids 10000000] [--dim 16] [--batch 65536]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS is the steady state, not the
    high-water mark of freed doubling arrays and insert temporaries."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def run(case: str, n: int, dim: int, batch: int, updates: int = 0) -> dict:
    import tensorflow as tf

    import vlps

    tf.constant(0)
    before = rss()
    out: dict = {}
    if case == "bare":
        width = dim * 2 + 1
        t = tf.lookup.experimental.DenseHashTable(tf.int64, tf.float32, tf.zeros([width]),
                                                  -(2**63), -(2**63) + 1)
        out["created_bytes_per_id"] = (rss() - before) / n
        g = tf.zeros([batch, width])
        for i in range(0, n, batch):
            t.insert(tf.range(i, min(n, i + batch), dtype=tf.int64), g[: min(n, i + batch) - i])
    else:
        shards = 3 if case == "presized3" else 1
        presize = -(-n // shards) if case.startswith("presized") else None
        table = vlps.EmbeddingTable("mem", dim, optimizer=vlps.Adagrad(0.05),
                                    num_shards=shards, initial_rows_per_shard=presize)
        out["created_bytes_per_id"] = (rss() - before) / n
        push = tf.function(lambda ids, g: table.push(ids, g, 1))
        g = tf.zeros([batch, dim])
        for i in range(0, n, batch):
            push(tf.range(i, min(n, i + batch), dtype=tf.int64), g[: min(n, i + batch) - i])
        # Training steps after the fill: pushes of `batch` existing ids (a window of ids;
        # shards take ids by hash, so each shard gets a third of them).
        for u in range(updates):
            start = (u * 7919 * batch) % max(1, n - batch)
            push(tf.range(start, start + min(batch, n), dtype=tf.int64), g[: min(batch, n)])
    del g  # the harness's gradient batch is not table memory
    out["bytes_per_id"] = (rss() - before) / n
    trim()
    out["trimmed_bytes_per_id"] = (rss() - before) / n
    if case != "bare":
        buckets = [s.buckets() for s in table.shards]
        out["buckets"] = buckets
        out["bucket_bytes_per_id"] = sum(buckets) * (8 + 4 * table.width) / n
        if presize is not None:  # pre-sizing must have avoided every rehash
            assert buckets == [table.initial_buckets] * shards, (buckets, table.initial_buckets)
        assert table.size() == n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=65_536, help="ids per push")
    ap.add_argument("--updates", type=int, default=10,
                    help="pushes of existing ids after the fill (3-shard cases)")
    ap.add_argument("--case", default="")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run(args.case, args.ids, args.dim, args.batch, args.updates)))
        return
    payload = 8 + 4 * 2 * args.dim
    print(f"{args.ids:,} ids, dim {args.dim}, Adagrad; payload = 8 B key + {8 * args.dim} B "
          f"embedding+accumulator = {payload} B/id (a vlps bucket also holds a 4 B step: "
          f"{payload + 4} B); RSS growth per id, one process per case; 'trimmed' = after "
          "malloc_trim(0); 'buckets' = the hash tables' bucket arrays alone")
    print("| case | ids/push | pushes of existing ids | B/id at creation | B/id (RSS) | "
          "B/id trimmed | x payload (trimmed) | B/id buckets | buckets |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    b = args.batch
    k = args.updates
    cases = [("bare", b, 0, {}, "bare DenseHashTable, same row width, grown on demand"),
             ("vlps", b, 0, {}, "vlps, 1 shard, grown on demand"),
             ("presized", b, 0, {}, "vlps, 1 shard, initial_rows_per_shard=ids"),
             ("presized3", b, k, {}, "vlps, 3 shards, initial_rows_per_shard=ids/3"),
             ("presized3", 1_000_000, k, {}, "vlps, 3 shards, ids/3, 1M-id pushes"),
             ("presized3", b, k, {"TF_ENABLE_ONEDNN_OPTS": "0"},
              "vlps, 3 shards, ids/3, TF_ENABLE_ONEDNN_OPTS=0")]
    for case, batch, updates, env, name in cases:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--ids", str(args.ids),
                              "--dim", str(args.dim), "--batch", str(batch),
                              "--updates", str(updates)],
                             capture_output=True, text=True, env={**os.environ, **env})
        if out.returncode != 0:
            raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        bb = f"{r['bucket_bytes_per_id']:.1f}" if "buckets" in r else ""
        bk = " + ".join(f"2^{x.bit_length() - 1}" for x in r.get("buckets", []))
        print(f"| {name} | {batch:,} | {updates} | {r['created_bytes_per_id']:.1f} | "
              f"{r['bytes_per_id']:.1f} | {r['trimmed_bytes_per_id']:.1f} | "
              f"{r['trimmed_bytes_per_id'] / payload:.2f} | {bb} | {bk} |", flush=True)


if __name__ == "__main__":
    main()
