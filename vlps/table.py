"""`EmbeddingTable`: a dynamic embedding table sharded over vlps's own hash tables.

One row per id holds, in one float32 vector, the embedding, the optimizer slots and the step of
the row's last update:  [ embedding (dim) | slot_1 (dim) | ... | slot_k (dim) | last_step ].
Keeping them in one hash-table value is what makes checkpoints consistent: an insert replaces
the whole row under the table's lock, and an export copies whole rows under the same lock.

Shards are `VlpsHashTable`s (`vlps/kernels/hash_table.cc`, used through TensorFlow's lookup
ops) placed on the ps devices of the current `Placement`; an id belongs to shard
`hashing.shard_of(id, num_shards)`. Every int64 id is usable; the kernel runs finds and the
slot search of inserts on the CPU worker threads with the loads issued ahead.

Longer than 500 lines because lookup, update, admission, eviction and export all read and write
the same packed row layout under the same shard locks; split apart, each part would have to
re-derive the layout and the locking rules that keep checkpoints consistent.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import tensorflow as tf

from vlps import initializers as initializers_mod
from vlps import native
from vlps import optimizers as optimizers_mod
from vlps.hashing import shard_of, uniform01
from vlps.placement import current_placement, device_scope

#: Names of the per-shard counters, in the order of `EmbeddingTable.counters()`.
COUNTER_NAMES = ("created", "not_admitted", "evicted_ttl", "evicted_cap")


@dataclass(frozen=True)
class Admission:
    """Which new ids get a row. An id is admitted once seen `min_count` times (counted per
    training batch it appears in) and then, if `probability` < 1, with that probability per
    sighting. Ids not admitted yet embed as zeros and their gradients are dropped."""

    min_count: int = 1
    probability: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"Admission.min_count must be >= 1, got {self.min_count}")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"Admission.probability must be in (0, 1], got {self.probability}")

    @property
    def active(self) -> bool:
        return self.min_count > 1 or self.probability < 1.0


@dataclass(frozen=True)
class Eviction:
    """Which rows `EmbeddingTable.evict()` removes: rows not updated for `ttl_steps` steps (or
    `ttl_seconds`, translated to a step through the trainer's step/time history), then the
    least recently updated rows of any shard above `max_rows_per_shard`."""

    ttl_steps: int | None = None
    ttl_seconds: float | None = None
    max_rows_per_shard: int | None = None

    def __post_init__(self) -> None:
        for name in ("ttl_steps", "ttl_seconds", "max_rows_per_shard"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Eviction.{name} must be > 0, got {value}")


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise ValueError(
            f"vlps table name {name!r} must be non-empty letters, digits, '_', '-' or '.' "
            "(it becomes a checkpoint file name)"
        )
    return name


class _HashTable(tf.lookup.experimental.MutableHashTable):
    """vlps's own hash table (`vlps/kernels/hash_table.cc`, op `VlpsHashTable`) behind the
    `tf.lookup` interface: lookup, insert, remove, export and size are TensorFlow's generic
    lookup ops, run by the kernel's table."""

    def __init__(self, width: int, default_value: tf.Tensor, initial_num_buckets: int,
                 max_load_factor: float, name: str) -> None:
        self._width = width
        self._initial_num_buckets = int(initial_num_buckets)
        self._max_load_factor = float(max_load_factor)
        super().__init__(tf.int64, tf.float32, default_value=default_value, name=name)

    def _create_resource(self) -> tf.Tensor:
        ref = native.ops().vlps_hash_table(
            key_dtype=tf.int64, value_dtype=tf.float32, value_shape=[self._width],
            initial_num_buckets=self._initial_num_buckets,
            max_load_factor=self._max_load_factor,
            shared_name=self._shared_name or "", use_node_name_sharing=self._shared_name is None,
            name=self._name,
        )
        self._table_name = None if tf.executing_eagerly() else ref.op.name.split("/")[-1]
        return ref

    def buckets(self) -> tf.Tensor:
        """The table's current number of buckets (its memory is buckets x (8 B + row))."""
        return native.ops().vlps_hash_table_buckets(self.resource_handle)


def _init_attrs(groups: list[Any]) -> dict[str, list[Any]]:
    """The table kernels' initial-row attributes from `Initializer.native_groups`."""
    w, kinds, a, b, seeds = (list(x) for x in zip(*groups, strict=True))
    return {"init_widths": w, "init_kinds": kinds, "init_a": a, "init_b": b,
            "init_seeds": seeds}


class _Shard:
    """One shard: the rows' hash table, admission candidates, eviction tombstones and
    counters, all on one device."""

    def __init__(self, table: EmbeddingTable, index: int, device: str | None) -> None:
        self.index = index
        self.device = device
        self.width = table.width
        # Under ParameterServerStrategy tf.Variable ignores device scopes (its creator places
        # variables round robin over the ps tasks): `_variables_on` keeps the shard's own
        # variables on its task, or every push would cross between ps tasks.
        with device_scope(device), _variables_on(device, f"vlps_{table.name}_{index}"):
            # Made on the shard's device: lookups pass the default row to the kernel.
            default = tf.concat([tf.zeros([table.width - 1]),
                                 tf.bitcast(tf.constant([-1], tf.int32), tf.float32)], 0)
            # Pre-sizing matters for memory: the table doubles when its rows would pass
            # max_load_factor, so bytes/id swing between payload/max_load and twice that.
            self.main = _HashTable(
                table.width, default, initial_num_buckets=table.initial_buckets,
                max_load_factor=table.max_load_factor, name=f"vlps_{table.name}_{index}",
            )
            # Candidates: [count, last_step]; a MutableHashTable has no reserved keys.
            self.candidates = tf.lookup.experimental.MutableHashTable(
                tf.int64, tf.float32, default_value=tf.constant([0.0, -1.0]),
                name=f"vlps_{table.name}_{index}_cand",
            )
            # Keys evicted since the last checkpoint, so incremental checkpoints delete them.
            self.tombstones = tf.lookup.experimental.MutableHashTable(
                tf.int64, tf.int64, default_value=tf.constant(-1, tf.int64),
                name=f"vlps_{table.name}_{index}_tomb",
            )
            self.counters = tf.Variable(
                tf.zeros([len(COUNTER_NAMES)], tf.int64), trainable=False,
                name=f"vlps_{table.name}_{index}_counters",
            )
            # Bumped by every insert and remove: a push may reuse the rows its pull read in
            # the same graph only while the shard has not changed since (see EmbeddingTable).
            self.version = tf.Variable(
                tf.constant(0, tf.int64), trainable=False, name=f"vlps_{table.name}_{index}_ver")

    # -- raw row access -----------------------------------------------------------------------
    def lookup_rows(self, ids: tf.Tensor) -> tf.Tensor:
        """Rows of `ids`; a missing id gets the default row (zeros, last step -1)."""
        return self.main.lookup(ids)

    def insert_rows(self, ids: tf.Tensor, rows: tf.Tensor) -> None:
        """Insert (or replace) whole rows."""
        self.version.assign_add(1)
        self.main.insert(ids, rows)

    def apply_rows(self, ids: tf.Tensor, rows: tf.Tensor, grads: tf.Tensor, step: tf.Tensor,
                   dim: int, rule: str, attrs: dict[str, float]) -> None:
        """Write `rows` updated by the optimizer `rule` with `grads` at `step`, in the kernel
        (the fused form of update + concatenate + insert_rows)."""
        self.version.assign_add(1)
        native.ops().vlps_hash_table_apply(
            self.main.resource_handle, ids, rows, grads, tf.cast(step, tf.int64), rule=rule,
            dim=dim, **attrs)

    def find_or_init(self, ids: tf.Tensor, dim: int, groups: list[Any], slots: list[float],
                     whole_rows: bool = True) -> tuple[tf.Tensor, ...]:
        """Whole rows of `ids` with the initial rows of missing ids (none unless
        `whole_rows`), their embedding columns, how many were missing, and (without
        `whole_rows`) the ids' buckets and the table's generation for `apply_in_place`, in one
        kernel (`VlpsHashTableFindOrInit`)."""
        return tuple(native.ops().vlps_hash_table_find_or_init(
            self.main.resource_handle, ids, dim=dim, whole_rows=whole_rows,
            slot_values=slots, **_init_attrs(groups)))

    def apply_in_place(self, ids: tf.Tensor, grads: tf.Tensor, step: tf.Tensor, dim: int,
                       rule: str, attrs: dict[str, float], groups: list[Any],
                       slots: list[float], pulled: tuple[Any, ...] | None = None) -> tf.Tensor:
        """The optimizer `rule` on the current rows of unique `ids` where they lie, a new id's
        row first set to its initial row (`VlpsHashTableApplyInPlace`); returns how many ids
        were new. No pulled rows are needed, so the graph compares no version and has no cond:
        every row read is the row then written, under the table's lock. `pulled`: (embeddings,
        buckets, generation) of the pull of the same ids; the kernel uses them only if nothing
        changed the table since, and then neither searches the ids again nor recomputes the
        initial embeddings of new ids."""
        if pulled is None:
            emb, buckets, generation = (tf.zeros([0, dim]), tf.zeros([0], tf.int64),
                                        tf.constant(-1, tf.int64))
        else:
            emb, buckets, generation = pulled
        return native.ops().vlps_hash_table_apply_in_place(
            self.main.resource_handle, ids, grads, tf.cast(step, tf.int64), buckets,
            generation, emb, rule=rule, dim=dim, slot_values=slots, **attrs,
            **_init_attrs(groups))

    def remove_rows(self, ids: tf.Tensor) -> None:
        self.version.assign_add(1)
        self.main.remove(ids)

    def export_rows(self) -> tuple[tf.Tensor, tf.Tensor]:
        keys, rows = self.main.export()
        return tf.reshape(keys, [-1]), tf.reshape(rows, [-1, self.width])

    def size(self) -> tf.Tensor:
        """Live rows."""
        with device_scope(self.device):
            return self.main.size()

    def buckets(self) -> int:
        with device_scope(self.device):
            return int(self.main.buckets())


@contextlib.contextmanager
def _variables_on(device: str | None, name: str) -> Iterator[None]:
    """tf.Variables created inside (eagerly) go to `device`: ParameterServerStrategy's creator
    honours `colocate_with` (in eager mode: the device of the object given), not device
    scopes. `device` None: no change."""
    if device is None or not tf.executing_eagerly():
        yield
        return
    anchor = SimpleNamespace(device=device, name=name)

    def creator(next_creator: Any, **kwargs: Any) -> Any:
        kwargs["colocate_with"] = anchor
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


@contextlib.contextmanager
def _remote_control_flow(device: str | None) -> Iterator[None]:
    """While building a remote shard's ops: its conds and loops stay whole `If`/`While` ops,
    run by the shard's task, instead of being lowered into the caller's graph as Switch/Merge
    frames. Lowered, the graph partitioner splits each frame between worker and ps and pays a
    round trip per branch and loop iteration (pivots, loop conditions): most of the cluster's
    step time at small batches (see docs/vlps.md, "Cluster step overhead"). Local shards
    (one process) keep TF's default lowering."""
    if device is None or tf.executing_eagerly():
        yield
        return
    from tensorflow.python.ops import control_flow_util_v2 as cf  # TF's own switch for this

    before = getattr(cf, "_DISABLE_LOWER_USING_SWITCH_MERGE", None)
    if before is None:  # a TensorFlow without it: lowered as usual (slower, same results)
        yield
        return
    cf._DISABLE_LOWER_USING_SWITCH_MERGE = True
    try:
        yield
    finally:
        cf._DISABLE_LOWER_USING_SWITCH_MERGE = before


def _size_class(n: tf.Tensor) -> tf.Tensor:
    """The power of two >= n (at least 256): XLA-compiled functions see padded inputs of
    these sizes only, so they compile a few times, not once per batch."""
    bits = tf.math.ceil(tf.math.log(tf.cast(tf.maximum(n, 256), tf.float64)) / math.log(2.0))
    size = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.cast(bits, tf.int64))
    return tf.maximum(n, tf.cast(size, n.dtype))


