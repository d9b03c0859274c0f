"""Tables and the DynamicEmbedding layer: ids, inputs, errors, admission and eviction."""

import numpy as np
import pytest
import tensorflow as tf

import vlps
from vlps.hashing import hash_strings, shard_of
from vlps.layers import apply_sparse_gradients


def push_sum_loss(layer: vlps.DynamicEmbedding, inputs, step: int) -> None:
    """One training step with loss = sum of outputs (gradient 1 everywhere)."""
    with tf.GradientTape() as tape, vlps.capture(tape) as cap:
        loss = tf.reduce_sum(layer(inputs, training=True))
    apply_sparse_gradients(cap, tape.gradient(loss, cap.pulled), tf.constant(step, tf.int64))


def test_shard_assignment_is_stable_and_balanced() -> None:
    ids = tf.range(100_000, dtype=tf.int64)
    shards = shard_of(ids, 3).numpy()
    counts = np.bincount(shards, minlength=3)
    assert counts.min() > 0.3 * 100_000
    # Pinned values: the sharding function is part of the checkpoint format.
    assert shard_of(tf.constant([0, 1, -1, 2**62], tf.int64), 7).numpy().tolist() == \
        shard_of(tf.constant([0, 1, -1, 2**62], tf.int64), 7).numpy().tolist()
    assert hash_strings(tf.constant(["a"])).numpy()[0] == 3694432073954588132


def test_initializer_is_a_function_of_the_id() -> None:
    t1 = vlps.EmbeddingTable("init_a", 8, num_shards=1)
    t3 = vlps.EmbeddingTable("init_b", 8, num_shards=3)
    ids = tf.constant([3, 99, -(2**63)], tf.int64)
    a, b = t1.pull(ids).numpy(), t3.pull(ids).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.all(np.abs(a) <= 0.05) and np.std(a) > 0.01
    # Outside training unknown ids embed as zeros and create nothing.
    np.testing.assert_array_equal(t1.pull(ids, training=False).numpy(), 0.0)
    assert t1.size() == 0


def test_string_keys_and_output_shapes() -> None:
    layer = vlps.DynamicEmbedding(3, key_dtype="string", table_name="strs")
    out = layer(tf.constant([["a", "b"], ["a", "c"]]), training=True)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0].numpy(), out[1, 0].numpy())


def test_combiners_on_ragged_sparse_and_dense() -> None:
    sum_layer = vlps.DynamicEmbedding(2, combiner="sum", initializer="uniform", table_name="cs")
    mean_layer = vlps.DynamicEmbedding(2, combiner="mean", table_name="cm")
    ragged = tf.ragged.constant([[1, 2, 2], [], [3]], dtype=tf.int64)
    emb = sum_layer.table.pull(tf.constant([1, 2, 3], tf.int64)).numpy()
    out = sum_layer(ragged, training=True).numpy()
    np.testing.assert_allclose(out, [emb[0] + 2 * emb[1], [0, 0], emb[2]], rtol=1e-6)
    sparse = ragged.to_sparse()
    np.testing.assert_allclose(sum_layer(sparse, training=True).numpy(), out, rtol=1e-6)
    mean = mean_layer(tf.constant([[1, 3], [2, 2]], tf.int64), training=True).numpy()
    e = mean_layer.table.pull(tf.constant([1, 2, 3], tf.int64)).numpy()
    np.testing.assert_allclose(mean, [(e[0] + e[2]) / 2, e[1]], rtol=1e-6)


