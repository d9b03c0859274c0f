"""vlps.Trainer in one process: several steps per call, boundaries between calls, and a
stream of new ids held flat by TTL eviction and a per-shard cap."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import vlps
from vlps.data import synthetic_ctr
from vlps.models import wide_deep
from vlps.trainer import MAX_UNROLLED_STEPS


def small_model(**kw):
    return wide_deep(dim=4, hidden=(8,), learning_rate=0.1, **kw)


def dataset_fn(ctx=None):
    return synthetic_ctr(64, seed=3, zipf_a=1.5)


def heldout():
    return next(iter(synthetic_ctr(256, seed=3, zipf_a=1.5, split="test")))


def trainer(**kw):
    return vlps.Trainer(small_model, loss=keras.losses.BinaryCrossentropy(),
                        optimizer=vlps.Adagrad(0.05), cluster=vlps.ClusterInfo(), **kw)


def test_steps_per_execution_trains_the_same_model_as_single_steps() -> None:
    features, _ = heldout()
    one = trainer(steps_per_execution=1)
    many = trainer(steps_per_execution=7)
    # 19 steps per call: one loop block of MAX_UNROLLED_STEPS and 3 steps written out.
    blocks = trainer(steps_per_execution=MAX_UNROLLED_STEPS + 3)
    r1, r7 = one.fit(dataset_fn, steps=20), many.fit(dataset_fn, steps=20)
    assert r1["step"] == r7["step"] == blocks.fit(dataset_fn, steps=20)["step"] == 20
    for t in (one, many, blocks):
        assert int(t.global_step.numpy()) == 20
    for t in (many, blocks):
        np.testing.assert_allclose(t.predict(features).numpy(), one.predict(features).numpy(),
                                   rtol=1e-5, atol=1e-6)
        assert t.tables[0].size() == one.tables[0].size() > 0
    # A second fit continues from the global step and the same iterator position semantics.
    assert many.fit(dataset_fn, steps=23)["step"] == 23


def test_a_call_of_up_to_the_block_size_has_no_loop_frame() -> None:
    """Up to MAX_UNROLLED_STEPS steps a call is straight-line code (no While to lower into
    Switch/Merge frames that would cross to the ps tasks every iteration); longer calls loop
    over blocks of that many."""
    t = trainer(steps_per_execution=4)
    t.fit(dataset_fn, steps=4)
    iterator = t.make_iterator(dataset_fn)
    assert t._step_args(MAX_UNROLLED_STEPS) == (None, MAX_UNROLLED_STEPS)
    short = step_graph_ops(t, iterator, 3)
    assert not {"While", "StatelessWhile"} & set(short)
    assert short.count("IteratorGetNext") == 3  # three steps, written out
    long = step_graph_ops(t, iterator, 2 * MAX_UNROLLED_STEPS + 1)
    assert {"While", "StatelessWhile"} & set(long)


def test_calls_stop_at_report_evict_and_checkpoint_boundaries(tmp_path, monkeypatch) -> None:
    metrics = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("MLP_METRICS_FILE", str(metrics))
    t = trainer(steps_per_execution=16, report_every=5, evict_every=7, checkpoint_every=9,
                checkpoint_dir=str(tmp_path / "ckpt"))
    evicted_at: list[int] = []
    original = t.evict

    def spy(step=None):
        evicted_at.append(step)
        return original(step)

    t.evict = spy  # type: ignore[method-assign]
    t.fit(dataset_fn, steps=20)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [5, 10, 15, 20]
    assert evicted_at == [7, 14]
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*")) == [
        "ckpt-18", "ckpt-20", "ckpt-9"]
    assert int(t.global_step.numpy()) == 20


def step_graph_ops(t: vlps.Trainer, iterator, steps: int = 1) -> list[str]:
    """Op types of the compiled step function for a call of `steps`, its functions included."""
    graph = t._make_step_fn().get_concrete_function(
        iterator, *t._step_args(steps)).graph.as_graph_def()
    return [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]


def test_unique_in_the_input_pipeline_trains_the_same_model_off_the_step() -> None:
    features, _ = heldout()
    ahead, inside = trainer(steps_per_execution=4), trainer(steps_per_execution=4,
                                                           unique_in_input=False)
    ahead.fit(dataset_fn, steps=12)
    inside.fit(dataset_fn, steps=12)
    assert ahead._unique_keys == ["cat"] and inside._unique_keys == []
    np.testing.assert_allclose(ahead.predict(features).numpy(), inside.predict(features).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert ahead.tables[0].size() == inside.tables[0].size() > 0
    # The step itself computes no unique when the pipeline does; without it, the one layer does.
    assert not {"Unique", "VlpsUnique"} & set(step_graph_ops(ahead,
                                                             ahead.make_iterator(dataset_fn)))
    assert step_graph_ops(inside, inside.make_iterator(dataset_fn)).count("VlpsUnique") == 1


def test_a_feature_transformed_before_its_layer_keeps_its_unique_in_the_step() -> None:
    def model():
        inputs = {"cat": keras.Input((26,), dtype="int64", name="cat"),
                  "num": keras.Input((13,), name="num")}
        shifted = keras.layers.Lambda(lambda x: x + 1)(inputs["cat"])
        emb = vlps.DynamicEmbedding(4, name="shifted", optimizer=vlps.Adagrad(0.1))(shifted)
        x = keras.layers.Concatenate()([keras.layers.Flatten()(emb), inputs["num"]])
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))

    t = vlps.Trainer(model, loss=keras.losses.BinaryCrossentropy(),
                     optimizer=vlps.Adagrad(0.05), cluster=vlps.ClusterInfo())
    assert t.fit(dataset_fn, steps=3)["step"] == 3
    assert t._unique_keys == []
    assert step_graph_ops(t, t.make_iterator(dataset_fn)).count("VlpsUnique") == 1


def test_packed_dense_variables_train_the_same_model() -> None:
    """`pack_dense` (on by default on a cluster) moves the dense variables as one tensor per
    device; forced on in one process it must give the same training: same predictions, same
    batch-norm statistics (state updated in the step), an unused variable left untouched."""
    def model():
        inputs = {"cat": keras.Input((26,), dtype="int64", name="cat"),
                  "num": keras.Input((13,), name="num")}
        emb = vlps.DynamicEmbedding(4, name="ids", optimizer=vlps.Adagrad(0.1))(inputs["cat"])
        x = keras.layers.Concatenate()([keras.layers.Flatten()(emb), inputs["num"]])
        x = keras.layers.BatchNormalization()(keras.layers.Dense(8, activation="relu")(x))
        out = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
        out.unused = out.add_weight(shape=(3,), initializer="ones", name="unused")
        return out

    def make(pack):
        keras.utils.set_random_seed(7)
        return vlps.Trainer(model, loss=keras.losses.BinaryCrossentropy(),
                            optimizer=vlps.Adam(0.01), cluster=vlps.ClusterInfo(),
                            steps_per_execution=4, pack_dense=pack)

    features, _ = heldout()
    packed, plain = make(True), make(False)
    assert packed.pack_dense and not plain.pack_dense and not make(None).pack_dense
    packed.fit(dataset_fn, steps=12)
    plain.fit(dataset_fn, steps=12)
    for a, b in zip(packed.model.variables, plain.model.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    moving = [v for v in packed.model.non_trainable_variables if "moving_mean" in v.path]
    assert moving and np.abs(moving[0].numpy()).sum() > 0  # the statistics moved
    np.testing.assert_array_equal(packed.model.unused.numpy(), np.ones(3))
    np.testing.assert_allclose(packed.predict(features).numpy(), plain.predict(features).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert packed.tables[0].size() == plain.tables[0].size() > 0


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_steps_per_execution_prefetch_and_task_timeout_are_named(bad) -> None:
    with pytest.raises(ValueError, match="steps_per_execution must be an int > 0"):
        trainer(steps_per_execution=bad)
    with pytest.raises(ValueError, match="prefetch must be an int >= 0"):
        trainer(prefetch=-1 if bad == 0 else bad)
    with pytest.raises(ValueError, match="task_timeout must be a number of seconds > 0"):
        trainer(task_timeout=bad if bad != 2.5 else "30")


def test_stream_of_new_ids_stays_under_ttl_and_cap() -> None:
    """Every batch brings ids never seen before; TTL and the per-shard cap keep rows flat."""
    cap, ttl = 300, 4

    def stream(ctx=None):
        # 32 samples x 6 fields: half the ids recur (0..31 per field), half are new each step.
        def batch(i):
            old = tf.random.stateless_uniform([32, 3], [1, i], 0, 32, tf.int64)
            new = i * 1000 + tf.reshape(tf.range(96, dtype=tf.int64), [32, 3]) + 10**6
            cat = tf.concat([old, new], 1) * 7 + tf.range(6, dtype=tf.int64)[None, :]
            return ({"cat": cat, "num": tf.zeros([32, 2])}, tf.ones([32, 1]))
        return tf.data.Dataset.range(10**6).map(batch)

    t = vlps.Trainer(
        lambda: wide_deep(dim=4, hidden=(8,), num_fields=6, num_dense=2, num_shards=2,
                          eviction=vlps.Eviction(ttl_steps=ttl, max_rows_per_shard=cap)),
        loss=keras.losses.BinaryCrossentropy(), evict_every=2, steps_per_execution=2,
        cluster=vlps.ClusterInfo())
    sizes = []
    for steps in range(10, 61, 10):
        t.fit(stream, steps=steps)
        sizes.append(t.tables[0].shard_sizes())
    c = t.tables[0].counters()
    # Unbounded, 60 steps x 96 new ids would leave > 5,700 rows; the cap holds every shard
    # at <= cap right after each eviction pass, TTL removes the bulk of the new ids.
    assert all(n <= cap for s in sizes for n in s), sizes
    assert c["created"] > 5000 and c["evicted_ttl"] > 3000 and c["evicted_cap"] > 0, c
    assert c["rows"] == c["created"] - c["evicted_ttl"] - c["evicted_cap"], c
