"""One training step over dense variables and dynamic tables, for custom loops and Keras fit.

`train_step` is what `vlps.Trainer` schedules on workers; `Model` plugs the same logic into
`keras.Model.fit` for single-process use (dense variables then use the Keras optimizer given
to `compile`, which works outside ParameterServerStrategy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from vlps.layers import apply_sparse_gradients, capture
from vlps.optimizers import Optimizer


def train_step(
    model: keras.Model, loss_fn: Callable[[Any, Any], tf.Tensor], optimizer: Optimizer,
    features: Any, labels: Any, step: tf.Tensor,
) -> tf.Tensor:
    """Forward, backward, dense update with `optimizer` (vlps rule), sparse pushes. Returns
    the loss. `step` is the 1-based global step of this update."""
    with tf.GradientTape() as tape:
        with capture(tape) as cap:
            preds = model(features, training=True)
        loss = loss_fn(labels, preds)
    dense = list(model.trainable_variables)
    grads = tape.gradient(loss, dense + cap.pulled)
    optimizer.apply_dense(list(zip(grads[: len(dense)], dense, strict=True)), step)
    apply_sparse_gradients(cap, grads[len(dense) :], step)
    return loss


class Model(keras.Model):
    """A keras.Model whose `fit` also trains its DynamicEmbedding tables (one process).

    Use it as a base class or through the functional constructor
    (`vlps.Model(inputs, outputs)`); the dense optimizer is the one given to `compile`."""

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            with capture(tape) as cap:
                y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                     training=True)
        dense = list(self.trainable_variables)
        grads = tape.gradient(loss, dense + cap.pulled)
        step = self.optimizer.iterations + 1
        self.optimizer.apply(grads[: len(dense)], dense)
        apply_sparse_gradients(cap, grads[len(dense) :], step)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
