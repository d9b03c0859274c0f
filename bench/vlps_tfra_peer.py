"""The TFRA side of bench/vlps_ctr.py: the same Wide&Deep model on the same synthetic data,
trained with TensorFlow Recommenders-Addons' dynamic embeddings. Runs in TFRA's own venv
(TensorFlow 2.16.2, tf_keras 2.16, TFRA 0.8.1) with TF_USE_LEGACY_KERAS=1; vlps_ctr.py starts
it with the interpreter named by $VLPS_TFRA_PYTHON (default /work/tfra-venv/bin/python).

vlps itself is not imported (its package needs TF 2.21 + Keras 3): the data generator
vlps/data.py and its helper vlps/hashing.py are pure TensorFlow and are loaded from their files,
so both interpreters draw identical batches from the same seed (the driver compares a
fingerprint of the first batch). Prints one JSON line.

  TF_USE_LEGACY_KERAS=1 /work/tfra-venv/bin/python bench/vlps_tfra_peer.py \\
      --steps 210 --batch 4096 --dim 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def load_vlps_data() -> types.ModuleType:
    """vlps.data without running vlps/__init__.py (which imports Keras 3 and TF 2.21 APIs)."""
    pkg = types.ModuleType("vlps")
    pkg.__path__ = [os.path.join(ROOT, "vlps")]
    sys.modules["vlps"] = pkg
    import vlps.data

    return vlps.data


def auc(labels, scores) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties)."""
    import numpy as np

    labels = np.asarray(labels).ravel() > 0.5
    scores = np.asarray(scores, np.float64).ravel()
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def fingerprint(features, labels) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in (features["cat"], features["num"], labels):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=210)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--test-batches", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--init-acc", type=float, default=0.0)
    args = ap.parse_args()

    import tensorflow as tf
    import tensorflow_recommenders_addons as tfra
    import tf_keras as keras
    from tensorflow_recommenders_addons import dynamic_embedding as de

    data = load_vlps_data()
    ds = data.synthetic_ctr(args.batch, seed=7)
    first = next(iter(ds))
    chunk = (args.steps - args.warm) // args.windows
    total = args.warm + chunk * args.windows

    fields, num_dense, dim = 26, 13, args.dim
    cat = keras.Input((fields,), dtype=tf.int64, name="cat")
    num = keras.Input((num_dense,), dtype=tf.float32, name="num")
    emb = de.keras.layers.Embedding(
        dim, initializer=keras.initializers.RandomUniform(-0.05, 0.05), name="deep_emb")(cat)
    wide = de.keras.layers.Embedding(1, initializer=keras.initializers.Zeros(),
                                     name="wide_emb")(cat)
    x = keras.layers.Concatenate()([keras.layers.Reshape((fields * dim,))(emb), num])
    for i, h in enumerate((256, 128)):
        x = keras.layers.Dense(h, activation="relu",
                               kernel_initializer=keras.initializers.GlorotUniform(i))(x)
    deep = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(99))(x)
    wide_sum = keras.layers.Lambda(
        lambda w: tf.reduce_sum(tf.reshape(w, [-1, fields]), 1, keepdims=True))(wide)
    out = keras.layers.Activation("sigmoid")(keras.layers.Add()([deep, wide_sum]))
    model = keras.Model({"cat": cat, "num": num}, out)
    model.compile(optimizer=de.DynamicEmbeddingOptimizer(keras.optimizers.Adagrad(
                      args.lr, initial_accumulator_value=args.init_acc)),
                  loss=keras.losses.BinaryCrossentropy())

    marks: dict[int, float] = {}
    ends = {args.warm + k * chunk - 1 for k in range(args.windows + 1)}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in ends:
                marks[batch] = time.perf_counter()

    model.fit(ds.take(total), epochs=1, verbose=0, callbacks=[Timer()])
    points = [marks[e] for e in sorted(ends)]
    windows = [chunk * args.batch / (b - a) for a, b in itertools.pairwise(points)]

    labels, scores = [], []
    for features, y in data.synthetic_ctr(4096, seed=7, split="test",
                                          num_batches=args.test_batches):
        scores.append(model(features, training=False).numpy())
        labels.append(y.numpy())
    import numpy as np

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "case": "tfra", "samples_per_s": statistics.median(windows), "windows": windows,
        "auc": auc(np.concatenate(labels), np.concatenate(scores)), "peak_rss_mib": peak,
        "steps": total, "data": fingerprint(*first),
        "versions": f"TF {tf.__version__}, tf_keras {keras.__version__}, "
                    f"TFRA {tfra.__version__}",
    }), flush=True)


if __name__ == "__main__":
    main()
