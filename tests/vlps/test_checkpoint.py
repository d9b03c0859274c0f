"""Checkpoints (full, incremental, resharding, mismatches) and SavedModel export, in-process."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import vlps
from vlps.data import synthetic_ctr
from vlps.models import wide_deep

SIGNATURE = {
    "cat": tf.TensorSpec([None, 26], tf.int64, name="cat"),
    "num": tf.TensorSpec([None, 13], tf.float32, name="num"),
}


def dataset_fn(ctx):
    return synthetic_ctr(64, seed=2, zipf_a=1.5)


def make_trainer(tmp: Path, num_shards: int | None = None, **model_kw) -> vlps.Trainer:
    def model_fn():
        return wide_deep(dim=4, hidden=(8,), learning_rate=0.1, num_shards=num_shards,
                         **model_kw)

    return vlps.Trainer(model_fn, loss=keras.losses.BinaryCrossentropy(),
                        checkpoint_dir=str(tmp), report_every=1000)


@pytest.fixture(scope="module")
def heldout():
    return next(iter(synthetic_ctr(512, seed=2, zipf_a=1.5, split="test")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, heldout):
    """A 2-shard model trained 30 steps with a full then an incremental checkpoint."""
    root = tmp_path_factory.mktemp("ckpt")
    trainer = make_trainer(root, num_shards=2)
    trainer.fit(dataset_fn, steps=20)           # full checkpoint at 20
    trainer.fit(dataset_fn, steps=30)           # incremental checkpoint at 30
    return root, trainer, trainer.predict(heldout[0]).numpy()


def test_incremental_checkpoint_holds_only_changed_rows(trained) -> None:
    root, trainer, _ = trained
    manifest = json.loads((root / "ckpt-30" / "manifest.json").read_text())
    assert manifest["kind"] == "incremental" and manifest["parent"] == "ckpt-20"
    full = json.loads((root / "ckpt-20" / "manifest.json").read_text())
    written = sum(manifest["tables"]["emb"]["rows_written"])
    assert 0 < written < trainer.tables[0].size()
    assert sum(full["tables"]["emb"]["rows_written"]) == \
        full["tables"]["emb"]["counters"]["rows"]


@pytest.mark.parametrize("shards", [1, 3])
def test_restore_into_other_shard_counts_predicts_identically(
    trained, heldout, tmp_path, shards
) -> None:
    root, trainer, expected = trained
    fresh = make_trainer(root, num_shards=shards)
    fresh.build(dataset_fn)
    assert fresh.restore() == 30
    assert fresh.tables[0].num_shards == shards
    assert fresh.tables[0].size() == trainer.tables[0].size()
    np.testing.assert_array_equal(fresh.predict(heldout[0]).numpy(), expected)


def test_eviction_survives_incremental_restore(tmp_path, heldout) -> None:
    trainer = make_trainer(tmp_path)
    trainer.fit(dataset_fn, steps=10)                          # full at 10
    table = trainer.tables[0]
    removed = table.evict(step=10, ttl_steps=3)["evicted_ttl"]  # rows untouched in steps 8-10
    assert removed > 0
    trainer.save(incremental=True)                             # step 10 exists: no-op
    trainer.fit(dataset_fn, steps=12)                          # incremental at 12
    size, preds = table.size(), trainer.predict(heldout[0]).numpy()
    fresh = make_trainer(tmp_path)
    fresh.build(dataset_fn)
    assert fresh.restore() == 12
    assert fresh.tables[0].size() == size
    assert fresh.tables[0].counters()["evicted_ttl"] == removed
    np.testing.assert_array_equal(fresh.predict(heldout[0]).numpy(), preds)


def test_restore_mismatches_name_the_table(trained) -> None:
    root, _, _ = trained
    wrong_dim = vlps.Trainer(lambda: wide_deep(dim=8, hidden=(8,)),
                             loss=keras.losses.BinaryCrossentropy(), checkpoint_dir=str(root))
    wrong_dim.build(dataset_fn)
    with pytest.raises(vlps.CheckpointMismatchError, match=r"'emb'.*dim 5.*dim 9"):
        wrong_dim.restore()
    wrong_opt = vlps.Trainer(lambda: wide_deep(dim=4, hidden=(8,), optimizer="ftrl"),
                             loss=keras.losses.BinaryCrossentropy(), checkpoint_dir=str(root))
    wrong_opt.build(dataset_fn)
    with pytest.raises(vlps.CheckpointMismatchError, match=r"'emb'.*Adagrad.*Ftrl"):
        wrong_opt.restore()

    def other_model():
        inp = keras.Input(shape=(3,), dtype="int64")
        out = keras.layers.Dense(1)(vlps.DynamicEmbedding(2, combiner="sum", name="other")(inp))
        return keras.Model({"cat": inp}, out)

    other = vlps.Trainer(other_model, loss=keras.losses.BinaryCrossentropy(),
                         checkpoint_dir=str(root))
    other.build(lambda ctx: tf.data.Dataset.from_tensors(
        ({"cat": tf.zeros([2, 3], tf.int64)}, tf.zeros([2, 1]))))
    with pytest.raises(vlps.CheckpointMismatchError, match="another model"):
        other.restore()
    with pytest.raises(vlps.CheckpointMismatchError, match="not a vlps checkpoint"):
        other.restore(str(root / "nope"))


def test_exported_savedmodel_serves_without_vlps(
    trained, heldout, tmp_path, serve_in_fresh_process
) -> None:
    _, trainer, expected = trained
    path = trainer.export(str(tmp_path / "model"), SIGNATURE)
    np.save(tmp_path / "cat.npy", heldout[0]["cat"].numpy())
    np.save(tmp_path / "num.npy", heldout[0]["num"].numpy())
    serve_in_fresh_process(path, tmp_path, expected)
