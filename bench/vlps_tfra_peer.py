"""The TFRA case of bench/vlps_ctr.py: the same Wide&Deep model on the same batches (the
driver's TFRecord file), trained with TensorFlow Recommenders-Addons' dynamic embeddings in
the same loop as every other case (a `tf.function` running one step, called once per step).
Runs in TFRA's own venv, bench/peers/.venv-tfra (TensorFlow 2.16.2, tf_keras 2.16, TFRA
0.8.1; `make peers` builds it), with TF_USE_LEGACY_KERAS=1, and speaks the ctr_common
protocol on stdin/stdout.

vlps itself is not imported (its package needs TF 2.21 + Keras 3): the held-out data comes
from vlps/data.py and vlps/hashing.py, pure TensorFlow, loaded from their files.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import ctr_common  # noqa: E402


def load_vlps_data() -> types.ModuleType:
    """vlps.data without running vlps/__init__.py (which imports Keras 3 and TF 2.21 APIs)."""
    pkg = types.ModuleType("vlps")
    pkg.__path__ = [os.path.join(ROOT, "vlps")]
    sys.modules["vlps"] = pkg
    import vlps.data

    return vlps.data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--fields", type=int, default=26)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--test-batches", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--data", required=True)
    ap.add_argument("--spe", default="0", help="unused (the cluster's option)")
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf
    import tensorflow_recommenders_addons as tfra
    import tf_keras as keras
    from tensorflow_recommenders_addons import dynamic_embedding as de

    fields, dim = args.fields, args.dim
    cat = keras.Input((fields,), dtype=tf.int64, name="cat")
    num = keras.Input((ctr_common.NUM_DENSE,), dtype=tf.float32, name="num")
    emb = de.keras.layers.Embedding(
        dim, initializer=keras.initializers.RandomUniform(-0.05, 0.05), name="deep_emb")(cat)
    wide = de.keras.layers.Embedding(1, initializer=keras.initializers.Zeros(),
                                     name="wide_emb")(cat)
    class ConcatDense(keras.layers.Layer):
        """vlps.models.ConcatDense in tf_keras: relu(a @ kernel_a + (b @ kernel_b + bias)),
        Dense over concatenate([a, b]) without the concatenation, Glorot of the joint fan-in."""

        def __init__(self, units: int, seed: int) -> None:
            super().__init__()
            self.units, self.seed = units, seed

        def build(self, shapes: Any) -> None:
            a, b = (int(s[-1]) for s in shapes)
            limit = (6.0 / (a + b + self.units)) ** 0.5
            self.kernel_a = self.add_weight("kernel_a", (a, self.units), initializer=(
                keras.initializers.RandomUniform(-limit, limit, seed=self.seed)))
            self.kernel_b = self.add_weight("kernel_b", (b, self.units), initializer=(
                keras.initializers.RandomUniform(-limit, limit, seed=self.seed + 50)))
            self.bias = self.add_weight("bias", (self.units,), initializer="zeros")

        def call(self, inputs: Any) -> Any:
            a, b = inputs
            return tf.nn.relu(tf.matmul(a, self.kernel_a)
                              + (tf.matmul(b, self.kernel_b) + self.bias))

    x = ConcatDense(256, 0)([keras.layers.Reshape((fields * dim,))(emb), num])
    x = keras.layers.Dense(128, activation="relu",
                           kernel_initializer=keras.initializers.GlorotUniform(1))(x)
    deep = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(99))(x)
    wide_sum = keras.layers.Lambda(
        lambda w: tf.reduce_sum(tf.reshape(w, [-1, fields]), 1, keepdims=True))(wide)
    out = keras.layers.Activation("sigmoid")(keras.layers.Add()([deep, wide_sum]))
    model = keras.Model({"cat": cat, "num": num}, out)
    opt = de.DynamicEmbeddingOptimizer(
        keras.optimizers.Adagrad(args.lr, initial_accumulator_value=0.0))
    bce = keras.losses.BinaryCrossentropy()
    ds = ctr_common.read_batches(args.data, args.batch, fields)
    first = next(iter(ds))
    iterator = iter(ds)

    @tf.function
    def step_fn(it: Any) -> tf.Tensor:
        features, labels = next(it)
        with tf.GradientTape() as tape:
            loss = bce(labels, model(features, training=True))
        vs = model.trainable_variables
        opt.apply_gradients(zip(tape.gradient(loss, vs), vs, strict=True))
        return loss

    def run(n: int) -> None:
        loss = None
        for _ in range(n):
            loss = step_fn(iterator)
        if loss is not None:
            float(loss)

    def finish() -> dict:
        data = load_vlps_data()
        labels, scores = [], []
        for features, y in data.synthetic_ctr(4096, seed=7, split="test", num_fields=fields,
                                              num_batches=args.test_batches):
            scores.append(model(features, training=False).numpy())
            labels.append(y.numpy())
        return {"auc": ctr_common.auc(np.concatenate(labels), np.concatenate(scores)),
                "peak_rss_mib": ctr_common.peak_rss_mib(), "bytes": None,
                "steps": int(opt.iterations.numpy()),
                "versions": f"TF {tf.__version__}, tf_keras {keras.__version__}, "
                            f"TFRA {tfra.__version__}"}

    ctr_common.serve(run, args.warm, finish, {"data": ctr_common.fingerprint(*first)})


if __name__ == "__main__":
    main()
