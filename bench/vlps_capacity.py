"""Capacity plan: how many ps tasks, how much memory per ps and how big and slow a full
checkpoint are for 10^8, 10^9 and 10^10 ids at dim 16 and 64 (Adagrad), extrapolated from
measurements on this machine.

Measured here (one process): a table of `--ids` rows (3 shards pre-sized to ids/3, filled by
pushes of 65,536 ids) is saved as a full vlps checkpoint (twice; the second is timed); the
files' bytes per row and the write throughput (bytes/s, one process writing its shards one
after another) are measured at dim 16 and dim 64. Resident bytes per id come from
bench/vlps_memory.py (pass them with --bytes-per-id, measured at 10^7 ids and at the largest
size this machine holds).

Assumptions (stated in the table's header): a ps task holds its shards pre-sized (load
~0.6-0.8 of power-of-two buckets, as measured), plus `--headroom` of its memory free for push
temporaries and for a checkpoint, whose export copies a shard's rows once; every ps writes its
own shards in parallel at the per-process throughput measured here (so the storage must take
ps count x that rate); resident bytes per id at dim 64 = the dim-16 measurement scaled by the
row payload (the bucket arrays dominate).

  .venv/bin/python bench/vlps_capacity.py --bytes-per-id 199.2 [--ids 2000000]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure_checkpoint(n: int, dim: int) -> tuple[float, float]:
    """(bytes per row on disk, bytes/s written) of a full checkpoint of n rows."""
    import tensorflow as tf

    import vlps
    from vlps import checkpoint

    table = vlps.EmbeddingTable(f"cap{dim}", dim, optimizer=vlps.Adagrad(0.05), num_shards=3,
                                initial_rows_per_shard=-(-n // 3))
    push = tf.function(lambda ids, g: table.push(ids, g, 1))
    g = tf.zeros([65_536, dim])
    for i in range(0, n, 65_536):
        m = min(n, i + 65_536) - i
        push(tf.range(i, i + m, dtype=tf.int64), g[:m])
    warm, root = tempfile.mkdtemp(prefix="vlps-cap-"), tempfile.mkdtemp(prefix="vlps-cap-")
    try:
        checkpoint.save(warm, 1, [table], {})  # traces the save
        t0 = time.perf_counter()
        path = checkpoint.save(root, 1, [table], {}, incremental=False)
        seconds = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    finally:
        shutil.rmtree(warm, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return size / n, size / seconds


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} EB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=2_000_000, help="rows for the checkpoint timing")
    ap.add_argument("--bytes-per-id", type=float, required=True,
                    help="resident bytes per id at dim 16 (bench/vlps_memory.py)")
    ap.add_argument("--ps-memory-gib", type=float, default=64.0, help="memory of one ps task")
    ap.add_argument("--headroom", type=float, default=0.5,
                    help="share of a ps's memory kept free (push temporaries, export copy)")
    args = ap.parse_args()
    measured = {dim: measure_checkpoint(args.ids, dim) for dim in (16, 64)}
    payload = {dim: 8 + 4 * (2 * dim + 1) for dim in (16, 64)}
    per_id = {16: args.bytes_per_id,
              64: args.bytes_per_id * payload[64] / payload[16]}
    usable = args.ps_memory_gib * 2**30 * (1 - args.headroom)
    print(f"measured: full checkpoint of {args.ids:,} rows: dim 16 {measured[16][0]:.1f} B/row "
          f"at {human(measured[16][1])}/s, dim 64 {measured[64][0]:.1f} B/row at "
          f"{human(measured[64][1])}/s (one process); resident {per_id[16]:.1f} B/id at dim 16 "
          f"(bench/vlps_memory.py), {per_id[64]:.1f} B/id at dim 64 (scaled by payload "
          f"{payload[16]} -> {payload[64]} B)")
    print(f"assumed: {args.ps_memory_gib:g} GiB per ps, {args.headroom:.0%} of it kept free; "
          "each ps writes its shards in parallel at the measured per-process rate")
    print("| ids | dim | resident | ps tasks | table memory per ps | checkpoint size | "
          "checkpoint time |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for exp in (8, 9, 10):
        n = 10**exp
        for dim in (16, 64):
            total = n * per_id[dim]
            ps = max(1, math.ceil(total / usable))
            size = n * measured[dim][0]
            seconds = size / (measured[dim][1] * ps)
            print(f"| 10^{exp} | {dim} | {human(total)} | {ps:,} | {human(total / ps)} | "
                  f"{human(size)} | {seconds / 60:,.1f} min |")


if __name__ == "__main__":
    main()
