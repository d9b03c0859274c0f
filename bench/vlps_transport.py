"""The transport's price: one training step's bytes moved between 2 ps tasks and 1 worker on
localhost, with no model math, against the same ops in one process.

What a cluster step of bench/vlps_cluster.py moves, per ps task and step: the batch's unique
ids of its shard (int64) to the ps, their rows' values (float32, the table's row width) back to
the worker, their gradients to the ps, and its half of the packed dense variables each way.
The sizes come from the README's model and data (Wide&Deep, dim 16 + wide, 26 fields, MLP
256-128-1): the unique ids of the data's first batch and the model's trainable parameters.
Each step here reads those tensors on the ps, touches them on the worker (one multiply) and
assigns them back on the ps, with the data dependencies of a real step (a step's pull waits
for the previous step's push), `--steps` steps written out per call as `vlps.Trainer` does.
The "one process" row runs the same function on local variables (the same reads, multiplies
and assigns, nothing moved). Alternated rounds, medians; CPU from /proc for every process.

  .venv/bin/python bench/vlps_transport.py [--batch 4096] [--rounds 5] [--steps 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from mlp.core.ports import free_ports

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def step_sizes(batch: int, fields: int, dim: int) -> tuple[int, int, int]:
    """(unique ids in the first batch, table row width, dense trainable parameters)."""
    import numpy as np

    from vlps.data import synthetic_ctr
    from vlps.models import wide_deep

    features, _ = next(iter(synthetic_ctr(batch, seed=7, num_fields=fields)))
    unique = int(np.unique(features["cat"].numpy()).size)
    model = wide_deep(dim=dim, num_fields=fields)
    model(features)  # builds the dense variables
    dense = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return unique, dim + 1, dense


def make_fn(tf: Any, rows: list[Any], dense: list[Any], ids: Any, steps: int) -> Any:
    def one(k: Any) -> None:
        pulled, values = [], []
        for r, d in zip(rows, dense, strict=True):
            with tf.device(r.device):  # on the ps: the ids arrive, the rows and dense leave
                seen = tf.reduce_sum(tf.identity(ids) + k)
                pulled.append(r.read_value() + tf.cast(seen % 2, tf.float32))
                values.append(d.read_value())
        for r, d, p, v in zip(rows, dense, pulled, values, strict=True):
            grads, dense_grads = p * 0.5, v * 0.5  # on the worker
            with tf.device(r.device):  # back on the ps: the gradients arrive
                r.assign(grads)
                d.assign(dense_grads)

    @tf.function
    def fn() -> Any:
        for k in range(steps):  # written out, as vlps.Trainer's steps are
            one(tf.constant(k, tf.int64))
        return tf.constant(0.0)

    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--fields", type=int, default=26)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16, help="steps per call")
    ap.add_argument("--calls", type=int, default=4, help="calls per round")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:  # a ps or worker task, as a vlps training script's are
        import vlps

        vlps.run_server_if_needed()  # serves until SIGTERM
        return
    ports = free_ports(4)
    spec = {"chief": [f"localhost:{ports[0]}"],
            "ps": [f"localhost:{ports[1]}", f"localhost:{ports[2]}"],
            "worker": [f"localhost:{ports[3]}"]}

    def env(task: str, index: int) -> dict[str, str]:
        return {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": spec, "task": {"type": task, "index": index}})}

    servers = [subprocess.Popen([sys.executable, __file__, "--serve"], env=env(t, i),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
               for t, i in (("ps", 0), ("ps", 1), ("worker", 0))]
    try:
        run(args, env("chief", 0)["TF_CONFIG"], servers)
    finally:
        for p in servers:
            p.terminate()
            p.wait()


def run(args: argparse.Namespace, tf_config: str, servers: list[subprocess.Popen]) -> None:
    unique, width, n_dense = step_sizes(args.batch, args.fields, args.dim)
    os.environ["TF_CONFIG"] = tf_config
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    half, dense_half = unique // 2, n_dense // 2
    ids = tf.range(half, dtype=tf.int64)
    with strategy.scope():
        remote = ([tf.Variable(tf.ones([half, width])) for _ in range(2)],
                  [tf.Variable(tf.ones([dense_half])) for _ in range(2)])
    local = ([tf.Variable(tf.ones([half, width])) for _ in range(2)],
             [tf.Variable(tf.ones([dense_half])) for _ in range(2)])
    on_cluster = make_fn(tf, *remote, ids, args.steps)
    in_process = make_fn(tf, *local, ids, args.steps)
    moved = 2 * (half * 8 + 2 * half * width * 4 + 2 * dense_half * 4)
    print(f"vlps transport: batch {args.batch}, {args.fields} fields: {unique:,} unique ids a "
          f"step, rows of {width} floats, {n_dense:,} dense parameters; "
          f"{moved / 1e6:.2f} MB moved a step; {args.rounds} alternated rounds of "
          f"{args.calls} calls x {args.steps} steps, medians")

    def cluster_chunk() -> None:
        for _ in range(args.calls):
            coordinator.schedule(on_cluster)
        coordinator.join()

    def local_chunk() -> None:
        for _ in range(args.calls):
            out = in_process()
        out.numpy()

    pids = [os.getpid()] + [p.pid for p in servers]
    n = args.calls * args.steps
    results: dict[str, list[tuple[float, list[float]]]] = {"cluster": [], "local": []}
    for chunk in (cluster_chunk, local_chunk):  # traces and warms both
        chunk()
    for _ in range(args.rounds):
        for name, chunk in (("local", local_chunk), ("cluster", cluster_chunk)):
            before = [cpu_seconds(p) for p in pids]
            start = time.perf_counter()
            chunk()
            ms = (time.perf_counter() - start) * 1000 / n
            cpu = [(cpu_seconds(p) - b) * 1000 / n for p, b in zip(pids, before, strict=True)]
            results[name].append((ms, cpu))
    print("| case | ms a step | CPU ms a step | of it: chief / ps 0 / ps 1 / worker |")
    print("| --- | ---: | ---: | --- |")
    for name, label in (("local", "one process (nothing moved)"),
                        ("cluster", "chief + 2 ps + 1 worker")):
        ms = statistics.median(r[0] for r in results[name])
        total = statistics.median(sum(r[1]) for r in results[name])
        parts = [statistics.median(r[1][i] for r in results[name]) for i in range(4)]
        split = " / ".join(f"{x:.1f}" for x in parts) if name == "cluster" else "-"
        print(f"| {label} | {ms:.2f} | {total:.1f} | {split} |")
    extra_ms = statistics.median(c[0] - loc[0] for c, loc in
                                 zip(results["cluster"], results["local"], strict=True))
    extra_cpu = statistics.median(sum(c[1]) - sum(loc[1]) for c, loc in
                                  zip(results["cluster"], results["local"], strict=True))
    print(f"transport's price a step (cluster minus one process, median of the rounds' "
          f"differences): {extra_ms:.2f} ms of step time, {extra_cpu:.1f} ms of CPU")


if __name__ == "__main__":
    main()
