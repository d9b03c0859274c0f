"""Stable hashing of feature ids: shard assignment, string ids, and per-id random numbers.

Everything here is a pure TensorFlow function of its inputs, so the same id lands on the same
shard, gets the same hashed string key and the same initial embedding in every process, on every
number of shards, and in an exported SavedModel that runs without vlps.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# SplitMix64 finalizer constants (Steele, Lea, Flood 2014). The finalizer is a bijection on
# 64-bit words with good avalanche, so `shard_of` spreads even sequential ids evenly.
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_GOLDEN = 0x9E3779B97F4A7C15

#: Modulus of the documented string hash: FarmHash Fingerprint64(s) mod (2**63 - 1).
STRING_HASH_BUCKETS = 2**63 - 1


def mix64(x: tf.Tensor) -> tf.Tensor:
    """SplitMix64 finalizer on uint64 (wrapping arithmetic)."""
    m1 = tf.constant(_M1, tf.uint64)
    m2 = tf.constant(_M2, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(30, tf.uint64)))
    x = x * m1
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(27, tf.uint64)))
    x = x * m2
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, tf.uint64)))


def shard_of(ids: tf.Tensor, num_shards: int) -> tf.Tensor:
    """The shard (int32 in [0, num_shards)) that owns each int64 id."""
    if num_shards == 1:
        return tf.zeros_like(ids, dtype=tf.int32)
    h = mix64(tf.bitcast(ids, tf.uint64))
    # The top 31 bits are uniformly distributed; int64 floormod on them is exact.
    top = tf.cast(tf.bitwise.right_shift(h, tf.constant(33, tf.uint64)), tf.int64)
    return tf.cast(tf.math.floormod(top, num_shards), tf.int32)


def hash_strings(values: tf.Tensor) -> tf.Tensor:
    """The documented stable string hash: FarmHash Fingerprint64 mod (2**63 - 1), as int64.

    TensorFlow guarantees Fingerprint64 is stable across versions and platforms; it is the op
    behind `tf.strings.to_hash_bucket_fast`.
    """
    return tf.strings.to_hash_bucket_fast(values, STRING_HASH_BUCKETS)


def uniform01(ids: tf.Tensor, seed: int, width: int) -> tf.Tensor:
    """Deterministic uniform floats in (0, 1), shape [n, width], a pure function of (id, seed).

    Used for first-sight initialisation: the value a row starts with does not depend on which
    process, shard or step first sees the id, so pull and push agree without extra traffic.
    """
    base = mix64(
        tf.bitwise.bitwise_xor(
            tf.bitcast(tf.cast(ids, tf.int64), tf.uint64),
            tf.constant((seed * _GOLDEN) & 0xFFFFFFFFFFFFFFFF, tf.uint64),
        )
    )
    # An explicit uint64 array: inside a tf.function, tf.constant(list of Python ints) goes
    # through numpy without the dtype, and a list mixing values above and below 2**63 becomes
    # float64 there (rounded), so graph and eager would initialise rows differently.
    cols = tf.constant(np.array([((j + 1) * _GOLDEN) & 0xFFFFFFFFFFFFFFFF for j in range(width)],
                                dtype=np.uint64))
    bits = mix64(base[:, None] + cols[None, :])
    # 24 random bits -> exactly representable float32 in (0, 1).
    top = tf.cast(tf.bitwise.right_shift(bits, tf.constant(40, tf.uint64)), tf.float32)
    return (top + 0.5) * (1.0 / 16777216.0)
