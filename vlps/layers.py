"""`DynamicEmbedding`, the Keras 3 layer over an `EmbeddingTable`, and the gradient capture
that turns a forward pass into per-table sparse pushes.

The layer de-duplicates the batch's ids, pulls each unique id once and gathers. Under
`capture(tape)` it also records (table, unique ids, pulled embeddings) and watches the pulled
tensor, so `tape.gradient` yields one gradient row per unique id, already summed over the
id's occurrences; `apply_sparse_gradients` pushes them.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from vlps import native
from vlps.hashing import hash_strings
from vlps.table import Admission, EmbeddingTable, Eviction

_local = threading.local()


@dataclass
class Capture:
    """Pulled embeddings of one forward pass, in call order."""

    tape: tf.GradientTape
    records: list[tuple[EmbeddingTable, tf.Tensor, tf.Tensor]] = field(default_factory=list)

    @property
    def pulled(self) -> list[tf.Tensor]:
        return [r[2] for r in self.records]


@contextlib.contextmanager
def capture(tape: tf.GradientTape) -> Iterator[Capture]:
    """Record the pulls of DynamicEmbedding layers called inside, for `tape.gradient`."""
    cap = Capture(tape)
    prev = getattr(_local, "capture", None)
    _local.capture = cap
    try:
        yield cap
    finally:
        _local.capture = prev


# Layers called on the same id tensor in one graph (e.g. the deep and the wide table of a
# Wide&Deep model) share its `tf.unique`: the profile in docs/vlps.md found the second one to
# cost as much as the first. Keyed by graph (weakly) and the input tensor.
_uniques: weakref.WeakKeyDictionary[Any, dict[Any, tuple[tf.Tensor, tf.Tensor]]] = \
    weakref.WeakKeyDictionary()


def _shared_unique(inputs: Any, key_dtype: str) -> tuple[tf.Tensor, tf.Tensor] | None:
    if tf.executing_eagerly() or not isinstance(inputs, tf.Tensor):
        return None
    cache = _uniques.get(tf.compat.v1.get_default_graph())
    return cache.get((inputs.ref(), key_dtype)) if cache is not None else None


def _remember_unique(inputs: Any, key_dtype: str, value: tuple[tf.Tensor, tf.Tensor]) -> None:
    if tf.executing_eagerly() or not isinstance(inputs, tf.Tensor):
        return
    graph = tf.compat.v1.get_default_graph()
    _uniques.setdefault(graph, {})[(inputs.ref(), key_dtype)] = value


# Features whose unique the input pipeline computed (`with_uniques`) carry it in two extra
# entries of the features dict; `take_uniques` removes them before the model sees the dict.
UNIQUE_KEY = "__vlps_unique__/"
UNIQUE_IDX_KEY = "__vlps_unique_idx__/"


def unique_feature_keys(model: Any, features: Any) -> list[str]:
    """Keys of the `features` dict whose tensor reaches a DynamicEmbedding layer unchanged
    (int ids, no combiner): their `tf.unique` can run in the input pipeline, ahead of the step.

    Found by calling the model once (eagerly, not training) and recording the tensors the
    layers receive; a feature the model transforms first is not listed (its layer keeps
    computing its own unique)."""
    if not isinstance(features, dict):
        return []
    seen: list[Any] = []
    prev = getattr(_local, "recording", None)
    _local.recording = seen
    try:
        model(features, training=False)
    finally:
        _local.recording = prev
    return sorted(k for k, v in features.items()
                  if isinstance(k, str) and any(v is s for s in seen))


def with_uniques(keys: list[str]) -> Any:
    """A `Dataset.map` function adding the unique ids (and the index of each occurrence) of
    each feature in `keys` to a (features, labels...) element."""

    def add(features: Any, *rest: Any) -> Any:
        features = dict(features)
        for k in keys:
            unique, idx = native.unique(tf.reshape(tf.cast(features[k], tf.int64), [-1]))
            features[UNIQUE_KEY + k] = unique
            features[UNIQUE_IDX_KEY + k] = idx
        return (features, *rest)

    return add


def take_uniques(features: Any) -> Any:
    """Remove the entries `with_uniques` added and make the layers of the graph being built
    use them for their features (instead of a `tf.unique` of their own)."""
    if not isinstance(features, dict) or not any(
            isinstance(k, str) and k.startswith(UNIQUE_KEY) for k in features):
        return features
    out = {k: v for k, v in features.items()
           if not (isinstance(k, str) and k.startswith((UNIQUE_KEY, UNIQUE_IDX_KEY)))}
    for k, v in out.items():
        if isinstance(k, str) and UNIQUE_KEY + k in features:
            _remember_unique(v, "int64", (features[UNIQUE_KEY + k], features[UNIQUE_IDX_KEY + k]))
    return out


def training_gather(columns: tuple[int, ...]) -> Any:
    """The training gather of one layer's column groups, with its gradient.

    Forward: one output per column group, row `idx[j]` of the pulled unique rows at row j
    (`VlpsGatherColumns`, one pass over the occurrences: no split of the unique rows, no
    `tf.gather` per group). Backward: the outputs' gradients summed per unique row, as whole
    rows (`VlpsSegmentSumColumns`: each row's terms in occurrence order from zero, the same
    bits as `tf.math.unsorted_segment_sum` of each group and their concatenation, on all CPU
    worker threads). They replace a split, a gather per group, an XLA-compiled segment sum
    (one thread), a slice and a concatenation (docs/vlps.md)."""
    fn = _GATHERS.get(columns)
    if fn is not None:
        return fn
    kernels = native.ops()

    @tf.custom_gradient
    def gather(rows: tf.Tensor, idx: tf.Tensor) -> Any:
        def grad(*dys: tf.Tensor) -> tuple[tf.Tensor, None]:
            sums = kernels.vlps_segment_sum_columns(
                [tf.convert_to_tensor(d, tf.float32) for d in dys], idx, tf.shape(rows)[0],
                columns=list(columns))
            return sums, None

        return list(kernels.vlps_gather_columns(rows, idx, columns=list(columns),
                                                K=len(columns))), grad

    _GATHERS[columns] = gather
    return gather


_GATHERS: dict[tuple[int, ...], Any] = {}


def _serving_tables() -> dict[str, Any]:
    return getattr(_local, "serving", None) or {}


@contextlib.contextmanager
def serving_tables(tables: dict[str, Any]) -> Iterator[None]:
    """Make DynamicEmbedding layers read these frozen tables (by table name); used by export."""
    prev = getattr(_local, "serving", None)
    _local.serving = tables
    try:
        yield
    finally:
        _local.serving = prev


def _record(table: EmbeddingTable, ids: tf.Tensor, emb: tf.Tensor) -> None:
    cap: Capture | None = getattr(_local, "capture", None)
    if cap is not None:
        cap.tape.watch(emb)
        cap.records.append((table, ids, emb))


def apply_sparse_gradients(cap: Capture, grads: list[Any], step: tf.Tensor) -> None:
    """Push the gradients of `cap.pulled` (same order): one push per table, per-id sums."""
    by_table: dict[int, tuple[EmbeddingTable, list[tf.Tensor], list[tf.Tensor]]] = {}
    for (table, ids, _), g in zip(cap.records, grads, strict=True):
        if g is None:
            continue
        g = tf.convert_to_tensor(g)
        entry = by_table.setdefault(id(table), (table, [], []))
        entry[1].append(ids)
        entry[2].append(g)
    for table, ids_list, g_list in by_table.values():
        if len(ids_list) == 1:
            table.push(ids_list[0], g_list[0], step)
            continue
        # A table shared by several layers: aggregate per unique id across them first.
        ids = tf.concat(ids_list, 0)
        unique, idx = native.unique(ids)
        g = tf.math.unsorted_segment_sum(tf.concat(g_list, 0), idx, tf.size(unique))
        table.push(unique, g, step)


class DynamicEmbedding(keras.layers.Layer):
    """Embedding without a vocabulary: int64 (or string) ids, rows created on first sight.

    Inputs: a dense id tensor of any shape (output appends `dim`), or — with `combiner`
    "sum"/"mean" — a multi-valued field as `tf.RaggedTensor` [batch, None], `tf.SparseTensor`
    [batch, n] or a dense [batch, n] tensor, reduced to [batch, dim].

    `columns` (widths adding up to `dim`) splits each row into column groups and returns one
    output per group, e.g. `columns=(16, 1)` for the deep embedding and the wide weight of a
    Wide&Deep model kept in one row: one hash lookup and one insert per id for both, and the
    split happens on the unique rows, before the gather.

    Training must go through `vlps.Trainer`, `vlps.train_step` or `vlps.Model.fit`, which push
    the sparse gradients; a plain Keras optimizer never sees the table.
    """

    def __init__(
        self, dim: int, *, combiner: str | None = None, key_dtype: str = "int64",
        optimizer: Any = None, initializer: Any = None, admission: Admission | None = None,
        eviction: Eviction | None = None, num_shards: int | None = None,
        initial_rows_per_shard: int | None = None, table_name: str | None = None,
        columns: tuple[int, ...] | list[int] | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if combiner not in (None, "sum", "mean"):
            raise ValueError(f"DynamicEmbedding '{self.name}': combiner must be None, 'sum' or "
                             f"'mean', got {combiner!r}")
        if key_dtype not in ("int64", "string"):
            raise ValueError(f"DynamicEmbedding '{self.name}': key_dtype must be 'int64' or "
                             f"'string', got {key_dtype!r}")
        if columns is not None:
            columns = tuple(int(c) for c in columns)
            if not columns or min(columns) <= 0 or sum(columns) != dim:
                raise ValueError(f"DynamicEmbedding '{self.name}': columns must be widths > 0 "
                                 f"adding up to dim {dim}, got {columns!r}")
        self.columns = columns
        self.dim = dim
        self.combiner = combiner
        self.key_dtype = key_dtype
        self.table = EmbeddingTable(
            table_name or self.name, dim, optimizer=optimizer, initializer=initializer,
            admission=admission, eviction=eviction, num_shards=num_shards,
            initial_rows_per_shard=initial_rows_per_shard,
        )
        self.built = True

    def _keys(self, values: Any) -> tf.Tensor:
        dtype = values.dtype
        if self.key_dtype == "string":
            if dtype != tf.string:
                raise TypeError(f"vlps table '{self.table.name}': key_dtype='string' expects "
                                f"string ids, got {dtype.name}")
            return hash_strings(values)
        if dtype not in (tf.int64, tf.int32):
            raise TypeError(
                f"vlps table '{self.table.name}': ids must be int64 (or int32), got {dtype.name}"
                + ("; set key_dtype='string' for string features" if dtype == tf.string else "")
            )
        return tf.cast(values, tf.int64)

    def _check_batch(self, nrows: Any) -> list[Any]:
        static = tf.get_static_value(nrows)
        msg = f"vlps table '{self.table.name}': empty batch (0 rows)"
        if static is not None:
            if int(static) == 0:
                raise ValueError(msg)
            return []
        return [tf.debugging.assert_positive(nrows, message=msg)]

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        training = bool(training)
        if isinstance(inputs, tf.RaggedTensor | tf.SparseTensor) and self.combiner is None:
            raise ValueError(
                f"vlps table '{self.table.name}': got a {type(inputs).__name__} (multi-valued "
                "field) but the layer has no combiner; pass combiner='sum' or 'mean'"
            )
        if isinstance(inputs, tf.RaggedTensor):
            if inputs.ragged_rank != 1:
                raise ValueError(f"vlps table '{self.table.name}': ragged ids must be "
                                 f"[batch, None], got ragged_rank {inputs.ragged_rank}")
            nrows = inputs.nrows()
            values, segments = inputs.values, inputs.value_rowids()
        elif isinstance(inputs, tf.SparseTensor):
            nrows = inputs.dense_shape[0]
            values, segments = inputs.values, inputs.indices[:, 0]
        else:
            inputs = tf.convert_to_tensor(inputs)
            if inputs.shape.rank == 0:
                raise ValueError(f"vlps table '{self.table.name}': ids must have a batch "
                                 "dimension, got a scalar")
            nrows = tf.shape(inputs, out_type=tf.int64)[0]
            if self.combiner is not None:
                if inputs.shape.rank != 2:
                    raise ValueError(f"vlps table '{self.table.name}': a combiner needs "
                                     f"[batch, n] ids, got shape {inputs.shape}")
                width = tf.shape(inputs, out_type=tf.int64)[1]
                values = tf.reshape(inputs, [-1])
                segments = tf.range(tf.size(values, out_type=tf.int64)) // tf.maximum(width, 1)
            else:
                values, segments = tf.reshape(inputs, [-1]), None
        checks = self._check_batch(nrows)
        recording = getattr(_local, "recording", None)
        if recording is not None and segments is None and self.key_dtype == "int64" \
                and values.dtype in (tf.int64, tf.int32):
            recording.append(inputs)
        serving = _serving_tables().get(self.table.name)
        unique_idx = _shared_unique(inputs, self.key_dtype) if segments is None else None
        if unique_idx is None:
            with tf.control_dependencies(checks):
                keys = self._keys(values)
            # An exported model serves with plain TensorFlow: no vlps op in its graph.
            unique, idx = tf.unique(keys) if serving is not None else native.unique(keys)
            if segments is None:
                _remember_unique(inputs, self.key_dtype, (unique, idx))
        else:
            unique, idx = unique_idx
        if serving is not None:
            emb_u = serving.lookup(unique)
            training = False
        else:
            emb_u = self.table.pull(unique, training=training)
        if training:
            _record(self.table, unique, emb_u)
        columns = self.columns or (self.dim,)
        if training and segments is None:
            flat = training_gather(columns)(emb_u, idx)
            shape = tf.shape(inputs)
            outs = []
            for w, emb in zip(columns, flat, strict=True):
                out = tf.reshape(emb, tf.concat([shape, [w]], 0))
                out.set_shape(inputs.shape.concatenate([w]))
                outs.append(out)
            return outs if self.columns is not None else outs[0]
        # Split the unique rows (not the batch's rows) into the column groups.
        parts = tf.split(emb_u, list(columns), axis=1) if self.columns is not None else [emb_u]
        outs = [self._gathered(p, w, idx, inputs, segments, nrows)
                for p, w in zip(parts, columns, strict=True)]
        return outs if self.columns is not None else outs[0]

    def _gathered(self, emb_u: tf.Tensor, width: int, idx: tf.Tensor, inputs: Any,
                  segments: Any, nrows: Any) -> tf.Tensor:
        emb = tf.gather(emb_u, idx)
        if segments is None:
            shape = tf.concat([tf.shape(inputs), [width]], 0)
            out = tf.reshape(emb, shape)
            out.set_shape(inputs.shape.concatenate([width]))
            return out
        total = tf.math.unsorted_segment_sum(emb, segments, nrows)
        if self.combiner == "mean":
            ones = tf.ones_like(segments, tf.float32)
            count = tf.math.unsorted_segment_sum(ones, segments, nrows)
            total = total / tf.maximum(count, 1.0)[:, None]
        return total

    def compute_output_spec(self, inputs: Any, training: Any = None) -> keras.KerasTensor:
        # Keras would otherwise trace `call` symbolically and touch the tables.
        shape = tuple(inputs.shape)
        specs = [keras.KerasTensor((shape[0], w) if self.combiner else (*shape, w),
                                   dtype="float32") for w in (self.columns or (self.dim,))]
        return specs if self.columns is not None else specs[0]

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.update(dim=self.dim, combiner=self.combiner, key_dtype=self.key_dtype,
                   columns=list(self.columns) if self.columns else None)
        return cfg


def dynamic_embeddings(model: keras.Model) -> list[DynamicEmbedding]:
    """The DynamicEmbedding layers of a model, depth first (stable order for checkpoints)."""
    found: list[DynamicEmbedding] = []
    seen: set[int] = set()

    def walk(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, DynamicEmbedding):
            found.append(layer)
        flatten = getattr(layer, "_flatten_layers", None)
        subs = flatten(include_self=False, recursive=False) if flatten else []
        for sub in subs:
            walk(sub)

    walk(model)
    return found


def tables_of(model: keras.Model) -> list[EmbeddingTable]:
    out: list[EmbeddingTable] = []
    for layer in dynamic_embeddings(model):
        if all(t is not layer.table for t in out):
            out.append(layer.table)
    return out
