"""The platform metrics hook and Keras fit() training of dynamic tables in one process."""

import json

import keras
import tensorflow as tf

import vlps
from vlps.data import synthetic_ctr


def test_report_appends_json_lines(tmp_path, monkeypatch) -> None:
    path = tmp_path / "m.jsonl"
    monkeypatch.setenv("MLP_METRICS_FILE", str(path))
    monkeypatch.setenv("MLP_TASK_TYPE", "chief")
    monkeypatch.setenv("MLP_TASK_INDEX", "0")
    vlps.report(3, {"loss": tf.constant(0.5), "auc": 0.7})
    vlps.report(4, {"loss": 0.25})
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4]
    assert rows[0]["task"] == "chief:0" and rows[0]["metrics"] == {"loss": 0.5, "auc": 0.7}
    assert isinstance(rows[0]["time"], float)


def test_keras_fit_trains_tables(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLP_METRICS_FILE", str(tmp_path / "fit.jsonl"))
    cat = keras.Input((26,), dtype="int64", name="cat")
    emb = vlps.DynamicEmbedding(4, combiner="mean", name="fit_emb",
                                optimizer=vlps.Adagrad(0.1))(cat)
    out = keras.layers.Dense(1, activation="sigmoid")(emb)
    model = vlps.Model({"cat": cat}, out)
    model.compile(optimizer=keras.optimizers.Adagrad(0.1), loss="binary_crossentropy")
    ds = synthetic_ctr(64, seed=3, zipf_a=1.5).map(lambda x, y: ({"cat": x["cat"]}, y))
    model.fit(ds, steps_per_epoch=5, epochs=2, verbose=0,
              callbacks=[vlps.MetricsCallback(every=5)])
    assert vlps.tables_of(model)[0].size() > 0
    lines = (tmp_path / "fit.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "loss" in json.loads(lines[-1])["metrics"]
