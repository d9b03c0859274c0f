"""Per-id initializers: the value a row gets the first time its id is seen.

Keras initializers draw one random tensor per call; a dynamic table needs a value that is a
function of the id alone (pull and push may run in different processes, a restore may move the id
to another shard). These initializers derive their randomness from `hashing.uniform01(id, seed)`.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from vlps.hashing import uniform01


class Initializer:
    """Base class: `__call__(ids, dim)` returns float32 [len(ids), dim]."""

    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        raise NotImplementedError

    def native_groups(self, dim: int) -> list[tuple[int, str, float, float, int]] | None:
        """The same initial values as column groups (width, kind, a, b, seed) that the table
        kernel computes itself while it looks rows up (`VlpsHashTableFindOrInit`), or None
        when the kernel has no such kind: the table then fills new rows with `__call__`.
        Kinds: "zeros", "constant" (a = the value), "uniform" (a = minval, b = maxval -
        minval, the float32 constants `__call__` multiplies and adds)."""
        return None

    def _overridden(self, cls: type[Initializer]) -> bool:
        """A subclass that computes its own values: the kernel's groups would not match."""
        return type(self).__call__ is not cls.__call__

    def get_config(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **vars(self)}


class Zeros(Initializer):
    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        return tf.zeros([tf.shape(ids)[0], dim], tf.float32)

    def native_groups(self, dim: int) -> list[tuple[int, str, float, float, int]] | None:
        return None if self._overridden(Zeros) else [(dim, "zeros", 0.0, 0.0, 0)]


class Constant(Initializer):
    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        return tf.fill([tf.shape(ids)[0], dim], tf.constant(self.value, tf.float32))

    def native_groups(self, dim: int) -> list[tuple[int, str, float, float, int]] | None:
        return None if self._overridden(Constant) else [(dim, "constant", self.value, 0.0, 0)]


class RandomUniform(Initializer):
    """Uniform in [minval, maxval); the default (-0.05, 0.05) matches keras.layers.Embedding."""

    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int = 0) -> None:
        if not maxval > minval:
            raise ValueError(f"RandomUniform needs maxval > minval, got {minval}, {maxval}")
        self.minval, self.maxval, self.seed = float(minval), float(maxval), int(seed)

    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        u = uniform01(ids, self.seed, dim)
        return self.minval + (self.maxval - self.minval) * u

    def native_groups(self, dim: int) -> list[tuple[int, str, float, float, int]] | None:
        if self._overridden(RandomUniform):
            return None
        return [(dim, "uniform", self.minval, self.maxval - self.minval, self.seed)]


class RandomNormal(Initializer):
    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int = 0) -> None:
        self.mean, self.stddev, self.seed = float(mean), float(stddev), int(seed)

    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        u = uniform01(ids, self.seed, dim)
        return self.mean + self.stddev * tf.math.ndtri(u)


class TruncatedNormal(Initializer):
    """Normal truncated to two standard deviations, by inverse CDF (no rejection loop)."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int = 0) -> None:
        self.mean, self.stddev, self.seed = float(mean), float(stddev), int(seed)

    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        lo = 0.5 * (1.0 + math.erf(-2.0 / math.sqrt(2.0)))
        u = lo + (1.0 - 2.0 * lo) * uniform01(ids, self.seed, dim)
        return self.mean + self.stddev * tf.math.ndtri(u)


class Columns(Initializer):
    """Consecutive column groups with an initializer each, e.g. a row that stores a deep
    embedding and a wide weight of the same id: `Columns([(16, "uniform"), (1, "zeros")])`.
    The group widths must add up to the table's dim."""

    def __init__(self, groups: list[tuple[int, Any]]) -> None:
        if not groups or any(int(w) <= 0 for w, _ in groups):
            raise ValueError(f"Columns needs (width > 0, initializer) groups, got {groups!r}")
        self.groups = [(int(w), get(init)) for w, init in groups]

    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        total = sum(w for w, _ in self.groups)
        if total != dim:
            raise ValueError(f"Columns initializer covers {total} columns, the table has {dim}")
        return tf.concat([init(ids, w) for w, init in self.groups], 1)

    def native_groups(self, dim: int) -> list[tuple[int, str, float, float, int]] | None:
        if self._overridden(Columns) or sum(w for w, _ in self.groups) != dim:
            return None  # a sum that does not match: __call__ raises the error
        out: list[tuple[int, str, float, float, int]] = []
        for w, init in self.groups:
            part = init.native_groups(w)
            if part is None:
                return None
            out += part
        return out

    def get_config(self) -> dict[str, Any]:
        return {"class": "Columns",
                "groups": [[w, init.get_config()] for w, init in self.groups]}


_BY_NAME: dict[str, type[Initializer]] = {
    "zeros": Zeros,
    "constant": Constant,
    "uniform": RandomUniform,
    "random_uniform": RandomUniform,
    "normal": RandomNormal,
    "random_normal": RandomNormal,
    "truncated_normal": TruncatedNormal,
}


def get(spec: str | Initializer | None) -> Initializer:
    """An initializer from a name ("zeros", "uniform", "normal", ...) or an instance."""
    if spec is None:
        return RandomUniform()
    if isinstance(spec, Initializer):
        return spec
    if isinstance(spec, str) and spec.lower() in _BY_NAME:
        return _BY_NAME[spec.lower()]()
    raise ValueError(
        f"unknown vlps initializer {spec!r}: use one of {sorted(_BY_NAME)} or a "
        "vlps.initializers.Initializer instance (Keras initializers are not per-id)"
    )
