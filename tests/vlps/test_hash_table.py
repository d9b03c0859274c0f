"""vlps's kernels (`vlps/kernels/`). The hash table against a Python dict: inserts,
overwrites, removes (backward-shift deletion), growth, every int64 id (the empty marker's own
id included), export/import, finds from several threads while another inserts, and the fused
optimizer update against the optimizer's TF ops. `VlpsUnique` against `tf.unique`."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorflow as tf

import vlps
from vlps import native
from vlps.table import _HashTable

INT64_MIN = -(2**63)


def make(width: int = 3, buckets: int = 16, name: str = "t") -> _HashTable:
    return _HashTable(width, tf.fill([width], -1.0), initial_num_buckets=buckets,
                      max_load_factor=0.8, name=name)


def rows_of(ref: dict[int, np.ndarray], ids: np.ndarray, width: int) -> np.ndarray:
    missing = np.full([width], -1.0, np.float32)
    return np.array([ref.get(int(i), missing) for i in ids], np.float32).reshape(-1, width)


def test_every_int64_id_is_a_key_including_the_empty_marker() -> None:
    t = make()
    ids = tf.constant([INT64_MIN, INT64_MIN + 1, -1, 0, 2**63 - 1], tf.int64)
    t.insert(ids, tf.reshape(tf.range(15, dtype=tf.float32), [5, 3]))
    assert int(t.size()) == 5
    np.testing.assert_array_equal(t.lookup(ids).numpy(), np.arange(15).reshape(5, 3))
    t.remove(tf.constant([INT64_MIN, 0], tf.int64))
    got = t.lookup(ids).numpy()
    assert (got[0] == -1).all() and (got[3] == -1).all()
    np.testing.assert_array_equal(got[[1, 2, 4]], np.arange(15).reshape(5, 3)[[1, 2, 4]])
    keys, values = t.export()
    order = np.argsort(keys.numpy())
    np.testing.assert_array_equal(keys.numpy()[order], [INT64_MIN + 1, -1, 2**63 - 1])
    np.testing.assert_array_equal(values.numpy()[order], np.arange(15).reshape(5, 3)[[1, 2, 4]])


@pytest.mark.parametrize("graph", [False, True])
def test_random_inserts_and_removes_match_a_dict(graph: bool) -> None:
    """Small key range so probe runs collide, wrap around the buckets and get holes punched in
    them; the table starts at 16 buckets and grows."""
    rng = np.random.default_rng(3)
    t, ref, width = make(2, name=f"rand{graph}"), {}, 2

    def graphed(fn):  # an op's result is not a tf.function output: return nothing
        return tf.function(lambda *a: [fn(*a), None][1]) if graph else fn

    insert, remove = graphed(t.insert), graphed(t.remove)
    lookup = tf.function(t.lookup) if graph else t.lookup
    probe = np.arange(-70, 70, dtype=np.int64)
    for _ in range(250):
        n = int(rng.integers(0, 60))
        ids = rng.integers(-64, 64, n)
        if rng.random() < 0.6:
            vals = rng.normal(size=(n, width)).astype(np.float32)
            insert(tf.constant(ids, tf.int64), tf.constant(vals.reshape(n, width)))
            for i, v in zip(ids, vals, strict=True):  # a repeated id: the last row wins
                ref[int(i)] = v
        else:
            remove(tf.constant(ids, tf.int64))
            for i in ids:
                ref.pop(int(i), None)
        np.testing.assert_array_equal(lookup(tf.constant(probe)).numpy(),
                                      rows_of(ref, probe, width))
        assert int(t.size()) == len(ref)
    assert t.buckets() >= 128  # 128 keys at load 0.8 grew it from 16


def test_growth_counts_only_new_keys_and_export_import_round_trips() -> None:
    t = make(4, buckets=256, name="grow")
    ids = tf.range(200, dtype=tf.int64)  # 200 <= 256 * 0.8
    t.insert(ids, tf.ones([200, 4]))
    t.insert(ids, tf.fill([200, 4], 2.0))  # 400 keys sent, none new: no growth
    assert t.buckets() == 256 and int(t.size()) == 200
    t.insert(tf.range(200, 300, dtype=tf.int64), tf.fill([100, 4], 3.0))
    assert t.buckets() == 512 and int(t.size()) == 300
    keys, values = t.export()
    other = make(4, name="imported")
    other.insert(tf.constant([7], tf.int64), tf.fill([1, 4], 9.0))  # import replaces it all
    tf.raw_ops.LookupTableImportV2(table_handle=other.resource_handle, keys=keys, values=values)
    probe = tf.range(-5, 305, dtype=tf.int64)
    np.testing.assert_array_equal(other.lookup(probe).numpy(), t.lookup(probe).numpy())
    assert int(other.size()) == 300


def test_a_bad_default_row_or_value_shape_is_refused() -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match="power of two"):
        _HashTable(3, tf.zeros([3]), initial_num_buckets=100, max_load_factor=0.8, name="b")
    t = make(3, name="shape")
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        t.insert(tf.constant([1], tf.int64), tf.zeros([1, 4]))


def test_finds_from_threads_see_whole_rows_while_another_thread_inserts() -> None:
    """Every row written has all its columns equal; a find racing the inserts (and the
    growths they cause) must never return a row mixing two writes."""
    t = make(8, name="race")
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        for v in range(1, 60):
            ids = tf.range(v * 500, dtype=tf.int64)  # keeps growing the table
            t.insert(ids, tf.fill([v * 500, 8], float(v)))
        stop.set()

    def reader() -> None:
        probe = tf.range(0, 30_000, 7, dtype=tf.int64)
        while not stop.is_set():
            rows = t.lookup(probe).numpy()
            if not (rows == rows[:, :1]).all():
                errors.append("a row mixed two writes")
                return

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                   for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert int(t.size()) == 59 * 500


class _Unfused(vlps.Adagrad):
    def native_rule(self):  # type: ignore[no-untyped-def]
        return None


class _UnfusedSgd(vlps.SGD):
    def native_rule(self):  # type: ignore[no-untyped-def]
        return None


@pytest.mark.parametrize("rule", ["adagrad", "sgd"])
def test_the_kernels_fused_update_equals_the_optimizers_tf_ops(rule: str) -> None:
    """Pushes through `VlpsHashTableApply` give the rows (embedding, slots, step) that the
    rule's TensorFlow ops + insert give, bit for bit, eagerly (no graph rewrites)."""
    fused_opt, plain_opt = ((vlps.Adagrad(0.1, initial_accumulator_value=0.05), _Unfused(
        0.1, initial_accumulator_value=0.05)) if rule == "adagrad"
        else (vlps.SGD(0.1), _UnfusedSgd(0.1)))
    assert fused_opt.native_rule() is not None and plain_opt.native_rule() is None
    fused = vlps.EmbeddingTable(f"fused_{rule}", 5, optimizer=fused_opt, num_shards=2)
    plain = vlps.EmbeddingTable(f"plain_{rule}", 5, optimizer=plain_opt, num_shards=2)
    rng = np.random.default_rng(5)
    for step in range(1, 8):
        ids = tf.constant(np.unique(rng.integers(-20, 20, 25)), tf.int64)
        grads = tf.constant(rng.normal(size=(int(tf.size(ids)), 5)).astype(np.float32))
        for t in (fused, plain):
            t.pull(ids)
            t.push(ids, grads, step)
    for a, b in zip(fused.shards, plain.shards, strict=True):
        ka, ra = a.export_rows()
        kb, rb = b.export_rows()
        oa, ob = np.argsort(ka.numpy()), np.argsort(kb.numpy())
        np.testing.assert_array_equal(ka.numpy()[oa], kb.numpy()[ob])
        np.testing.assert_array_equal(ra.numpy()[oa], rb.numpy()[ob])


