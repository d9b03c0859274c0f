"""Sparse optimizers on vlps tables equal the dense Keras optimizers on the same rows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import vlps
from vlps import initializers

# Includes both ids that DenseHashTable reserves internally and the int64 extremes.
IDS = np.array([5, -(2**63), 7, 2**63 - 1, -(2**63) + 1, 0], np.int64)

CASES = {
    "sgd": (lambda: vlps.SGD(0.1), lambda: keras.optimizers.SGD(0.1)),
    "adagrad": (lambda: vlps.Adagrad(0.1), lambda: keras.optimizers.Adagrad(0.1)),
    "adam": (lambda: vlps.Adam(0.01), lambda: keras.optimizers.Adam(0.01)),
    "ftrl": (
        lambda: vlps.Ftrl(0.1, l1_regularization_strength=0.01, l2_regularization_strength=0.1),
        lambda: keras.optimizers.Ftrl(0.1, l1_regularization_strength=0.01,
                                      l2_regularization_strength=0.1),
    ),
}


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_sparse_equals_dense_keras(name: str, shards: int) -> None:
    vlps_opt, keras_opt = CASES[name]
    table = vlps.EmbeddingTable(f"eq_{name}_{shards}", 4, optimizer=vlps_opt(),
                                initializer=initializers.RandomNormal(seed=3), num_shards=shards)
    ids = tf.constant(IDS)
    dense = keras.Variable(table.pull(ids).numpy())
    opt = keras_opt()
    rng = np.random.default_rng(0)
    for step in range(1, 8):
        grad = rng.normal(size=(len(IDS), 4)).astype(np.float32)
        table.push(ids, grad, step)
        opt.apply([tf.constant(grad)], [dense])
    np.testing.assert_allclose(table.pull(ids).numpy(), dense.numpy(), rtol=1e-6, atol=1e-7)
    assert table.size() == len(IDS)


def test_lazy_adam_only_touches_pushed_rows() -> None:
    """Rows absent from a batch keep embedding and moments (lazy), unlike dense Keras Adam."""
    table = vlps.EmbeddingTable("lazy_adam", 2, optimizer=vlps.Adam(0.1), initializer="zeros")
    a, b = tf.constant([1], tf.int64), tf.constant([2], tf.int64)
    table.push(tf.constant([1, 2], tf.int64), tf.ones([2, 2]), 1)
    b_after_1 = table.pull(b).numpy()
    table.push(a, tf.ones([1, 2]), 2)
    np.testing.assert_array_equal(table.pull(b).numpy(), b_after_1)
    # Reference for id 1: two Adam steps with g=1 (numpy).
    m = v = 0.0
    x = 0.0
    for t in (1, 2):
        m = 0.9 * m + 0.1
        v = 0.999 * v + 0.001
        x -= 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(table.pull(a).numpy(), [[x, x]], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dense_rule_equals_keras(name: str) -> None:
    """vlps applies the same rules to dense variables (Keras optimizers fail under PSS)."""
    vlps_opt, keras_opt = CASES[name]
    init = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    mine, ref = tf.Variable(init), keras.Variable(init)
    ours, theirs = vlps_opt(), keras_opt()
    ours.build_dense([mine])
    rng = np.random.default_rng(2)
    for step in range(1, 6):
        g = tf.constant(rng.normal(size=(3, 5)).astype(np.float32))
        ours.apply_dense([(g, mine)], tf.constant(step, tf.int64))
        theirs.apply([g], [ref])
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), rtol=1e-6, atol=1e-7)


def test_duplicate_ids_aggregate_gradients() -> None:
    """A batch with an id three times pushes one summed gradient row (Adagrad is not
    additive over separate pushes, so this pins per-id aggregation)."""
    layer = vlps.DynamicEmbedding(2, optimizer=vlps.Adagrad(0.5), initializer="zeros",
                                  table_name="dups")
    ids = tf.constant([4, 4, 9, 4], tf.int64)
    with tf.GradientTape() as tape, vlps.capture(tape) as cap:
        out = layer(ids, training=True)
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, cap.pulled)
    from vlps.layers import apply_sparse_gradients

    apply_sparse_gradients(cap, grads, tf.constant(1, tf.int64))
    accum = 0.1 + 3.0**2
    expected = -0.5 * 3.0 / np.sqrt(accum + 1e-7)
    np.testing.assert_allclose(layer.table.pull(tf.constant([4], tf.int64)).numpy(),
                               [[expected, expected]], rtol=1e-6)
    assert layer.table.size() == 2


def test_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        vlps.Adagrad(0.0)
    with pytest.raises(ValueError, match="unknown vlps optimizer"):
        vlps.EmbeddingTable("t_bad", 2, optimizer="rmsprop")


@pytest.mark.parametrize("opt", [vlps.SGD(0.3), vlps.Adagrad(0.2, initial_accumulator_value=0.1)])
def test_the_fused_dense_update_equals_the_rules_tf_ops(opt) -> None:
    """`VlpsDenseApply` (one op for all the variables of a device) gives, bit for bit, what
    the rule's TF ops give eagerly, for variables of several shapes; a gradient of the wrong
    size is refused with the counts and changes nothing."""
    rng = np.random.default_rng(3)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    inits = [rng.normal(size=s).astype(np.float32) for s in shapes]
    fused = [tf.Variable(x) for x in inits]
    opt.build_dense(fused)
    want = [x.copy() for x in inits]
    slots = [np.full(s, v, np.float32) for s in shapes for v in opt.initial_slot_values()]
    for step in range(1, 4):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        opt.apply_dense(list(zip([tf.constant(g) for g in grads], fused, strict=True)),
                        tf.constant(step, tf.int64))
        for i, g in enumerate(grads):
            mine = [tf.constant(slots[i])] if slots else []
            new, new_slots = opt.update(tf.constant(want[i]), mine, tf.constant(g), step)
            want[i] = new.numpy()
            if slots:
                slots[i] = new_slots[0].numpy()
    for v, w in zip(fused, want, strict=True):
        np.testing.assert_array_equal(v.numpy().view(np.int32), w.view(np.int32))
    before = [v.numpy() for v in fused]
    for wrong in (5, 13):  # short of the first variable; covering the first only
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f"the gradient has {wrong} elements, the variables 23"):
            opt.apply_dense_flat(fused, tf.ones([wrong]), None)
    for v, b in zip(fused, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)
