"""Full and incremental checkpoints of tables and dense variables, and restore on any shard count.

Layout of one checkpoint directory `<root>/ckpt-<step>/`:
  manifest.json            format, kind (full|incremental), step, parent, model fingerprint,
                           per-table signature (dim, optimizer, slots), shard count, counters
  dense.npz                dense variables and their optimizer slots, keyed by variable path
  tables/<table>/shard-<i>-of-<n>.index/.data-*   a TensorFlow bundle per shard with tensors
                           keys [r], rows [r, width], tombstones [t], cand_keys, cand_vals
`<root>/latest` names the newest complete checkpoint; it is written last (atomically), so a
crash mid-save leaves the previous checkpoint in charge.

Table shards are written by SaveV2/RestoreV2 ops placed on the shard's own device: on a
cluster each ps task writes and reads its files itself (the root must be a shared filesystem),
and no row passes through the chief.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from vlps.hashing import shard_of
from vlps.placement import device_scope
from vlps.table import EmbeddingTable, _Shard, last_steps

FORMAT = "vlps-checkpoint/1"
_NAMES = ["keys", "rows", "tombstones", "cand_keys", "cand_vals"]
_DTYPES = [tf.int64, tf.float32, tf.int64, tf.int64, tf.float32]


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model being restored (names the table or variable)."""


def _shard_prefix(ckpt: Path, table: str, i: int, n: int) -> str:
    return str(ckpt / "tables" / table / f"shard-{i:05d}-of-{n:05d}")


def _save_fn(shard: _Shard) -> Any:
    fn = getattr(shard, "_save_fn", None)
    if fn is None:
        @tf.function
        def fn(prefix: tf.Tensor, since: tf.Tensor) -> tf.Tensor:
            with device_scope(shard.device):
                keys, rows = shard.export_rows()
                changed = tf.cast(last_steps(rows), tf.int64) > since
                keys, rows = tf.boolean_mask(keys, changed), tf.boolean_mask(rows, changed)
                tomb = tf.reshape(shard.tombstones.export()[0], [-1])
                ckeys, cvals = shard.candidates.export()
                ckeys = tf.reshape(ckeys, [-1])
                written = tf.raw_ops.SaveV2(
                    prefix=prefix, tensor_names=_NAMES, shape_and_slices=[""] * 5,
                    tensors=[keys, rows, tomb, ckeys, tf.reshape(cvals, [-1, 2])],
                )
                # tf.function prunes a SaveV2 nothing depends on (TF 2.21): depend on it.
                with tf.control_dependencies([written]):
                    # Tombstones are relative to the previous checkpoint: new interval.
                    shard.tombstones.remove(tomb)
                    return tf.identity(tf.size(keys))
        shard._save_fn = fn  # type: ignore[attr-defined]
    return fn


def _load_fn(shard: _Shard, num_shards: int) -> Any:
    key = f"_load_fn_{num_shards}"
    fn = getattr(shard, key, None)
    if fn is None:
        @tf.function
        def fn(prefix: tf.Tensor) -> tf.Tensor:
            with device_scope(shard.device):
                keys, rows, tomb, ckeys, cvals = tf.raw_ops.RestoreV2(
                    prefix=prefix, tensor_names=_NAMES, shape_and_slices=[""] * 5,
                    dtypes=_DTYPES,
                )
                keys, tomb, ckeys = (tf.reshape(x, [-1]) for x in (keys, tomb, ckeys))
                rows = tf.reshape(rows, [-1, shard.width])
                cvals = tf.reshape(cvals, [-1, 2])
                mine = shard_of(keys, num_shards) == shard.index
                tomb = tf.boolean_mask(tomb, shard_of(tomb, num_shards) == shard.index)
                shard.remove_rows(tomb)
                shard.insert_rows(tf.boolean_mask(keys, mine), tf.boolean_mask(rows, mine))
                cmine = shard_of(ckeys, num_shards) == shard.index
                shard.candidates.insert(tf.boolean_mask(ckeys, cmine),
                                        tf.boolean_mask(cvals, cmine))
                return tf.reduce_sum(tf.cast(mine, tf.int32))
        setattr(shard, key, fn)
    return fn


def _clear_fn(shard: _Shard) -> Any:
    fn = getattr(shard, "_clear_fn", None)
    if fn is None:
        @tf.function
        def fn() -> tf.Tensor:
            with device_scope(shard.device):
                keys, _ = shard.export_rows()
                shard.remove_rows(keys)
                shard.candidates.remove(tf.reshape(shard.candidates.export()[0], [-1]))
                shard.tombstones.remove(tf.reshape(shard.tombstones.export()[0], [-1]))
                return tf.size(keys)
        shard._clear_fn = fn  # type: ignore[attr-defined]
    return fn


def fingerprint(tables: list[EmbeddingTable], dense: dict[str, Any]) -> dict[str, Any]:
    return {
        "tables": {t.name: t.signature() for t in tables},
        "dense": {k: list(np.shape(v)) for k, v in sorted(dense.items())},
    }