@pytest.mark.parametrize("ids", [
    [], [5], [3, 3, 3], [INT64_MIN, 0, INT64_MIN, 2**63 - 1, 0, -1],
    np.random.default_rng(1).zipf(1.2, 50_000) % 7919 - 3000,  # heavy repeats
    np.random.default_rng(2).integers(-(2**62), 2**62, 20_000),  # nearly all distinct
])
def test_vlps_unique_equals_tf_unique(ids) -> None:
    x = tf.constant(np.asarray(ids, np.int64), tf.int64)
    want_y, want_idx = tf.unique(x)
    for y, idx in (native.unique(x), tf.function(native.unique)(x)):
        np.testing.assert_array_equal(y.numpy(), want_y.numpy())
        np.testing.assert_array_equal(idx.numpy(), want_idx.numpy())
        assert idx.dtype == tf.int32


@pytest.mark.parametrize("ttl,cap", [(0, 0), (5, 0), (0, 30), (5, 30), (5, 500)])
def test_eviction_in_the_kernel_chooses_what_export_and_top_k_would(ttl: int, cap: int) -> None:
    """Stale rows (last step < step - ttl), then the oldest rows above the cap, ties broken by
    export order; the ids removed, the rest untouched."""
    table = vlps.EmbeddingTable(f"ev{ttl}_{cap}", 2, optimizer=vlps.SGD(0.1), num_shards=1)
    rng = np.random.default_rng(7)
    ids = np.unique(rng.integers(-500, 500, 120)).astype(np.int64)
    ids[0] = INT64_MIN  # the empty marker's own id takes part too
    for step in range(1, 11):  # rows last updated at steps 1..10, many ties
        part = ids[rng.random(len(ids)) < 0.3] if step > 1 else ids
        table.push(tf.constant(part), tf.ones([len(part), 2]), step)
    keys, rows = (t.numpy() for t in table.shards[0].export_rows())
    last = rows[:, -1].copy().view(np.int32).astype(np.int64)
    stale = (last < 12 - ttl) if ttl > 0 else np.zeros(len(keys), bool)
    order = np.lexsort((np.arange(len(keys))[~stale], last[~stale]))  # by step, then position
    excess = max(int((~stale).sum()) - cap, 0) if cap > 0 else 0
    want = list(keys[stale]) + list(keys[~stale][order[:excess]])
    table.eviction = vlps.Eviction(max_rows_per_shard=cap or None)
    removed = table.evict(12, ttl_steps=ttl or None)
    assert removed == {"evicted_ttl": int(stale.sum()), "evicted_cap": excess}
    left = set(table.shards[0].export_rows()[0].numpy().tolist())
    assert left == set(keys.tolist()) - set(np.asarray(want).tolist())
    gone = table.shards[0].tombstones.export()[0].numpy().tolist()
    assert sorted(gone) == sorted(np.asarray(want).tolist())


