"""Synthetic Criteo-shaped CTR data drawn from a known generating model (pure TensorFlow).

Used by tests, benchmarks and examples: 26 categorical fields with Zipf-distributed ids over a
10^9 id space per field and 13 numeric fields. The label is Bernoulli(sigmoid(logit)) where the
logit sums a fixed per-id weight for every categorical value plus a linear term in the numeric
fields, so a model that keeps ids apart can learn it and hash collisions cost accuracy.
Everything is a stateless function of (seed, batch index): deterministic and identical in every
process.
"""

from __future__ import annotations

import tensorflow as tf

from vlps.hashing import mix64, uniform01

FIELD_STRIDE = 10**9  # ids of field f are f * FIELD_STRIDE + [0, 10^9): disjoint across fields


def _batch(seed: int, index: tf.Tensor, batch_size: int, num_fields: int, num_dense: int,
           id_space: int, zipf_a: float, signal: float) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    s = tf.stack([tf.constant(seed, tf.int64), index])
    u = tf.random.stateless_uniform([batch_size, num_fields], seed=s, minval=1e-7, maxval=1.0)
    # Pareto inverse CDF: P(rank >= r) = r^-(a-1), a continuous Zipf with exponent a.
    # In float64: float32 pow differs in the last bit between TF versions, which moved ~1% of
    # the tail ids; the TFRA peer (TF 2.16) must draw exactly the same ids as TF 2.21.
    u64 = tf.cast(u, tf.float64)
    rank = tf.minimum(tf.floor(tf.pow(u64, -1.0 / (zipf_a - 1.0))), float(id_space - 1))
    rank = tf.cast(rank, tf.int64)
    field = tf.range(num_fields, dtype=tf.int64)[None, :]
    mixed = mix64(tf.bitcast(rank * 64 + field, tf.uint64))
    local = tf.math.floormod(tf.cast(tf.bitwise.right_shift(mixed, tf.constant(2, tf.uint64)),
                                     tf.int64), id_space)
    cat = field * FIELD_STRIDE + local
    dense = tf.random.stateless_normal([batch_size, num_dense], seed=s + 1)
    logit = generating_logit({"cat": cat, "num": dense}, signal)
    label = tf.cast(
        tf.random.stateless_uniform([batch_size], seed=s + 2) < tf.sigmoid(logit), tf.float32)
    return {"cat": cat, "num": dense}, label[:, None]


def generating_logit(features: dict[str, tf.Tensor], signal: float = 2.0) -> tf.Tensor:
    """The true logit of the generating model for a batch of features, shape [b]:
    `signal * sum_f w(id_f) / sqrt(fields) + 0.5 * num . beta / sqrt(num_dense) - 1`, where
    w(id) ~ N(0, 1) is a fixed draw from the id itself and beta a fixed N(0, 1) vector. The id
    term has standard deviation `signal`: per-id effects dominate the label. Benchmarks use it
    for the Bayes-optimal ("oracle") AUC."""
    cat, dense = features["cat"], features["num"]
    batch_size, num_fields = tf.shape(cat)[0], cat.shape[1]
    num_dense = dense.shape[1]
    # True per-id weight: a fixed normal draw from the id itself.
    w = tf.math.ndtri(uniform01(tf.reshape(cat, [-1]), 12345, 1))
    w = tf.reshape(w, [batch_size, num_fields])
    beta = tf.math.ndtri(uniform01(tf.range(num_dense, dtype=tf.int64), 777, 1))[:, 0]
    return signal * tf.reduce_sum(w, 1) / tf.sqrt(float(num_fields)) \
        + 0.5 * tf.linalg.matvec(dense, beta) / tf.sqrt(float(num_dense)) - 1.0


def synthetic_ctr(
    batch_size: int, *, num_fields: int = 26, num_dense: int = 13, id_space: int = 10**9,
    zipf_a: float = 1.2, signal: float = 2.0, seed: int = 0, split: str = "train",
    num_batches: int | None = None,
) -> tf.data.Dataset:
    """Batches of ({"cat": int64 [b, fields], "num": float32 [b, dense]}, label [b, 1]).

    `split="test"` draws a held-out stream from the same generating model. Repeats forever
    unless `num_batches` is given."""
    if zipf_a <= 1.0:
        raise ValueError(f"synthetic_ctr: zipf_a must be > 1, got {zipf_a}")
    offset = {"train": 0, "test": 1 << 40}[split]
    ds = tf.data.Dataset.range(offset, offset + (num_batches or (1 << 40)))
    return ds.map(
        lambda i: _batch(seed, i, batch_size, num_fields, num_dense, id_space, zipf_a, signal),
        num_parallel_calls=1, deterministic=True,
    ).prefetch(2)
