"""Optimizers that vlps applies itself: row-wise on the PS for tables, and on dense variables.

Each optimizer is one pure update rule `update(var, slots, grad, step) -> (var, slots)` written
to match the Keras 3 optimizer of the same name bit for bit on a dense variable (tests check it).
vlps uses the rule twice: on table rows inside the parameter server (the slots live in the same
row as the embedding, so a checkpoint never sees an embedding without its slots), and on dense
variables through `apply_dense`, because Keras 3 optimizers raise inside ParameterServerStrategy
scheduled functions on TF 2.21 (see docs/vlps.md).

Sparse updates are "lazy": rows that no id of the batch touched are not decayed (Adam's moments
of an untouched row stay as they are), which is what every sparse PS does; on a batch that
touches every row the result equals the dense Keras optimizer.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from vlps import native
from vlps.placement import device_scope


class Optimizer:
    """Base class. Subclasses define `slot_names`, `initial_slot_values` and `update`."""

    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float) -> None:
        if not learning_rate > 0:
            raise ValueError(
                f"{type(self).__name__}: learning_rate must be > 0, got {learning_rate}")
        self.learning_rate = float(learning_rate)
        self._dense_slots: dict[int, list[tf.Variable]] = {}

    # -- the rule -------------------------------------------------------------------------
    def initial_slot_values(self) -> tuple[float, ...]:
        return tuple(0.0 for _ in self.slot_names)

    def update(
        self, var: tf.Tensor, slots: list[tf.Tensor], grad: tf.Tensor, step: tf.Tensor
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """New (var, slots). `step` is the 1-based count of this update (Adam's bias term)."""
        raise NotImplementedError

    def native_rule(self) -> tuple[str, dict[str, float]] | None:
        """(rule, attributes) of the table kernel's fused update (`VlpsHashTableApply`) for
        this optimizer, or None: table rows are then updated by `update`'s TF ops."""
        return None

    def get_config(self) -> dict[str, Any]:
        cfg = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"class": type(self).__name__, **cfg}

    @property
    def num_slots(self) -> int:
        return len(self.slot_names)

    # -- dense variables ------------------------------------------------------------------
    def build_dense(
        self, variables: list[Any], strategy: tf.distribute.Strategy | None = None
    ) -> None:
        """Create slot variables next to each dense variable (call under the strategy scope)."""
        for v in variables:
            if id(v) in self._dense_slots:
                continue
            init = self.initial_slot_values()
            slots = []
            for name, value in zip(self.slot_names, init, strict=True):
                if strategy is not None:
                    with strategy.extended.colocate_vars_with(_tf_var(v)):
                        s = tf.Variable(tf.fill(v.shape, value), trainable=False, name=f"{name}")
                else:
                    s = tf.Variable(tf.fill(v.shape, value), trainable=False, name=f"{name}")
                slots.append(s)
            self._dense_slots[id(v)] = slots

    def dense_slots(self, variable: Any) -> list[tf.Variable]:
        return self._dense_slots[id(variable)]

    def _slots_of(self, v: Any) -> list[tf.Variable]:
        slots = self._dense_slots.get(id(v))
        if slots is None:
            raise RuntimeError(
                f"vlps optimizer: variable {getattr(v, 'path', v.name)} has no slots; "
                "call build_dense(variables) first (vlps.Trainer does this)"
            )
        return slots

    def apply_dense(self, grads_and_vars: list[tuple[Any, Any]], step: tf.Tensor) -> None:
        """Apply the rule to dense variables where they live (works inside PS functions).

        SGD and Adagrad on float32 variables: one `VlpsDenseApply` per device for all its
        variables, from their gradients concatenated; other rules: the rule's TF ops."""
        pairs = [(tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g, v)
                 for g, v in grads_and_vars if g is not None]
        if self.native_rule() is not None and all(v.dtype == tf.float32 for _, v in pairs):
            by_device: dict[str, list[tuple[Any, Any]]] = {}
            for g, v in pairs:
                by_device.setdefault(getattr(_tf_var(v), "device", "") or "", []).append((g, v))
            for device, group in by_device.items():
                flat = tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g, _ in group], 0)
                self.apply_dense_flat([v for _, v in group], flat, device or None)
            return
        for g, v in pairs:
            slots = self._slots_of(v)
            # On a cluster the update runs where the variable lives (a ps task): only the
            # gradient crosses the network, not the variable, its slots and their new values.
            with device_scope(getattr(_tf_var(v), "device", None) or None):
                new_v, new_slots = self.update(tf.convert_to_tensor(v),
                                               [s.read_value() for s in slots],
                                               tf.cast(g, v.dtype), step)
                for s, ns in zip(slots, new_slots, strict=True):
                    s.assign(ns)
                v.assign(new_v)

    def apply_dense_flat(self, variables: list[Any], flat: tf.Tensor,
                         device: str | None) -> None:
        """The fused rule (`native_rule`) on float32 `variables` that all live on `device`,
        from their gradients flattened and concatenated in order: one op there."""
        fused = self.native_rule()
        assert fused is not None, "apply_dense_flat needs an optimizer with a native rule"
        rule, attrs = fused
        handles = [_tf_var(v).handle for v in variables]
        slots = [s.handle for v in variables for s in self._slots_of(v)]
        with device_scope(device):
            native.ops().vlps_dense_apply(handles, slots, flat, rule=rule, **attrs)