class _Doubled(vlps.initializers.RandomUniform):
    """A user's subclass with its own values: the kernel must not compute the parent's."""

    def __call__(self, ids: tf.Tensor, dim: int) -> tf.Tensor:
        return 2.0 * super().__call__(ids, dim)


@pytest.mark.parametrize("name,dim,optimizer,initializer,native", [
    ("wide_deep", 17, vlps.Adagrad(0.05, initial_accumulator_value=0.3),
     vlps.initializers.Columns([(16, "uniform"), (1, "zeros")]), True),
    ("uniform", 8, "sgd", vlps.initializers.RandomUniform(-0.3, 0.7, seed=5), True),
    ("constant_uniform", 7, "sgd",
     vlps.initializers.Columns([(3, vlps.initializers.Constant(0.25)),
                                (4, vlps.initializers.RandomUniform(-1, 2, seed=-3))]), True),
    ("subclass", 8, "sgd", _Doubled(), False),
    ("normal", 8, "sgd", "normal", False),
])
def test_the_training_pull_fills_new_rows_with_the_initializers_values(
        name, dim, optimizer, initializer, native) -> None:
    """The kernel's find-with-initial-rows gives new ids bit for bit the initializer's eager
    values (for the initializers it computes; the others, a user's subclass included, are
    filled by the initializer's own ops), the slots' initial values and step 0; existing rows
    come back as stored; the push counts the new rows once."""
    init = vlps.initializers.get(initializer)
    table = vlps.EmbeddingTable(f"fill_{name}", dim, optimizer=optimizer, initializer=init)
    assert (table._native_init is not None) == native
    rng = np.random.default_rng(0)
    ids = tf.constant(np.concatenate([rng.integers(-2**63, 2**63 - 1, 3000, dtype=np.int64),
                                      [0, -1, 2**63 - 1, -2**63]]))
    expect = init(ids, dim).numpy()

    @tf.function
    def step(i: tf.Tensor, s: int) -> tf.Tensor:
        emb = table.pull(i)
        table.push(i, tf.zeros_like(emb), tf.constant(s, tf.int64))
        return emb

    first = step(ids, 1).numpy()
    if native:
        np.testing.assert_array_equal(first.view(np.int32), expect.view(np.int32))
    else:  # the XLA-compiled initializer rounds differently (ndtri: within 4e-6 here)
        np.testing.assert_allclose(first, expect, rtol=1e-5, atol=1e-7)
    assert table.counters()["created"] == ids.shape[0]
    keys, rows = table.shards[0].export_rows()
    order = np.argsort(keys.numpy())
    stored = rows.numpy()[order]
    want_slots = [v for v in table.optimizer.initial_slot_values() for _ in range(dim)]
    np.testing.assert_array_equal(stored[:, dim:-1],
                                  np.tile(np.float32(want_slots), (len(order), 1)))
    # A zero gradient leaves the embedding as it was; the rows now exist and are read back.
    np.testing.assert_array_equal(step(ids, 2).numpy(), first)
    assert table.counters()["created"] == ids.shape[0]
