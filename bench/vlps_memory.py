"""Benchmark: resident bytes per id of a vlps table (dim 16, Adagrad) at 10^7 ids, against
the payload (8-byte key + embedding + accumulator): grown on demand, pre-sized, and pre-sized
over 3 shards (DenseHashTable bucket counts are powers of two: 10^7 rows need 2^24 buckets in
one table, 3 x 2^22 in three). The bare DenseHashTable of the same rows is measured too.

  .venv/bin/python bench/vlps_memory.py [--ids 10000000] [--dim 16]
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


def run(case: str, n: int, dim: int) -> dict:
    import tensorflow as tf

    import vlps

    chunk = 1_000_000
    tf.constant(0)
    before = rss()
    if case == "bare":
        width = dim * 2 + 1
        t = tf.lookup.experimental.DenseHashTable(tf.int64, tf.float32, tf.zeros([width]),
                                                  -(2**63), -(2**63) + 1)
        for i in range(0, n, chunk):
            t.insert(tf.range(i, min(n, i + chunk), dtype=tf.int64), tf.zeros([chunk, width]))
    else:
        shards = 3 if case == "presized3" else 1
        presize = -(-n // shards) if case.startswith("presized") else None
        table = vlps.EmbeddingTable("mem", dim, optimizer=vlps.Adagrad(0.05),
                                    num_shards=shards, initial_rows_per_shard=presize)
        push = tf.function(lambda ids, g: table.push(ids, g, 1))
        g = tf.zeros([chunk, dim])
        for i in range(0, n, chunk):
            push(tf.range(i, min(n, i + chunk), dtype=tf.int64), g)
    grown = rss()
    trim()
    out = {"bytes_per_id": (grown - before) / n, "trimmed_bytes_per_id": (rss() - before) / n}
    if case != "bare":
        buckets = [int(tf.size(s.main.export()[0])) for s in table.shards]
        out["buckets"] = buckets
        out["bucket_bytes_per_id"] = sum(buckets) * (8 + 4 * table.width) / n
        assert table.size() == n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--case", default="")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run(args.case, args.ids, args.dim)))
        return
    payload = 8 + 4 * 2 * args.dim
    print(f"{args.ids:,} ids, dim {args.dim}, Adagrad; payload = 8 B key + {8 * args.dim} B "
          f"embedding+accumulator = {payload} B/id (a vlps bucket also holds a 4 B step: "
          f"{payload + 4} B); RSS growth per id, one process per case; 'trimmed' = after "
          "malloc_trim(0); 'buckets' = the hash tables' bucket arrays alone")
    print("| case | B/id (RSS) | B/id trimmed | x payload (trimmed) | B/id buckets | buckets |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    names = {"bare": "bare DenseHashTable, same row width, grown on demand",
             "vlps": "vlps, 1 shard, grown on demand",
             "presized": "vlps, 1 shard, initial_rows_per_shard=ids",
             "presized3": "vlps, 3 shards, initial_rows_per_shard=ids/3"}
    for case, name in names.items():
        out = subprocess.run([sys.executable, __file__, "--case", case, "--ids", str(args.ids),
                              "--dim", str(args.dim)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        bb = f"{r['bucket_bytes_per_id']:.1f}" if "buckets" in r else ""
        bk = " + ".join(f"2^{b.bit_length() - 1}" for b in r.get("buckets", []))
        print(f"| {name} | {r['bytes_per_id']:.1f} | {r['trimmed_bytes_per_id']:.1f} | "
              f"{r['trimmed_bytes_per_id'] / payload:.2f} | {bb} | {bk} |")


if __name__ == "__main__":
    main()