def last_steps(rows: tf.Tensor) -> tf.Tensor:
    """The int32 step of each row's last update (-1 for a missing row)."""
    return tf.bitcast(rows[:, -1], tf.int32)


class EmbeddingTable:
    """A sharded dynamic embedding table keyed by int64 ids; rows appear on first sight.

    Args:
      name: unique within a model; names checkpoint files and error messages.
      dim: embedding width.
      optimizer: a `vlps.optimizers.Optimizer` (or "sgd", "adagrad", "adam", "ftrl") that the
        parameter server applies to rows on `push`.
      initializer: a `vlps.initializers.Initializer` or its name; a pure function of the id.
      admission / eviction: `Admission` / `Eviction` policies (default: admit all, never evict).
      num_shards: defaults to the number of ps tasks (1 without a cluster).
      initial_rows_per_shard: pre-size the hash tables (saves the doubling copies and memory).
    """

    def __init__(
        self, name: str, dim: int, optimizer: Any = None, initializer: Any = None,
        admission: Admission | None = None, eviction: Eviction | None = None,
        num_shards: int | None = None, initial_rows_per_shard: int | None = None,
        max_load_factor: float = 0.8,
    ) -> None:
        self.name = _check_name(name)
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"vlps table '{name}': dim must be a positive int, got {dim!r}")
        if num_shards is not None and num_shards <= 0:
            raise ValueError(f"vlps table '{name}': num_shards must be > 0, got {num_shards}")
        self.dim = dim
        self.optimizer = optimizers_mod.get(optimizer)
        self.initializer = initializers_mod.get(initializer)
        self.admission = admission or Admission()
        self.eviction = eviction or Eviction()
        self.max_load_factor = float(max_load_factor)
        self.initial_buckets = 2 ** max(
            4, math.ceil(math.log2(max(1, (initial_rows_per_shard or 1)) / self.max_load_factor))
        )
        self.width = dim * (1 + self.optimizer.num_slots) + 1
        placement = current_placement()
        self.shards = [
            _Shard(self, i, dev) for i, dev in enumerate(placement.shard_devices(num_shards))
        ]
        self._stash: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = \
            weakref.WeakKeyDictionary()
        # A Python list, made a constant of each graph that uses it (see _Shard).
        self._slot_init = [v for v in self.optimizer.initial_slot_values() for _ in range(dim)]
        # The initializer as column groups the table kernel computes while it looks rows up;
        # None: new rows are filled with the initializer's TF ops (see _filled).
        self._native_init = self.initializer.native_groups(dim)
        # SGD/Adagrad over such an initializer, admitting every id: the push updates rows in
        # place and creates new ones itself, so the pull keeps no rows for it. (The fused
        # rule and the groups, or None.)
        fused = self.optimizer.native_rule()
        self._in_place = ((fused, self._native_init)
                          if fused is not None and self._native_init is not None
                          and not self.admission.active else None)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def signature(self) -> dict[str, Any]:
        """What a checkpoint must match to be restored into this table."""
        return {
            "dim": self.dim, "width": self.width, "optimizer": self.optimizer.get_config(),
            "slots": list(self.optimizer.slot_names),
        }

    # -- input checks -----------------------------------------------------------------------
    def check_ids(self, ids: Any) -> tf.Tensor:
        dtype = getattr(ids, "dtype", None)
        if dtype not in (tf.int64, tf.int32):
            raise TypeError(
                f"vlps table '{self.name}': ids must be int64 (or int32), got "
                f"{getattr(dtype, 'name', type(ids).__name__)}; hash strings with "
                "vlps.hash_strings or use DynamicEmbedding(key_dtype='string')"
            )
        ids = tf.cast(ids, tf.int64)
        if ids.shape.rank != 1:
            raise ValueError(f"vlps table '{self.name}': pull/push take 1-D ids, got {ids.shape}")
        return ids

    # -- pull / push --------------------------------------------------------------------------
    def _partition(
        self, ids: tf.Tensor
    ) -> tuple[list[tf.Tensor], list[tf.Tensor], tf.Tensor | None]:
        shard = shard_of(ids, self.num_shards)
        parts = tf.dynamic_partition(ids, shard, self.num_shards)
        positions = tf.dynamic_partition(tf.range(tf.size(ids)), shard, self.num_shards)
        return parts, positions, shard

    # A training step pulls the batch's unique ids and then pushes the same tensor. Inside one
    # graph the push reuses the full rows (embedding + slots) its pull looked up, so an
    # existing row costs one hash lookup + one insert per step instead of two lookups + one
    # insert. The rows stay on the shard's device; the push checks the shard's version and
    # looks the rows up again if anything was inserted or removed in between (another
    # worker's push, an eviction), so the result is the same as without the reuse.
    def _stash_for(self, create: bool) -> dict[Any, Any] | None:
        if tf.executing_eagerly():
            return None
        graph = tf.compat.v1.get_default_graph()
        stash = self._stash.get(graph)
        if stash is None and create:
            stash = self._stash[graph] = {}
        return stash

    def pull(self, ids: tf.Tensor, training: bool = True) -> tf.Tensor:
        """Embeddings [n, dim] of unique ids, one lookup per shard.

        Unknown ids get their initial value when `training` (the row is created by the
        following push), zeros otherwise (evaluation and serving never create rows)."""
        ids = self.check_ids(ids)
        stash = self._stash_for(create=True) if training else None
        parts, positions, shard = (
            ([ids], [], None) if self.num_shards == 1 else self._partition(ids))
        outs, kept = [], []
        for s, p in zip(self.shards, parts, strict=True):
            with _remote_control_flow(s.device):
                emb, k = self._pull_shard(s, p, training, keep=stash is not None)
            outs.append(emb)
            kept.append(k)
        if stash is not None:
            stash[ids.ref()] = (parts, shard, kept)
        out = outs[0] if self.num_shards == 1 else tf.dynamic_stitch(positions, outs)
        # Hash-table lookups lose the static shape in graphs; Keras layers downstream need it.
        return tf.reshape(out, [-1, self.dim])

    def _new_rows(self, ids: tf.Tensor) -> tf.Tensor:
        """Whole initial rows of `ids`: initial embedding, initial slots, step 0.

        Computed by vlps's kernel for the initializers it knows (`native_groups`), else by one
        XLA-compiled function (the initializers' hashing is a dozen
        element-wise passes over [n, dim] that XLA fuses into one): the ids are padded to a
        power of two so that it compiles once per size class, not once per batch."""
        if self._native_init is not None:  # the table kernels' values, bit for bit
            return native.ops().vlps_initial_rows(ids, dim=self.dim, slot_values=self._slot_init,
                                                  **_init_attrs(self._native_init))
        n = tf.shape(ids)[0]
        return self._initial_rows_fn()(tf.pad(ids, [[0, _size_class(n) - n]]))[:n]

    def _initial_rows_fn(self) -> Any:
        fn = getattr(self, "_initial_rows_xla", None)
        if fn is None:
            def rows(ids: tf.Tensor) -> tf.Tensor:
                n = tf.shape(ids)[0]
                return tf.concat([self.initializer(ids, self.dim),
                                  tf.tile(tf.constant([self._slot_init], tf.float32), [n, 1]),
                                  tf.zeros([n, 1])], 1)
            fn = self._initial_rows_xla = tf.function(rows, jit_compile=True)
        return fn

    def _filled(self, ids: tf.Tensor, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`rows` with the rows of missing ids replaced by their initial rows; and how many
        were missing."""
        missing = tf.where(last_steps(rows) < 0)
        n_missing = tf.shape(missing)[0]

        def fill() -> tf.Tensor:
            return tf.tensor_scatter_nd_update(
                rows, missing, self._new_rows(tf.gather_nd(ids, missing)))

        return tf.cond(n_missing > 0, fill, lambda: rows), n_missing

    def _filled_rows(self, shard: _Shard, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The shard's rows of `ids` with missing ids' initial rows, and how many were
        missing."""
        if self._native_init is not None:
            rows, _, n_missing, _, _ = shard.find_or_init(ids, self.dim, self._native_init,
                                                          self._slot_init)
            return rows, n_missing
        return self._filled(ids, shard.lookup_rows(ids))

    def _pull_shard(
        self, shard: _Shard, ids: tf.Tensor, training: bool, keep: bool = False
    ) -> tuple[tf.Tensor, tuple[Any, ...] | None]:
        """The shard's embeddings of `ids`, and (when `keep`) what its push may reuse:
        (rows, number of missing ids or None, shard version), or for the in-place push
        (embeddings, buckets, table generation). In training
        without admission the kept rows are already filled with the initial rows of missing
        ids, so the push computes no initial value a second time."""
        with device_scope(shard.device):
            if self._in_place is not None and training:
                _, emb, _, buckets, generation = shard.find_or_init(
                    ids, self.dim, self._in_place[1], self._slot_init, whole_rows=False)
                return emb, ((emb, buckets, generation) if keep else None)
            # Read the version before the lookup: a push compares it to decide reuse.
            version = shard.version.read_value() if keep else None
            with tf.control_dependencies([version] if version is not None else []):
                if self._native_init is not None and training and not self.admission.active:
                    rows, emb, n_missing, _, _ = shard.find_or_init(
                        ids, self.dim, self._native_init, self._slot_init)
                    return emb, ((rows, n_missing, version) if keep else None)
                rows = shard.lookup_rows(ids)
            if not training or self.admission.active:
                # Not-yet-admitted and unknown ids embed as the default row's zeros.
                return rows[:, : self.dim], ((rows, None, version) if keep else None)
            rows, n_missing = self._filled(ids, rows)
            return rows[:, : self.dim], ((rows, n_missing, version) if keep else None)

    def push(self, ids: tf.Tensor, grads: tf.Tensor, step: tf.Tensor) -> None:
        """Apply the optimizer on each shard's device to the rows of unique `ids`.

        `step` is the 1-based global step of this update (Adam's bias correction, eviction)."""
        ids = self.check_ids(ids)
        grads = tf.convert_to_tensor(grads, tf.float32)
        step = tf.cast(step, tf.int64)
        stash = self._stash_for(create=False)
        entry = stash.pop(ids.ref(), None) if stash is not None else None
        if entry is not None:
            parts, shard, kept = entry
        elif self.num_shards == 1:
            parts, shard, kept = [ids], None, [None]
        else:
            parts, _, shard = self._partition(ids)
            kept = [None] * self.num_shards
        gparts = [grads] if shard is None else tf.dynamic_partition(grads, shard,
                                                                    self.num_shards)
        for s, p, g, k in zip(self.shards, parts, gparts, kept, strict=True):
            with _remote_control_flow(s.device):
                self._push_shard(s, p, g, step, k)

    def _push_shard(
        self, shard: _Shard, ids: tf.Tensor, grads: tf.Tensor, step: tf.Tensor,
        kept: tuple[Any, ...] | None = None,
    ) -> None:
        d = self.dim
        with device_scope(shard.device):
            if self._in_place is not None:
                (rule, attrs), groups = self._in_place
                created = shard.apply_in_place(ids, grads, step, d, rule, attrs, groups,
                                               self._slot_init, pulled=kept)
                shard.counters.scatter_nd_add([[0]], created[None])
                return
            fused = self.optimizer.native_rule()
            pulled, n_filled, version = kept or (None, None, None)
            if pulled is not None and n_filled is not None and not self.admission.active:
                # The pull's filled rows, unless the shard changed since the pull.
                rows, n_missing = tf.cond(
                    tf.equal(shard.version.read_value(), version),
                    lambda: (tf.identity(pulled), tf.identity(n_filled)),
                    lambda: self._filled_rows(shard, ids))
            else:
                if pulled is not None and version is not None:
                    rows = tf.cond(tf.equal(shard.version.read_value(), version),
                                   lambda: tf.identity(pulled),
                                   lambda: shard.lookup_rows(ids))
                else:
                    rows = shard.lookup_rows(ids)
                if self.admission.active:
                    exists = last_steps(rows) >= 0
                    admitted = self._admit(shard, ids, exists, step)
                    keep = exists | admitted
                    ids, grads, rows = (tf.boolean_mask(ids, keep), tf.boolean_mask(grads, keep),
                                        tf.boolean_mask(rows, keep))
                rows, n_missing = self._filled(ids, rows)
            if fused is not None:
                shard.apply_rows(ids, rows, grads, step, d, *fused)
            else:
                n = tf.shape(ids)[0]
                slots = [rows[:, d * (i + 1) : d * (i + 2)]
                         for i in range(self.optimizer.num_slots)]
                new_emb, new_slots = self.optimizer.update(rows[:, :d], slots, grads, step)
                stamp = tf.fill([n, 1], tf.bitcast(tf.cast(step, tf.int32), tf.float32))
                shard.insert_rows(ids, tf.concat([new_emb, *new_slots, stamp], 1))
            shard.counters.scatter_nd_add([[0]], tf.cast(n_missing, tf.int64)[None])

    def _admit(
        self, shard: _Shard, ids: tf.Tensor, exists: tf.Tensor, step: tf.Tensor
    ) -> tf.Tensor:
        """True for ids without a row that are admitted now; counts the others."""
        new = tf.boolean_mask(ids, ~exists)
        cand = shard.candidates.lookup(new)
        count = cand[:, 0] + 1.0
        ok = count >= float(self.admission.min_count)
        if self.admission.probability < 1.0:
            salted = tf.bitwise.bitwise_xor(new, step)
            ok &= uniform01(salted, self.admission.seed, 1)[:, 0] < self.admission.probability
        stamp = tf.fill(tf.shape(count), tf.cast(step, tf.float32))
        shard.candidates.insert(tf.boolean_mask(new, ~ok), tf.boolean_mask(
            tf.stack([count, stamp], 1), ~ok))
        shard.candidates.remove(tf.boolean_mask(new, ok))
        shard.counters.scatter_nd_add(
            [[1]], tf.reduce_sum(tf.cast(~ok, tf.int64))[None]
        )
        admitted = tf.scatter_nd(tf.where(~exists), ok, tf.shape(exists, out_type=tf.int64))
        return admitted

    # -- convenience for custom loops -------------------------------------------------------
    def lookup(self, ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Embeddings of any-shaped ids (duplicates allowed): unique, pull, gather."""
        ids = tf.convert_to_tensor(ids)
        flat = self.check_ids(tf.reshape(ids, [-1]))
        unique, idx = native.unique(flat)
        emb = tf.gather(self.pull(unique, training=training), idx)
        return tf.reshape(emb, tf.concat([tf.shape(ids, out_type=tf.int32), [self.dim]], 0))

    # -- maintenance ------------------------------------------------------------------------
    def size(self) -> int:
        return int(sum(int(s.size()) for s in self.shards))

    def shard_sizes(self) -> list[int]:
        return [int(s.size()) for s in self.shards]

    def counters(self) -> dict[str, int]:
        """Counters summed over shards: rows created, sightings not admitted, rows evicted by
        TTL and by the size cap; plus the current number of rows and pending candidates."""
        total = [0] * len(COUNTER_NAMES)
        for s in self.shards:
            for i, v in enumerate(s.counters.numpy().tolist()):
                total[i] += int(v)
        out = dict(zip(COUNTER_NAMES, total, strict=True))
        out["rows"] = self.size()
        out["candidates"] = int(sum(int(s.candidates.size()) for s in self.shards))
        return out

    def evict(self, step: int, ttl_steps: int | None = None) -> dict[str, int]:
        """Run the eviction policy at global `step` on every shard (on the shard's device).

        `ttl_steps` overrides the policy's (the Trainer passes the step that `ttl_seconds`
        maps to). Returns how many rows each rule removed."""
        ttl = ttl_steps if ttl_steps is not None else self.eviction.ttl_steps
        cap = self.eviction.max_rows_per_shard
        removed = {"evicted_ttl": 0, "evicted_cap": 0}
        for s in self.shards:
            n_ttl, n_cap = _evict_shard(s, tf.constant(step, tf.int64),
                                        tf.constant(ttl or 0, tf.int64),
                                        tf.constant(cap or 0, tf.int64))
            removed["evicted_ttl"] += int(n_ttl)
            removed["evicted_cap"] += int(n_cap)
        return removed


def _evict_shard(shard: _Shard, step: tf.Tensor, ttl: tf.Tensor, cap: tf.Tensor):
    fn = getattr(shard, "_evict_fn", None)
    if fn is None:
        fn = tf.function(lambda st, tt, cp: _evict_graph(shard, st, tt, cp))
        shard._evict_fn = fn  # type: ignore[attr-defined]
    return fn(step, ttl, cap)


def _evict_graph(shard: _Shard, step: tf.Tensor, ttl: tf.Tensor, cap: tf.Tensor):
    with device_scope(shard.device):
        # In the kernel, in place: rows older than the TTL, then the oldest of the rest above
        # the cap (ties broken by export order: deterministic), removed under the table's lock.
        shard.version.assign_add(1)
        gone, n_ttl, n_cap = native.ops().vlps_hash_table_evict(
            shard.main.resource_handle, step, ttl, cap)
        shard.tombstones.insert(gone, tf.fill(tf.shape(gone), step))
        shard.counters.scatter_nd_add([[2], [3]], tf.stack([n_ttl, n_cap]))
        # Candidates that were not seen within the TTL are forgotten too.
        ckeys, cvals = shard.candidates.export()
        ckeys = tf.reshape(ckeys, [-1])
        cstale = (ttl > 0) & (tf.cast(tf.reshape(cvals, [-1, 2])[:, 1], tf.int64) < step - ttl)
        shard.candidates.remove(tf.boolean_mask(ckeys, cstale))
        return n_ttl, n_cap