def _tf_var(v: Any) -> Any:
    # Keras 3 variables wrap a tf.Variable in `.value`; colocation needs the tf.Variable (a
    # tf.Variable's own `.value` is a method).
    inner = getattr(v, "value", None)
    return inner if isinstance(inner, tf.Variable) else v


class SGD(Optimizer):
    def __init__(self, learning_rate: float = 0.01) -> None:
        super().__init__(learning_rate)

    def update(self, var, slots, grad, step):
        return var - self.learning_rate * grad, []

    def native_rule(self):
        return "sgd", {"learning_rate": self.learning_rate}


class Adagrad(Optimizer):
    """keras.optimizers.Adagrad: accum += g^2; var -= lr * g / sqrt(accum + epsilon)."""

    slot_names = ("accumulator",)

    def __init__(
        self, learning_rate: float = 0.001, initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
    ) -> None:
        super().__init__(learning_rate)
        if initial_accumulator_value < 0:
            raise ValueError("Adagrad: initial_accumulator_value must be >= 0")
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def initial_slot_values(self):
        return (self.initial_accumulator_value,)

    def update(self, var, slots, grad, step):
        accum = slots[0] + tf.square(grad)
        return var - (self.learning_rate * grad) / tf.sqrt(accum + self.epsilon), [accum]

    def native_rule(self):
        return "adagrad", {"learning_rate": self.learning_rate, "epsilon": self.epsilon}


class Adam(Optimizer):
    """keras.optimizers.Adam (without amsgrad), bias-corrected with the global step."""

    slot_names = ("m", "v")

    def __init__(
        self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        super().__init__(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def update(self, var, slots, grad, step):
        t = tf.cast(step, var.dtype)
        b1p = tf.pow(tf.constant(self.beta_1, var.dtype), t)
        b2p = tf.pow(tf.constant(self.beta_2, var.dtype), t)
        alpha = self.learning_rate * tf.sqrt(1 - b2p) / (1 - b1p)
        m = slots[0] + (grad - slots[0]) * (1 - self.beta_1)
        v = slots[1] + (tf.square(grad) - slots[1]) * (1 - self.beta_2)
        return var - (m * alpha) / (tf.sqrt(v) + self.epsilon), [m, v]


class Ftrl(Optimizer):
    """keras.optimizers.Ftrl (FTRL-Proximal, McMahan et al. 2013)."""

    slot_names = ("accumulator", "linear")

    def __init__(
        self, learning_rate: float = 0.001, learning_rate_power: float = -0.5,
        initial_accumulator_value: float = 0.1, l1_regularization_strength: float = 0.0,
        l2_regularization_strength: float = 0.0, l2_shrinkage_regularization_strength: float = 0.0,
        beta: float = 0.0,
    ) -> None:
        super().__init__(learning_rate)
        if learning_rate_power > 0:
            raise ValueError("Ftrl: learning_rate_power must be <= 0")
        self.learning_rate_power = float(learning_rate_power)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.l1_regularization_strength = float(l1_regularization_strength)
        self.l2_regularization_strength = float(l2_regularization_strength)
        self.l2_shrinkage_regularization_strength = float(l2_shrinkage_regularization_strength)
        self.beta = float(beta)

    def initial_slot_values(self):
        return (self.initial_accumulator_value, 0.0)

    def update(self, var, slots, grad, step):
        lr, p = self.learning_rate, self.learning_rate_power
        accum, linear = slots
        l2 = self.l2_regularization_strength + self.beta / (2.0 * lr)
        grad_to_use = grad + 2 * self.l2_shrinkage_regularization_strength * var
        new_accum = accum + tf.square(grad)
        linear = linear + (grad_to_use - ((tf.pow(new_accum, -p) - tf.pow(accum, -p)) / lr) * var)
        quadratic = tf.pow(new_accum, -p) / lr + 2 * l2
        l1 = self.l1_regularization_strength
        linear_clipped = tf.clip_by_value(linear, -l1, l1)
        return (linear_clipped - linear) / quadratic, [new_accum, linear]


_BY_NAME: dict[str, Any] = {
    "sgd": SGD, "adagrad": Adagrad, "adam": Adam, "ftrl": Ftrl,
}


def get(spec: str | Optimizer | None) -> Optimizer:
    if spec is None:
        return Adagrad(learning_rate=0.05)
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str) and spec.lower() in _BY_NAME:
        return _BY_NAME[spec.lower()]()
    raise ValueError(f"unknown vlps optimizer {spec!r}: use one of {sorted(_BY_NAME)}")


def from_config(config: dict[str, Any]) -> Optimizer:
    cfg = dict(config)
    cls = _BY_NAME[cfg.pop("class").lower()]
    return cls(**cfg)
