"""The training script the cluster tests launch: chief, ps and worker all run this file, as
the platform does. Parameters come from MLP_PARAMS (JSON); the chief writes a JSON result."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import vlps

vlps.run_server_if_needed()  # ps and worker tasks serve here and never return

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vlps.data import synthetic_ctr  # noqa: E402
from vlps.models import wide_deep  # noqa: E402

params = json.loads(os.environ.get("MLP_PARAMS", "{}"))


def model_fn() -> keras.Model:
    return wide_deep(dim=4, hidden=(16,), learning_rate=0.1)


def dataset_fn(ctx: object) -> tf.data.Dataset:
    ds = synthetic_ctr(128, seed=1, zipf_a=1.5)
    bad = params.get("fail_at_batch")
    if bad is None:
        return ds

    def check(i: tf.Tensor, batch: object) -> object:
        # An error inside the worker's step that has nothing to do with a lost task.
        with tf.control_dependencies([tf.debugging.assert_less(
                i, tf.constant(bad, tf.int64), message="test: bad batch")]):
            return tf.nest.map_structure(tf.identity, batch)

    return ds.enumerate().map(check)


trainer = vlps.Trainer(
    model_fn, loss=keras.losses.BinaryCrossentropy(), optimizer=vlps.Adagrad(0.05),
    checkpoint_dir=params["ckpt"], checkpoint_every=params.get("checkpoint_every"),
    report_every=params.get("report_every", 20),
    steps_per_execution=params.get("steps_per_execution"),
    task_timeout=params.get("task_timeout", 30.0),
)
trainer.build(dataset_fn)
features, labels = next(iter(synthetic_ctr(1024, seed=1, zipf_a=1.5, split="test")))
bce = keras.losses.BinaryCrossentropy()
restored = trainer.restore()
before = float(bce(labels, trainer.predict(features)))
result = trainer.fit(dataset_fn, steps=params["steps"])
preds = trainer.predict(features).numpy()
np.save(params["out"] + ".npy", preds)
if params.get("export"):
    trainer.export(params["export"], {
        "cat": tf.TensorSpec([None, 26], tf.int64, name="cat"),
        "num": tf.TensorSpec([None, 13], tf.float32, name="num"),
    })
result.update(restored=restored, loss_before=before, loss_after=float(bce(labels, preds)),
              counters={t.name: t.counters() for t in trainer.tables},
              shards={t.name: t.shard_sizes() for t in trainer.tables},
              # Where each shard's table and its own variables live (all on one ps task).
              placement=[[s.main.resource_handle.device,
                          sorted({v.device for v in (s.counters, s.version)})]
                         for t in trainer.tables for s in t.shards])
with open(params["out"] + ".json", "w") as f:
    json.dump(result, f)
print("RESULT", json.dumps(result), flush=True)