def latest(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    marker = Path(root) / "latest"
    if not marker.exists():
        return None
    path = Path(root) / marker.read_text().strip()
    return path if (path / "manifest.json").exists() else None


def read_manifest(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(ckpt) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointMismatchError(f"{ckpt} is not a vlps checkpoint (no manifest.json)") \
            from None
    if manifest.get("format") != FORMAT:
        raise CheckpointMismatchError(
            f"{ckpt}: unknown checkpoint format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def save(
    root: str | os.PathLike[str], step: int, tables: list[EmbeddingTable],
    dense: dict[str, tf.Variable], incremental: bool = False, extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of `tables` and `dense` at `step`; the caller guarantees no update
    runs concurrently (the Trainer joins its workers first), which makes it a consistent cut.

    An incremental checkpoint holds only rows updated after the previous checkpoint plus the
    keys evicted since, and names that checkpoint as its parent."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    parent = latest(root)
    parent_manifest = read_manifest(parent) if parent else None
    if incremental and parent_manifest is None:
        incremental = False  # nothing to be incremental to
    since = int(parent_manifest["step"]) if (incremental and parent_manifest) else -1
    ckpt = root / f"ckpt-{step}"
    if (ckpt / "manifest.json").exists():
        # Same step saved twice (e.g. final save right after a periodic one): keep the first.
        return ckpt
    (ckpt / "tables").mkdir(parents=True, exist_ok=True)
    values = {name: np.asarray(v.numpy()) for name, v in dense.items()}
    np.savez(ckpt / "dense.npz", **values)  # type: ignore[arg-type]
    table_info: dict[str, Any] = {}
    for t in tables:
        (ckpt / "tables" / t.name).mkdir(parents=True, exist_ok=True)
        rows = []
        for s in t.shards:
            prefix = _shard_prefix(ckpt, t.name, s.index, t.num_shards)
            rows.append(int(_save_fn(s)(tf.constant(prefix), tf.constant(since, tf.int64))))
        table_info[t.name] = {
            "signature": t.signature(), "num_shards": t.num_shards, "rows_written": rows,
            "counters": t.counters(),
        }
    manifest = {
        "format": FORMAT, "kind": "incremental" if incremental else "full", "step": int(step),
        "parent": parent.name if incremental and parent else None, "time": time.time(),
        "fingerprint": fingerprint(tables, values), "tables": table_info, "extra": extra or {},
    }
    (ckpt / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp = root / "latest.tmp"
    tmp.write_text(ckpt.name)
    os.replace(tmp, root / "latest")
    return ckpt


def chain(ckpt: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The full checkpoint and the incrementals leading to `ckpt`, oldest first."""
    out = []
    cur: Path | None = ckpt
    while cur is not None:
        manifest = read_manifest(cur)
        out.append((cur, manifest))
        cur = cur.parent / manifest["parent"] if manifest.get("parent") else None
    return out[::-1]


def check_compatible(
    ckpt: Path, manifest: dict[str, Any], tables: list[EmbeddingTable], dense: dict[str, Any]
) -> None:
    saved = manifest["fingerprint"]
    mine = {t.name: t for t in tables}
    if set(saved["tables"]) != set(mine) or set(saved["dense"]) != set(dense):
        raise CheckpointMismatchError(
            f"{ckpt} was written by another model: it has tables {sorted(saved['tables'])} and "
            f"{len(saved['dense'])} dense variables, this model has tables {sorted(mine)} and "
            f"{len(dense)} dense variables"
            + _dense_diff(saved["dense"], dense)
        )
    for name, sig in saved["tables"].items():
        t = mine[name]
        if sig["dim"] != t.dim:
            raise CheckpointMismatchError(
                f"vlps table '{name}': checkpoint {ckpt.name} has dim {sig['dim']}, "
                f"the model has dim {t.dim}")
        if sig["optimizer"]["class"] != t.optimizer.get_config()["class"] \
                or sig["slots"] != list(t.optimizer.slot_names):
            raise CheckpointMismatchError(
                f"vlps table '{name}': checkpoint {ckpt.name} was trained with optimizer "
                f"{sig['optimizer']['class']} (slots {sig['slots']}), the model uses "
                f"{type(t.optimizer).__name__} (slots {list(t.optimizer.slot_names)})")
    for name, shape in saved["dense"].items():
        if list(np.shape(dense[name])) != shape:
            raise CheckpointMismatchError(
                f"dense variable '{name}': checkpoint {ckpt.name} has shape {shape}, the model "
                f"has {list(np.shape(dense[name]))}")


def _dense_diff(saved: dict[str, Any], dense: dict[str, Any]) -> str:
    missing = sorted(set(saved) - set(dense))[:3]
    extra = sorted(set(dense) - set(saved))[:3]
    return (f"; only in checkpoint: {missing}" if missing else "") + (
        f"; only in model: {extra}" if extra else "")


def restore(
    ckpt: str | os.PathLike[str], tables: list[EmbeddingTable], dense: dict[str, tf.Variable]
) -> dict[str, Any]:
    """Restore `ckpt` (and its parents) into `tables` and `dense`, whatever the shard counts.

    Each shard of each table reads every saved shard file of that table on its own device and
    keeps the rows whose id hashes to it, so a checkpoint of n shards restores into m."""
    ckpt = Path(ckpt)
    links = chain(ckpt)
    head_manifest = links[-1][1]
    check_compatible(ckpt, head_manifest, tables, dense)
    for t in tables:
        for s in t.shards:
            if int(s.size()) > 0:  # a fresh table needs no clearing (and no removes)
                _clear_fn(s)()
    for path, manifest in links:
        if manifest is not head_manifest:
            check_compatible(path, manifest, tables, dense)
        for t in tables:
            saved_n = int(manifest["tables"][t.name]["num_shards"])
            for s in t.shards:
                load = _load_fn(s, t.num_shards)
                for i in range(saved_n):
                    load(tf.constant(_shard_prefix(path, t.name, i, saved_n)))
    with np.load(ckpt / "dense.npz") as data:
        for name, var in dense.items():
            var.assign(data[name])
    for t in tables:
        counters = head_manifest["tables"][t.name]["counters"]
        values = [int(counters.get(n, 0)) for n in ("created", "not_admitted", "evicted_ttl",
                                                    "evicted_cap")]
        for k, s in enumerate(t.shards):
            s.counters.assign(values if k == 0 else [0] * len(values))
    return head_manifest