def test_bad_inputs_name_the_table() -> None:
    layer = vlps.DynamicEmbedding(2, table_name="clicks")
    with pytest.raises(TypeError, match=r"'clicks'.*int64.*float32"):
        layer(tf.constant([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"'clicks'.*key_dtype='string'"):
        layer(tf.constant(["x"]))
    with pytest.raises(ValueError, match=r"'clicks'.*empty batch"):
        layer(tf.zeros([0], tf.int64))
    with pytest.raises(ValueError, match=r"'clicks'.*combiner"):
        layer(tf.ragged.constant([[1], [2, 3]], dtype=tf.int64))
    with pytest.raises(TypeError, match="'clicks'"):
        layer.table.pull(tf.constant([1.5]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def graph_call(ids):
        return layer(ids)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)clicks.*empty batch"):
        graph_call(tf.zeros([0], tf.int64))
    with pytest.raises(ValueError, match="table name"):
        vlps.EmbeddingTable("a/b", 2)


def test_admission_by_count_and_probability() -> None:
    layer = vlps.DynamicEmbedding(2, admission=vlps.Admission(min_count=3), table_name="adm")
    ids = tf.constant([10, 11], tf.int64)
    push_sum_loss(layer, ids, 1)
    push_sum_loss(layer, ids, 2)
    c = layer.table.counters()
    assert (c["rows"], c["not_admitted"], c["candidates"]) == (0, 4, 2)
    np.testing.assert_array_equal(layer(ids, training=True).numpy(), 0.0)
    push_sum_loss(layer, tf.constant([10], tf.int64), 3)
    c = layer.table.counters()
    assert (c["rows"], c["created"], c["candidates"]) == (1, 1, 1)

    prob = vlps.DynamicEmbedding(2, admission=vlps.Admission(probability=0.25, seed=1),
                                 table_name="admp")
    push_sum_loss(prob, tf.range(4000, dtype=tf.int64), 1)
    rows = prob.table.counters()["rows"]
    assert 800 < rows < 1200, rows
    with pytest.raises(ValueError, match="min_count"):
        vlps.Admission(min_count=0)


def test_eviction_by_ttl_and_cap() -> None:
    layer = vlps.DynamicEmbedding(
        2, eviction=vlps.Eviction(ttl_steps=5, max_rows_per_shard=3), num_shards=2,
        table_name="evi")
    push_sum_loss(layer, tf.range(10, dtype=tf.int64), 1)        # ids 0..9 at step 1
    push_sum_loss(layer, tf.range(10, 14, dtype=tf.int64), 8)    # ids 10..13 at step 8
    removed = layer.table.evict(step=10)
    # 0..9 are older than 10 - 5; of 10..13 (4 rows over 2 shards) at most 3 stay per shard.
    assert removed["evicted_ttl"] == 10
    c = layer.table.counters()
    assert c["evicted_ttl"] == 10 and c["rows"] == 4 - removed["evicted_cap"]
    assert all(n <= 3 for n in layer.table.shard_sizes())
    capped = vlps.DynamicEmbedding(2, eviction=vlps.Eviction(max_rows_per_shard=4),
                                   table_name="cap")
    for step in range(1, 11):
        push_sum_loss(capped, tf.constant([step], tf.int64), step)
    assert capped.table.evict(step=10) == {"evicted_ttl": 0, "evicted_cap": 6}
    # The survivors are the most recently updated rows.
    kept = capped.table.pull(tf.range(1, 11, dtype=tf.int64), training=False).numpy()
    assert np.all(kept[:6] == 0) and np.all(kept[6:] != 0)
    with pytest.raises(ValueError, match="ttl_steps"):
        vlps.Eviction(ttl_steps=0)


@pytest.mark.parametrize("num_shards", [1, 2])
def test_push_reuses_pulled_rows_only_while_the_shard_is_unchanged(num_shards: int) -> None:
    """Inside one graph a push reuses the rows its pull read; if the shard changed in between
    (here: another push of overlapping ids) it must look them up again. Results must equal
    the eager pull/push sequence, which never reuses rows."""
    opt = vlps.Adam(0.1)
    fused = vlps.EmbeddingTable(f"fused{num_shards}", 3, optimizer=opt, num_shards=num_shards)
    eager = vlps.EmbeddingTable(f"eager{num_shards}", 3, optimizer=vlps.Adam(0.1),
                                num_shards=num_shards)
    ids = tf.constant([5, 7, -(2**63), 11, 2**40], tf.int64)
    other = tf.constant([7, 11, 99], tf.int64)

    def step(table, ids, other, s, interleave):
        emb = table.pull(ids)
        if interleave:  # an update between pull and push: the pulled rows are stale
            table.push(other, tf.ones([3, 3]), s)
        table.push(ids, 0.5 * emb + 1.0, s)

    graph_step = tf.function(lambda i, o, s, x: step(fused, i, o, s, x))
    for s in range(1, 5):
        interleave = s % 2 == 0
        graph_step(ids, other, tf.constant(s, tf.int64), interleave)
        step(eager, ids, other, tf.constant(s, tf.int64), interleave)
    both = tf.concat([ids, other], 0)
    keys_f = [s.export_rows() for s in fused.shards]
    keys_e = [s.export_rows() for s in eager.shards]
    for (kf, rf), (ke, re_) in zip(keys_f, keys_e, strict=True):
        of, oe = np.argsort(kf.numpy()), np.argsort(ke.numpy())
        np.testing.assert_array_equal(kf.numpy()[of], ke.numpy()[oe])
        np.testing.assert_allclose(rf.numpy()[of], re_.numpy()[oe], rtol=1e-6)
    assert fused.size() == eager.size() == 6
    np.testing.assert_allclose(fused.pull(both, training=False).numpy(),
                               eager.pull(both, training=False).numpy(), rtol=1e-6)


def test_initial_rows_are_the_same_in_graphs_and_eagerly() -> None:
    # Regression: tf.constant(list of uint64 ints) inside a tf.function went through float64.
    ids = tf.constant([5, 7, -(2**63), 2**62 + 3], tf.int64)
    init = vlps.initializers.get("uniform")
    np.testing.assert_array_equal(init(ids, 8).numpy(),
                                  tf.function(lambda i: init(i, 8))(ids).numpy())


@pytest.mark.parametrize("graph", [False, True])
def test_updates_near_capacity_do_not_double_a_presized_shard(graph: bool) -> None:
    """A push that only updates rows of a full pre-sized shard must not double its buckets
    (TF's DenseHashTable counted every key of an insert as new). Rows must equal those of a
    roomy table fed the same pushes, and real growth must still happen."""
    n = 3000  # 2^13 buckets hold 6553 rows at load 0.8
    tight = vlps.EmbeddingTable(f"tight{graph}", 4, optimizer=vlps.Adagrad(0.1), num_shards=1,
                                initial_rows_per_shard=6000)
    roomy = vlps.EmbeddingTable(f"roomy{graph}", 4, optimizer=vlps.Adagrad(0.1), num_shards=1,
                                initial_rows_per_shard=100_000)

    def push(table, ids, step):
        fn = tf.function(lambda i: table.push(i, tf.ones([tf.size(i), 4]), step)) if graph \
            else (lambda i: table.push(i, tf.ones([tf.size(i), 4]), step))
        fn(ids)

    def buckets(table):
        return table.shards[0].buckets()

    full = tf.range(6000, dtype=tf.int64)
    for step, ids in enumerate([full[:n], full[n:], full, full, full[::7]], 1):
        push(tight, ids, step)
        push(roomy, ids, step)
    assert buckets(tight) == 2**13
    assert tight.size() == 6000
    more = tf.range(6000, 7000, dtype=tf.int64)  # 7000 rows need 2^14 buckets
    for step, ids in [(6, more), (7, full), (8, tf.concat([full, more], 0))]:
        push(tight, ids, step)
        push(roomy, ids, step)
    assert buckets(tight) == 2**14
    kt, rt = tight.shards[0].export_rows()
    kr, rr = roomy.shards[0].export_rows()
    assert tight.size() == roomy.size() == 7000 and len(kt.numpy()) == 7000
    ot, orr = np.argsort(kt.numpy()), np.argsort(kr.numpy())
    np.testing.assert_array_equal(kt.numpy()[ot], kr.numpy()[orr])
    np.testing.assert_array_equal(rt.numpy()[ot], rr.numpy()[orr])


def _control_flow_ops(concrete) -> list:
    """(op type, `_lower_using_switch_merge` or None) of every If/While in a traced function,
    nested function bodies included."""
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return [(n.op, n.attr["_lower_using_switch_merge"].b
             if "_lower_using_switch_merge" in n.attr else None)
            for n in nodes if n.op in ("If", "StatelessIf", "While", "StatelessWhile")]


def test_shards_on_a_task_device_keep_their_control_flow_whole() -> None:
    """A shard placed on a (ps) device builds its conds and loops as whole If/While ops that
    its task runs, not lowered into the caller's graph (lowered, a cluster pays a round trip
    per branch); a local shard keeps TF's lowering. Both compute the same rows. (Adam: its
    push reuses the pulled rows behind a cond. SGD and Adagrad tables update rows in place
    and have no control flow at all.)"""
    from vlps.placement import Placement, placement_scope

    device = "/job:localhost/replica:0/task:0/device:CPU:0"
    with placement_scope(Placement([device])):
        placed = vlps.EmbeddingTable("placed", 4, optimizer="adam")
        in_place = vlps.EmbeddingTable("placed_adagrad", 4, optimizer="adagrad")
    local = vlps.EmbeddingTable("local", 4, optimizer="adam")
    assert placed.shards[0].device == device and local.shards[0].device is None
    ids = tf.constant([3, 9, 2**40, 3], tf.int64)

    @tf.function
    def step(table, ids):
        unique, _ = tf.unique(ids)
        emb = table.pull(unique)
        table.push(unique, tf.ones_like(emb), tf.constant(1, tf.int64))
        return emb

    for _ in range(2):
        np.testing.assert_array_equal(step(placed, ids).numpy(), step(local, ids).numpy())
    ops_placed = _control_flow_ops(step.get_concrete_function(placed, ids))
    ops_local = _control_flow_ops(step.get_concrete_function(local, ids))
    assert ops_placed and all(lower is not True for _, lower in ops_placed), ops_placed
    assert any(lower is True for _, lower in ops_local), ops_local
    np.testing.assert_array_equal(placed.lookup(ids).numpy(), local.lookup(ids).numpy())
    assert _control_flow_ops(step.get_concrete_function(in_place, ids)) == []


@pytest.mark.parametrize("columns", [(16, 1), (64,), (5, 32, 3)])
def test_the_training_gather_and_its_gradient_are_tfs_gather_and_segment_sum_bit_for_bit(
        columns: tuple[int, ...]) -> None:
    from vlps.layers import training_gather

    rng = np.random.default_rng(3)
    rows = tf.constant(rng.standard_normal((500, sum(columns))), tf.float32)
    # Zipf-like repeats, as a batch's ids: some rows many times, some never.
    idx = tf.constant(np.minimum(rng.zipf(1.3, 20_000) - 1, 499), tf.int32)
    dys = [tf.constant(rng.standard_normal((20_000, w)), tf.float32) for w in columns]

    @tf.function
    def ours(rows: tf.Tensor, idx: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(rows)
            outs = training_gather(columns)(rows, idx)
            loss = tf.add_n([tf.reduce_sum(o * d) for o, d in zip(outs, dys, strict=True)])
        return outs, tape.gradient(loss, rows)

    outs, grad = ours(rows, idx)
    parts = tf.split(rows, list(columns), axis=1)
    for got, part in zip(outs, parts, strict=True):
        np.testing.assert_array_equal(got.numpy(), tf.gather(part, idx).numpy())
    want = tf.concat([tf.math.unsorted_segment_sum(d, idx, 500) for d in dys], 1)
    np.testing.assert_array_equal(grad.numpy(), want.numpy())  # same order, same bits
    assert not grad.numpy()[np.setdiff1d(np.arange(500), idx.numpy())].any()


def test_the_training_gather_ops_name_bad_indices_and_shapes() -> None:
    rows = tf.zeros([4, 17])
    dys = [tf.zeros([2, 16]), tf.zeros([3, 1])]
    ops = vlps.native.ops()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"idx\[1\] = 9 is not in \[0, 4\)"):
        ops.vlps_gather_columns(rows[:4], tf.constant([0, 9], tf.int32), columns=[16, 1], K=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be \\[n, 17\\]"):
        ops.vlps_gather_columns(rows[:, :5], tf.constant([0], tf.int32), columns=[16, 1], K=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="gradient 1 must have 2x1"):
        ops.vlps_segment_sum_columns([dys[0][:2], dys[1][:3]], tf.constant([0, 1], tf.int32),
                                     4, columns=[16, 1])


def test_the_in_place_push_reuses_the_pulls_buckets_only_while_nothing_changed_the_table(
        ) -> None:
    """The Adagrad push takes the pull's buckets and initial embeddings when the table is at the
    pull's generation; the rows are bit for bit those of a push that searches again. A change
    between pull and push (another id inserted, which here also doubles the buckets, or the
    pulled ids removed) makes it search: the rows stay right."""
    from vlps.initializers import Columns

    def table(name: str) -> vlps.EmbeddingTable:
        return vlps.EmbeddingTable(name, 5, optimizer=vlps.Adagrad(0.1),
                                   initializer=Columns([(4, "uniform"), (1, "zeros")]),
                                   initial_rows_per_shard=8)

    reusing, searching = table("reusing"), table("searching")
    for shard in searching.shards:  # drop what the pull kept: the push searches
        shard.apply_in_place = (lambda *a, pulled=None, _f=shard.apply_in_place, **k:
                                _f(*a, **k))

    @tf.function
    def step(t, ids, s, meddle):
        unique, _ = tf.unique(ids)
        emb = t.pull(unique)
        if meddle == "insert":  # between pull and push: the table is no longer as pulled
            t.shards[0].apply_in_place(tf.constant([-7], tf.int64), tf.ones([1, 5]), s,
                                       5, *t._in_place[0], t._in_place[1], t._slot_init)
        elif meddle == "remove":
            t.shards[0].remove_rows(unique[:2])
        t.push(unique, emb * 0.5 + 1.0, s)
        return emb

    rng = np.random.default_rng(5)
    for s in range(1, 13):
        ids = tf.constant(rng.integers(0, 60, 40), tf.int64)
        meddle = {4: "insert", 9: "remove"}.get(s, "")
        a = step(reusing, ids, tf.constant(s, tf.int64), meddle)
        b = step(searching, ids, tf.constant(s, tf.int64), meddle)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert reusing.shards[0].buckets() > 16  # the tables doubled on the way
    ka, va = reusing.shards[0].export_rows()
    kb, vb = searching.shards[0].export_rows()
    oa, ob = np.argsort(ka.numpy()), np.argsort(kb.numpy())
    np.testing.assert_array_equal(ka.numpy()[oa], kb.numpy()[ob])
    np.testing.assert_array_equal(va.numpy()[oa].view(np.int32), vb.numpy()[ob].view(np.int32))
    assert reusing.counters() == searching.counters()


def test_the_in_place_push_refuses_buckets_outside_the_table() -> None:
    """Buckets handed to the raw op that point outside the table are not used (the push
    searches): no write outside the table's arrays."""
    from vlps import native
    from vlps.table import _init_attrs

    t = vlps.EmbeddingTable("bounds", 4, optimizer=vlps.Adagrad(0.1))
    ids = tf.constant([1, 2, 3], tf.int64)
    shard = t.shards[0]
    _, emb, _, buckets, generation = shard.find_or_init(
        ids, 4, t._in_place[1], t._slot_init, whole_rows=False)
    rule, attrs = t._in_place[0]
    native.ops().vlps_hash_table_apply_in_place(
        shard.main.resource_handle, ids, tf.ones([3, 4]), tf.constant(1, tf.int64),
        tf.constant([0, 1, 2**40], tf.int64), generation, emb, rule=rule, dim=4,
        slot_values=t._slot_init, **attrs, **_init_attrs(t._in_place[1]))
    assert t.size() == 3
    np.testing.assert_array_equal(np.sort(shard.export_rows()[0].numpy()), [1, 2, 3])
    assert buckets.shape == (3,)
