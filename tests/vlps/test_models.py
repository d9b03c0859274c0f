"""The reference models' own layers: ConcatDense is Dense over a concatenation, without it."""

import keras
import numpy as np
import tensorflow as tf

from vlps.models import ConcatDense, hashed_wide_deep


def test_concat_dense_is_a_dense_layer_over_the_concatenation_in_value_and_gradient():
    rng = np.random.default_rng(3)
    a = tf.constant(rng.normal(size=(64, 40)), tf.float32)
    b = tf.constant(rng.normal(size=(64, 5)), tf.float32)
    split = ConcatDense(32, seed=1)
    split(a, b)
    split.bias.assign(rng.normal(size=(32,)).astype("float32"))
    joint = keras.layers.Dense(32, activation="relu")
    joint(tf.concat([a, b], 1))
    joint.kernel.assign(tf.concat([split.kernel_a, split.kernel_b], 0))
    joint.bias.assign(split.bias)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        y_split = split(a, b)
        y_joint = joint(tf.concat([a, b], 1))
        loss_split = tf.reduce_sum(y_split * y_split)
        loss_joint = tf.reduce_sum(y_joint * y_joint)
    assert float(tf.reduce_mean(tf.cast(y_joint > 0, tf.float32))) > 0.2  # relu is not all zero
    np.testing.assert_allclose(y_split.numpy(), y_joint.numpy(), rtol=1e-5, atol=1e-5)
    ga, gb, gka, gkb, gbias = tape.gradient(
        loss_split, [a, b, split.kernel_a, split.kernel_b, split.bias])
    ga_j, gb_j, gk_j, gbias_j = tape.gradient(loss_joint, [a, b, joint.kernel, joint.bias])
    for got, want in [(ga, ga_j), (gb, gb_j), (tf.concat([gka, gkb], 0), gk_j),
                      (gbias, gbias_j)]:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_concat_dense_starts_as_one_glorot_kernel_of_the_joint_fan_in():
    layer = ConcatDense(256, seed=0)
    layer(tf.zeros([2, 416]), tf.zeros([2, 13]))
    limit = (6.0 / (416 + 13 + 256)) ** 0.5
    kernel = np.concatenate([layer.kernel_a.numpy(), layer.kernel_b.numpy()])
    assert kernel.shape == (429, 256)
    assert np.abs(kernel).max() <= limit
    # Uniform(-limit, limit) has variance limit^2 / 3 (Glorot: 2 / (fan_in + fan_out)).
    assert abs(kernel.var() / (limit * limit / 3) - 1) < 0.02
    assert not np.allclose(layer.kernel_a.numpy()[:13], layer.kernel_b.numpy())  # own seeds
    assert np.all(layer.bias.numpy() == 0)
    assert ConcatDense.from_config(layer.get_config()).units == 256


def test_a_model_without_hidden_layers_concatenates_into_its_output_layer():
    model = hashed_wide_deep(num_bins=100, dim=4, num_fields=3, num_dense=2, hidden=())
    out = model({"cat": tf.constant([[1, 2, 3]], tf.int64), "num": tf.zeros([1, 2])})
    assert out.shape == (1, 1)
    assert not any(isinstance(layer, ConcatDense) for layer in model.layers)
