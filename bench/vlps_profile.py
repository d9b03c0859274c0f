"""Where the sparse part of a vlps training step spends its time, stage by stage.

The README's CTR model (Wide&Deep: a deep embedding of dim `--dim` and a wide weight of dim 1
per id over the same 26 id fields, Adagrad; by default both in one table row, `--layout two`
for two tables) does per step and per table: the unique of the batch's ids (`VlpsUnique`),
partition by shard (none with one shard), hash-table lookup of the unique ids with the initial
rows of new ids filled in (pull), gather back to the batch, the gradient's sum per unique id,
the optimizer on the rows and the hash-table insert (push). Gather and gradient sum are the
ones the DynamicEmbedding layer runs in training (`vlps.layers.training_gather`). Each stage is
timed by ablation: one `tf.function` per prefix of the pipeline (unique; unique+lookup; ... ;
the whole sparse step), run on the same batches in alternated rounds; a stage's cost is the
difference of consecutive medians. The dense part (the MLP forward+backward+update, on a fixed
embedding tensor) is timed in the same rounds.

  .venv/bin/python bench/vlps_profile.py [--batch 4096] [--dim 16] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STAGES = ("unique", "lookup (pull)", "gather", "gradient segment-sum", "optimizer + insert (push)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="batches per timed pass")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--layout", choices=("fused", "two"), default="fused",
                    help="deep+wide in one table row (the model's default) or two tables")
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    import vlps
    from vlps import native
    from vlps.data import synthetic_ctr
    from vlps.initializers import Columns
    from vlps.layers import training_gather
    from vlps.models import _head

    batches = list(synthetic_ctr(args.batch, seed=7).take(args.steps * (args.rounds + 1)))
    if args.layout == "fused":
        tables = [vlps.EmbeddingTable(
            "emb", args.dim + 1, optimizer=vlps.Adagrad(0.05), num_shards=args.shards,
            initializer=Columns([(args.dim, "uniform"), (1, "zeros")]))]
        groups = [(args.dim, 1)]
    else:
        tables = [vlps.EmbeddingTable("deep", args.dim, optimizer=vlps.Adagrad(0.05),
                                      num_shards=args.shards),
                  vlps.EmbeddingTable("wide", 1, optimizer=vlps.Adagrad(0.05),
                                      initializer="zeros", num_shards=args.shards)]
        groups = [(args.dim,), (1,)]
    step = tf.Variable(0, dtype=tf.int64)

    def sparse(depth: int):
        @tf.function
        def fn(cat: tf.Tensor) -> tf.Tensor:
            s = step.assign_add(1)
            out = tf.constant(0.0)
            flat = tf.reshape(cat, [-1])
            unique, idx = native.unique(flat)  # one for every table, as the layers share it
            out += tf.cast(tf.size(unique), tf.float32)
            for t, columns in zip(tables, groups, strict=True):
                if depth < 2:
                    continue
                emb_u = t.pull(unique)
                if depth < 3:
                    out += tf.reduce_sum(emb_u)
                    continue
                with tf.GradientTape() as tape:
                    tape.watch(emb_u)
                    embs = training_gather(columns)(emb_u, idx)
                    y = tf.add_n([tf.reduce_sum(e * 1e-3) for e in embs])
                if depth < 4:
                    out += y
                    continue
                grad = tape.gradient(y, emb_u)  # the sum per unique id
                if depth < 5:
                    out += tf.reduce_sum(grad)
                    continue
                t.push(unique, grad, s)
            return out
        return fn

    inp = keras.Input((26, args.dim)), keras.Input((26, 1)), keras.Input((13,))
    head = keras.Model(list(inp), _head(inp[0], inp[1], inp[2], 26, args.dim, (256, 128), 0))
    opt = vlps.Adagrad(0.05)
    opt.build_dense(list(head.trainable_variables))
    fixed_e = tf.random.uniform([args.batch, 26, args.dim], -0.05, 0.05)
    fixed_w = tf.zeros([args.batch, 26, 1])
    bce = keras.losses.BinaryCrossentropy()

    @tf.function
    def dense(num: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        s = step.assign_add(1)
        with tf.GradientTape() as tape:
            loss = bce(y, head([fixed_e, fixed_w, num], training=True))
        vs = list(head.trainable_variables)
        opt.apply_dense(list(zip(tape.gradient(loss, vs), vs, strict=True)), s)
        return loss

    cases = {f"sparse:{i}": sparse(i) for i in range(1, 6)}
    times: dict[str, list[float]] = {k: [] for k in [*cases, "dense"]}

    def run(name: str, chunk: list) -> float:
        t0 = time.perf_counter()
        out = None
        for features, y in chunk:
            out = dense(features["num"], y) if name == "dense" else cases[name](features["cat"])
        float(out)
        return (time.perf_counter() - t0) / len(chunk)

    for name in times:  # trace + warm up on the first chunk
        run(name, batches[: args.steps])
    for r in range(args.rounds):
        chunk = batches[(r + 1) * args.steps: (r + 2) * args.steps]
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name in order:
            times[name].append(run(name, chunk))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    layout = "one table row" if args.layout == "fused" else "two tables"
    print(f"sparse step of the CTR model (deep dim {args.dim} + wide dim 1 in {layout}, "
          f"Adagrad, {args.shards} shard(s)), batch {args.batch} x 26 fields, ms per step, "
          f"medians of {args.rounds} alternated rounds of {args.steps} batches; tables grow as "
          "in training")
    print("| stage (all tables) | ms/step | share of sparse |")
    print("| --- | ---: | ---: |")
    prev = 0.0
    total = med["sparse:5"]
    for i, name in enumerate(STAGES, start=1):
        cost = med[f"sparse:{i}"] - prev
        prev = med[f"sparse:{i}"]
        print(f"| {name} | {cost:.1f} | {cost / total:.0%} |")
    print(f"| **sparse total** | **{total:.1f}** | 100% |")
    print(f"| dense part (MLP fwd+bwd+update on a fixed embedding) | {med['dense']:.1f} | "
          f"sparse/dense = {total / med['dense']:.2f} |")
    print("rows: " + ", ".join(f"{t.name} {t.size():,}" for t in tables))


if __name__ == "__main__":
    main()
