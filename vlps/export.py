"""Export a trained model as a SavedModel that serves with plain TensorFlow (no vlps, no Keras
import at load time, no custom ops).

Each dynamic table becomes a `tf.lookup.experimental.DenseHashTable` of embeddings only (no
optimizer slots), plus a `MutableHashTable` for the two ids DenseHashTable reserves; unknown ids
embed as zeros, as in evaluation. The serving function is the model's own forward pass traced
with those tables, so string hashing and combiners are inside the graph.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

from vlps.layers import serving_tables, tables_of
from vlps.placement import device_scope
from vlps.table import EmbeddingTable

# DenseHashTable's two reserved keys; ids equal to them are served from a MutableHashTable.
EMPTY_KEY = -(2**63)
DELETED_KEY = -(2**63) + 1


class ServingTable(tf.Module):
    """Embeddings of one table, frozen, in core TensorFlow lookup tables."""

    def __init__(self, table: EmbeddingTable) -> None:
        super().__init__(name=f"serving_{table.name}")
        self.dim = table.dim
        keys_list, emb_list = [], []
        for s in table.shards:
            with device_scope(s.device):
                k, r = s.export_rows()
                keys_list.append(k)
                emb_list.append(r[:, : table.dim])
        keys = tf.concat(keys_list, 0)
        emb = tf.concat(emb_list, 0)
        n = int(tf.size(keys))
        buckets = 2 ** max(4, (max(n, 1) * 2 - 1).bit_length())
        self.main = tf.lookup.experimental.DenseHashTable(
            tf.int64, tf.float32, default_value=tf.zeros([table.dim]), empty_key=EMPTY_KEY,
            deleted_key=DELETED_KEY, initial_num_buckets=buckets,
        )
        self.side = tf.lookup.experimental.MutableHashTable(
            tf.int64, tf.float32, default_value=tf.zeros([table.dim]))
        is_s = keys <= DELETED_KEY
        self.main.insert(tf.boolean_mask(keys, ~is_s), tf.boolean_mask(emb, ~is_s))
        self.side.insert(tf.boolean_mask(keys, is_s), tf.boolean_mask(emb, is_s))

    def lookup(self, ids: tf.Tensor) -> tf.Tensor:
        is_s = ids <= DELETED_KEY
        rows = self.main.lookup(tf.where(is_s, tf.zeros_like(ids), ids))
        return tf.where(is_s[:, None], self.side.lookup(ids), rows)


def export_saved_model(
    model: keras.Model, path: str | os.PathLike[str], input_signature: Any,
    serving_model: keras.Model | None = None,
) -> str:
    """Write `model` to `path` as a SavedModel with a `serving_default` signature.

    `input_signature`: the model's input structure of `tf.TensorSpec`s (a dict of specs for a
    dict-input model). On a cluster pass `serving_model`, a fresh local instance of the same
    architecture: its dense weights are copied from `model` and the tables are read from the
    ps tasks, so the SavedModel holds no reference to remote devices."""
    tables = tables_of(model)
    frozen = {t.name: ServingTable(t) for t in tables}
    target = model
    if serving_model is not None:
        serving_model.set_weights(model.get_weights())
        target = serving_model
    module = tf.Module()
    module.tables = list(frozen.values())
    module.variables_ = [getattr(v, "value", v) for v in target.variables]

    with serving_tables(frozen):
        @tf.function(input_signature=[input_signature])
        def serve(inputs: Any) -> dict[str, tf.Tensor]:
            out = target(inputs, training=False)
            if isinstance(out, dict):
                return out
            return {"output_0": out}

        module.serve = serve
        concrete = serve.get_concrete_function()
        tf.saved_model.save(module, str(path), signatures={"serving_default": concrete})
    return str(path)
