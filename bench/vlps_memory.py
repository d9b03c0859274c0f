"""Benchmark: resident bytes per id of a vlps table (dim 16, Adagrad) at 10^7 ids, against
the payload (8-byte key + embedding + accumulator), for a default-grown table and a pre-sized
one; the bare DenseHashTable of the same rows is the baseline measured in the same run.

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
        presize = n if case == "presized" else None
        table = vlps.EmbeddingTable("mem", dim, optimizer=vlps.Adagrad(0.05),
                                    initial_rows_per_shard=presize)
        push = tf.function(lambda ids, g: table.push(ids, g, 1))
        g = tf.zeros([chunk, dim])
        for i in range(0, n, chunk):
            push(tf.range(i, min(n, i + chunk), dtype=tf.int64), g)
        assert table.size() == n
    return {"bytes_per_id": (rss() - before) / n}


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
          f"embedding+accumulator = {payload} B/id; RSS growth per id, one process per case")
    print(f"{'case':<52} {'B/id':>7} {'x payload':>10} {'x bare':>7}")
    res = {}
    for case in ("bare", "vlps", "presized"):
        out = subprocess.run([sys.executable, __file__, "--case", case, "--ids", str(args.ids),
                              "--dim", str(args.dim)], capture_output=True, text=True)
        res[case] = json.loads(out.stdout.strip().splitlines()[-1])["bytes_per_id"]
    names = {"bare": "bare DenseHashTable, same row width [baseline]",
             "vlps": "vlps EmbeddingTable, grown on demand",
             "presized": "vlps EmbeddingTable, initial_rows_per_shard=ids"}
    for case, b in res.items():
        print(f"{names[case]:<52} {b:>7.1f} {b / payload:>10.2f} {b / res['bare']:>7.2f}")


if __name__ == "__main__":
    main()
