"""Reference CTR models (Wide & Deep) over `vlps.data.synthetic_ctr`-shaped inputs: the
vlps model, and the baseline users would otherwise write (Keras Hashing + Embedding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from vlps.layers import DynamicEmbedding
from vlps.table import Admission, Eviction


def _inputs(num_fields: int, num_dense: int) -> dict[str, keras.KerasTensor]:
    return {
        "cat": keras.Input(shape=(num_fields,), dtype="int64", name="cat"),
        "num": keras.Input(shape=(num_dense,), dtype="float32", name="num"),
    }


class ConcatDense(keras.layers.Layer):
    """`Dense(units, activation="relu")` over `concatenate([a, b])`, without the
    concatenation: relu(a @ kernel_a + (b @ kernel_b + bias)), the same function with the joint
    kernel split by rows. The concatenation copies `a` in the forward pass and its gradient
    slices the copy back out in the backward pass. With `a` the flattened embeddings of a batch
    (4096 x 416 floats) the two copies took 3.2 ms of a traced 4096-sample step (docs/vlps.md,
    "The first layer without the concatenation"). The kernels start as one Glorot-uniform
    kernel of the joint fan-in would."""

    def __init__(self, units: int, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units, self.seed = int(units), int(seed)

    def build(self, a_shape: Any, b_shape: Any) -> None:
        fan_in = int(a_shape[-1]) + int(b_shape[-1])
        limit = (6.0 / (fan_in + self.units)) ** 0.5

        def init(seed: int) -> keras.initializers.Initializer:
            return keras.initializers.RandomUniform(-limit, limit, seed=seed)

        self.kernel_a = self.add_weight(shape=(int(a_shape[-1]), self.units),
                                        initializer=init(self.seed), name="kernel_a")
        self.kernel_b = self.add_weight(shape=(int(b_shape[-1]), self.units),
                                        initializer=init(self.seed + 50), name="kernel_b")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, a: Any, b: Any) -> Any:
        ops = keras.ops
        return ops.relu(ops.matmul(a, self.kernel_a) + (ops.matmul(b, self.kernel_b) + self.bias))

    def compute_output_shape(self, a_shape: Any, b_shape: Any) -> tuple[Any, ...]:
        return (*a_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "seed": self.seed}


def _head(emb: Any, wide: Any, dense: Any, num_fields: int, dim: int,
          hidden: Sequence[int], seed: int) -> Any:
    flat = keras.layers.Reshape((num_fields * dim,))(emb)
    if not hidden:
        x = keras.layers.Concatenate()([flat, dense])
    else:
        x = ConcatDense(hidden[0], seed)(flat, dense)
    for i, h in enumerate(hidden[1:], 1):
        x = keras.layers.Dense(h, activation="relu",
                               kernel_initializer=keras.initializers.GlorotUniform(seed + i))(x)
    deep = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed + 99))(x)
    wide_sum = keras.layers.Lambda(lambda w: keras.ops.sum(w, axis=(1, 2))[:, None])(wide)
    return keras.layers.Activation("sigmoid")(keras.layers.Add()([deep, wide_sum]))


def wide_deep(
    *, dim: int = 16, num_fields: int = 26, num_dense: int = 13, hidden: Sequence[int] = (256, 128),
    optimizer: Any = "adagrad", learning_rate: float = 0.05, admission: Admission | None = None,
    eviction: Eviction | None = None, seed: int = 0, initial_rows_per_shard: int | None = None,
    num_shards: int | None = None, fused: bool = True,
) -> keras.Model:
    """Wide & Deep: a deep embedding (dim `dim`, uniform init) and a wide weight (dim 1, zero
    init) per id, over the same id fields.

    `fused` (default) keeps both in one table row, [deep | wide], read by one layer with two
    column groups: one hash lookup and one insert per id and step instead of two (table
    "emb", dim + 1). The optimizers are element-wise, so training is the same as with two tables
    (`fused=False`: tables "deep_emb" and "wide_emb")."""
    from vlps import initializers, optimizers

    def opt() -> Any:
        if isinstance(optimizer, optimizers.Optimizer):
            # An instance carries all its hyperparameters (learning_rate is then ignored).
            return type(optimizer)(**{k: v for k, v in vars(optimizer).items()
                                      if not k.startswith("_")})
        return optimizers.get(optimizer).__class__(learning_rate=learning_rate)

    inputs = _inputs(num_fields, num_dense)
    common: dict[str, Any] = dict(admission=admission, eviction=eviction,
                                  initial_rows_per_shard=initial_rows_per_shard,
                                  num_shards=num_shards)
    if fused:
        emb, wide = DynamicEmbedding(
            dim + 1, name="emb", optimizer=opt(), columns=(dim, 1),
            initializer=initializers.Columns([(dim, "uniform"), (1, "zeros")]), **common,
        )(inputs["cat"])
    else:
        emb = DynamicEmbedding(dim, name="deep_emb", optimizer=opt(), **common)(inputs["cat"])
        wide = DynamicEmbedding(1, name="wide_emb", optimizer=opt(), initializer="zeros",
                                **common)(inputs["cat"])
    out = _head(emb, wide, inputs["num"], num_fields, dim, hidden, seed)
    return keras.Model(inputs, out, name="vlps_wide_deep")


def hashed_wide_deep(
    *, num_bins: int, dim: int = 16, num_fields: int = 26, num_dense: int = 13,
    hidden: Sequence[int] = (256, 128), seed: int = 0,
) -> keras.Model:
    """The baseline: keras.layers.Hashing into `num_bins` + keras.layers.Embedding."""
    inputs = _inputs(num_fields, num_dense)
    bins = keras.layers.Hashing(num_bins)(inputs["cat"])
    emb = keras.layers.Embedding(num_bins, dim)(bins)
    wide = keras.layers.Embedding(num_bins, 1, embeddings_initializer="zeros")(bins)
    out = _head(emb, wide, inputs["num"], num_fields, dim, hidden, seed)
    return keras.Model(inputs, out, name="hashed_wide_deep")
