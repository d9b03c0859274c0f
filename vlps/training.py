"""One training step over dense variables and dynamic tables, for custom loops and Keras fit.

`train_step` is what `vlps.Trainer` schedules on workers; `Model` plugs the same logic into
`keras.Model.fit` for single-process use (dense variables then use the Keras optimizer given
to `compile`, which works outside ParameterServerStrategy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from vlps.layers import apply_sparse_gradients, capture
from vlps.optimizers import Optimizer, _tf_var


def train_step(
    model: keras.Model, loss_fn: Callable[[Any, Any], tf.Tensor], optimizer: Optimizer,
    features: Any, labels: Any, step: tf.Tensor, packing: DensePacking | None = None,
) -> tf.Tensor:
    """Forward, backward, dense update with `optimizer` (vlps rule), sparse pushes. Returns
    the loss. `step` is the 1-based global step of this update. With `packing` (a cluster),
    the dense variables cross the network as one tensor per ps task each way."""
    dense = list(model.trainable_variables)
    if packing is None:
        with tf.GradientTape() as tape:
            with capture(tape) as cap:
                preds = model(features, training=True)
            loss = loss_fn(labels, preds)
        grads = tape.gradient(loss, dense + cap.pulled)
        optimizer.apply_dense(list(zip(grads[: len(dense)], dense, strict=True)), step)
    else:
        values = packing.read(dense)
        state = list(model.non_trainable_variables)
        old = [tf.convert_to_tensor(v.value) for v in state]
        with tf.GradientTape() as tape:
            tape.watch(values)
            with capture(tape) as cap:
                preds, new = model.stateless_call(values, old, features, training=True)
            loss = loss_fn(labels, preds)
        grads = tape.gradient(loss, values + cap.pulled)
        for v, before, after in zip(state, old, new, strict=True):
            if after is not before:  # e.g. batch-norm statistics, a dropout seed
                v.assign(after)
        packing.apply(optimizer, grads[: len(dense)], dense, step)
    apply_sparse_gradients(cap, grads[len(dense) :], step)
    return loss


class DensePacking:
    """The model's dense variables grouped by the device (ps task) that holds them.

    A step on a cluster otherwise moves every dense variable from its ps to the worker and its
    gradient back, one gRPC transfer each way per variable and step, each with its thread
    hand-offs on both sides (a small batch's step pays them more than its math; see
    docs/vlps.md for what packing gained). `read` concatenates each group on its ps and
    splits it on the worker (one transfer per ps), `apply` does the reverse with the gradients
    and runs the optimizer's rule on the ps, where the variables and their slots live. The
    model then runs on the values with `keras.Model.stateless_call`. Same values, same update.
    """

    def __init__(self, variables: list[Any]) -> None:
        groups: dict[tuple[str, Any], list[int]] = {}
        for i, v in enumerate(variables):
            groups.setdefault((_tf_var(v).device, v.dtype), []).append(i)
        self.groups = [(device, idx) for (device, _), idx in groups.items()]
        self.shapes = [tuple(int(d) for d in v.shape) for v in variables]

    def _sizes(self, idx: list[int]) -> list[int]:
        return [int(np.prod(self.shapes[i], dtype=np.int64)) for i in idx]

    def read(self, variables: list[Any]) -> list[tf.Tensor]:
        out: list[Any] = [None] * len(variables)
        for device, idx in self.groups:
            with tf.device(device):
                flat = tf.concat([tf.reshape(_tf_var(variables[i]).read_value(), [-1])
                                  for i in idx], 0)
            for i, part in zip(idx, tf.split(flat, self._sizes(idx)), strict=True):
                out[i] = tf.reshape(part, self.shapes[i])
        return out

    def apply(self, optimizer: Optimizer, grads: list[Any], variables: list[Any],
              step: tf.Tensor) -> None:
        for device, idx in self.groups:
            # A variable without a gradient is left out, as `Optimizer.apply_dense` does.
            idx = [i for i in idx if grads[i] is not None]
            if not idx:
                continue
            flat = tf.concat([tf.reshape(tf.convert_to_tensor(grads[i]), [-1]) for i in idx], 0)
            if optimizer.native_rule() is not None and flat.dtype == tf.float32:
                # One op on the ps for the whole group (VlpsDenseApply).
                optimizer.apply_dense_flat([variables[i] for i in idx], flat, device)
                continue
            with tf.device(device):
                parts = tf.split(flat, self._sizes(idx))
                optimizer.apply_dense(
                    [(tf.reshape(p, self.shapes[i]), variables[i])
                     for p, i in zip(parts, idx, strict=True)], step)


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
