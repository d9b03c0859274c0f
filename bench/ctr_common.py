"""What every case of bench/vlps_ctr.py shares, in any TensorFlow version (the TFRA peer runs
TF 2.16 in its own venv and imports this file, never vlps):

- the data: the driver writes the batches once to a TFRecord file (raw int64 ids, float32
  numeric features, float32 labels); every case, each ps-cluster worker included, reads the
  same file, so no case pays for generating data inside its timed loop;
- the child protocol: a case process builds its model, runs `--warm` untimed steps, prints
  `{"ready": ...}`, then answers each `run N` line on stdin with the seconds N steps took
  (synchronised on the last step's loss) and `finish` with its result JSON. The driver sends
  `run` to the cases in turn, so repetitions of all cases alternate on the same machine;
- exact AUC and the data fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

NUM_DENSE = 13


def write_batches(path: str, batches: Any) -> int:
    """Write (features, labels) batches to a TFRecord file; returns how many."""
    import tensorflow as tf

    n = 0
    with tf.io.TFRecordWriter(path) as w:
        for features, labels in batches:
            ex = tf.train.Example(features=tf.train.Features(feature={
                k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.numpy().tobytes()]))
                for k, v in (("cat", features["cat"]), ("num", features["num"]),
                             ("label", labels))}))
            w.write(ex.SerializeToString())
            n += 1
    return n


def read_batches(path: str, batch: int, fields: int) -> Any:
    """The batches of `write_batches`, in order, as a tf.data.Dataset (prefetch 2)."""
    import tensorflow as tf

    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("cat", "num", "label")}

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, spec)
        cat = tf.reshape(tf.io.decode_raw(ex["cat"], tf.int64), [batch, fields])
        num = tf.reshape(tf.io.decode_raw(ex["num"], tf.float32), [batch, NUM_DENSE])
        label = tf.reshape(tf.io.decode_raw(ex["label"], tf.float32), [batch, 1])
        return {"cat": cat, "num": num}, label

    return tf.data.TFRecordDataset(path).map(parse).prefetch(2)


def auc(labels: Any, scores: Any) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties)."""
    import numpy as np

    labels = np.asarray(labels).ravel() > 0.5
    scores = np.asarray(scores, np.float64).ravel()
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def fingerprint(features: Any, labels: Any) -> str:
    h = hashlib.sha256()
    for t in (features["cat"], features["num"], labels):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(run: Callable[[int], None], warm: int, finish: Callable[[], dict],
          ready: dict | None = None) -> None:
    """The child side of the protocol (see the module docstring)."""
    t0 = time.perf_counter()
    run(warm)
    print(json.dumps({"ready": True, "warm_seconds": time.perf_counter() - t0,
                      **(ready or {})}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            t0 = time.perf_counter()
            run(int(cmd[1]))
            print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
        elif cmd[0] == "finish":
            print(json.dumps(finish()), flush=True)
            return
