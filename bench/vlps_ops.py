"""Benchmark: vlps pull+push throughput against the bare DenseHashTable ceiling.

For batches of 65,536 Zipf-distributed ids (dim 16 and 64, Adagrad) it times
  ceiling   a bare tf.lookup.experimental.DenseHashTable lookup + insert of the batch
  vlps      EmbeddingTable: unique -> pull -> push (Adagrad on the rows), 1 shard in-process
  vlps-grpc the same with the table on a ps task reached over localhost gRPC (not --no-grpc)
(ids/s counts the batch's 65,536 ids for every case) and prints ids/s medians with the ratio to
the ceiling measured in the same rounds (cases alternate, so noise hits them alike).

  .venv/bin/python bench/vlps_ops.py [--batches 20] [--repeats 5] [--dims 16,64] [--no-grpc]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

BATCH = 65_536


def zipf_batches(n: int, seed: int = 0, a: float = 1.2) -> list[tf.Tensor]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ranks = np.minimum(rng.pareto(a - 1.0, BATCH) + 1.0, 1e9).astype(np.int64)
        out.append(tf.constant((ranks * 2654435761) % 10**9, tf.int64))
    return out


def one_pass(fn, batches: list[tf.Tensor]) -> float:
    t0 = time.perf_counter()
    for b in batches:
        out = fn(b)
    int(out)  # the last step has finished
    return len(batches) * BATCH / (time.perf_counter() - t0)


def interleaved(fns: dict[str, object], batches: list[tf.Tensor], repeats: int) -> dict:
    """Rates of several step functions timed in alternating passes over the same batches
    (one pass each per round), so machine noise hits all of them alike. The first pass of
    each (tracing, growing its table to hold every id of the batches) is not timed."""
    for fn in fns.values():
        one_pass(fn, batches)
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            rates[k].append(one_pass(fn, batches))
    return rates


def ceiling_fn(dim: int, device: str | None):
    with tf.device(device or "/cpu:0"):
        table = tf.lookup.experimental.DenseHashTable(
            tf.int64, tf.float32, default_value=tf.zeros([dim]), empty_key=-(2**63),
            deleted_key=-(2**63) + 1)

    @tf.function
    def step(ids):
        rows = table.lookup(ids)
        table.insert(ids, rows + 0.01)
        return tf.size(ids)

    return step


def vlps_fn(dim: int, placement=None, name: str = ""):
    import vlps
    from vlps.placement import Placement, placement_scope

    with placement_scope(placement or Placement()):
        table = vlps.EmbeddingTable(f"bench{dim}{name}", dim, optimizer=vlps.Adagrad(0.05))
    grad = tf.fill([BATCH, dim], 0.01)

    @tf.function
    def step(ids):
        unique, _ = tf.unique(ids)
        emb = table.pull(unique)
        table.push(unique, grad[: tf.shape(unique)[0]] + 0 * emb, 1)
        return tf.size(unique)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dims", default="16,64")
    ap.add_argument("--no-grpc", action="store_true")
    args = ap.parse_args()
    batches = zipf_batches(args.batches)
    uniq = statistics.median(int(tf.size(tf.unique(b)[0])) for b in batches)
    grpc_devices = None
    if not args.no_grpc:
        import socket

        from vlps.placement import Placement

        ports = []
        for _ in range(2):
            s = socket.socket()
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
            s.close()
        spec = tf.train.ClusterSpec({"chief": [f"localhost:{ports[0]}"],
                                     "ps": [f"localhost:{ports[1]}"]})
        tf.distribute.Server(spec, job_name="ps", task_index=0, protocol="grpc", start=True)
        tf.config.experimental_connect_to_cluster(spec, job_name="chief")
        grpc_devices = Placement(["/job:ps/replica:0/task:0/device:CPU:0"])
    print(f"batch {BATCH} Zipf(1.2) ids over 1e9, ~{uniq:.0f} unique per batch; "
          f"{args.batches} batches per pass; {args.repeats} rounds, each timing one pass of "
          "every case in turn; medians; ratio = median of the per-round ratios")
    print("| dim | case | ids/s | x ceiling |")
    print("| ---: | --- | ---: | ---: |")
    for dim in (int(d) for d in args.dims.split(",")):
        fns = {"ceiling: DenseHashTable lookup+insert": ceiling_fn(dim, None),
               "vlps pull+push (Adagrad), in-process": vlps_fn(dim)}
        if grpc_devices is not None:
            fns["ceiling over localhost gRPC"] = ceiling_fn(dim, grpc_devices.ps_devices[0])
            fns["vlps pull+push over localhost gRPC"] = vlps_fn(dim, grpc_devices, "g")
        rates = interleaved(fns, batches, args.repeats)
        base = rates["ceiling: DenseHashTable lookup+insert"]
        for name, r in rates.items():
            ratio = statistics.median(x / b for x, b in zip(r, base, strict=True))
            print(f"| {dim} | {name} | {statistics.median(r):,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
