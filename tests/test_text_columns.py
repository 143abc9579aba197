"""Issue 17, `kind: text` columns: a free-text column of a table becomes token ids through the
model's own text front (vocabulary from the training split), in its own int64 `inputs:` entry
read by an embedding, beside the numeric and categorical columns of another entry; the exported
graph takes the raw cells, so plain onnxruntime on the raw rows answers what `dlc predict` does."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from dlc.data import load_dataset
from dlc.data.columns import MARKERS, encode, fit

WORDS = {"hi": ["bright", "sunny", "warm"], "lo": ["dark", "cold", "rainy"]}
FILLER = ["the", "day", "was", "quite", "and", "then", "it", "got"]


def write_table(path, n=200, seed=0):
    """`size` (numeric, some missing), `color` (categorical), `note` (free text, some missing,
    punctuation and case), and a class `y` that the note's words and the size decide."""
    rng = np.random.default_rng(seed)
    lines = ["size,color,note,y"]
    for i in range(n):
        y = "hi" if rng.random() < 0.5 else "lo"
        words = list(rng.choice(FILLER, 4)) + [str(rng.choice(WORDS[y]))]
        rng.shuffle(words)
        note = " ".join(words).capitalize() + ("!" if i % 3 else ", yes.")
        size = rng.normal() + (0.5 if y == "hi" else -0.5)
        cells = [f"{size:.3f}" if i % 10 else "NA", ["red", "blue"][i % 2],
                 f'"{note}"' if i % 15 else "", y]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def spec_file(tmp_path, epochs=6):
    spec = {"dlc": 1, "name": "notes",
            "inputs": {"table": {"columns": {"size": "numeric", "color": "categorical"}},
                       "note": {"dtype": "int64",
                                "columns": {"note": {"kind": "text", "max_length": 8}}}},
            "layers": [{"type": "embedding", "name": "embed", "inputs": ["note"], "dim": 8,
                        "padding_index": 0},
                       {"type": "sequence_pool", "name": "pool", "mode": "mean"},
                       {"type": "concat", "name": "joined", "inputs": ["table", "pool"]},
                       {"type": "dense", "name": "h", "units": 16, "activation": "relu"},
                       {"type": "dense", "name": "out", "units": 2}],
            "task": {"kind": "classification"},
            "data": {"source": "csv:t.csv", "target": "y",
                     "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "train": {"epochs": epochs, "batch_size": 16,
                      "optimizer": {"type": "adam", "lr": 0.02}, "seed": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, spec


def raw_rows(path, states):
    """The cells as a plain onnxruntime user feeds them: float32 (NaN: missing), else the text."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    feeds = {}
    for c in (c for s in states.values() for c in s["columns"]):
        cells = [r[c["name"]] for r in rows]
        feeds[c["name"]] = np.array([np.nan if v in MARKERS else float(v) for v in cells],
                                    np.float32) if c["kind"] == "numeric" else \
            np.array(cells, dtype=object)
    return feeds


def test_text_ids_come_from_the_training_texts_only():
    raw = {"t": np.array(["Red fox.", "red DOG", "NA", "cat, red"], dtype=object)}
    state = fit({"t": {"kind": "text", "max_length": 4}}, {"t": raw["t"][:3]}, None)
    c = state["columns"][0]
    assert c["vocab"] == ["<pad>", "<oov>", "red", ".", "dog", "fox"] and state["ids"] == 6
    np.testing.assert_array_equal(encode(state, raw), [[2, 5, 3, 0], [2, 4, 0, 0],
                                                       [0, 0, 0, 0], [1, 1, 2, 0]])


def test_train_ids_are_the_graph_ids_and_onnxruntime_answers_what_predict_does(
        cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    path, spec = spec_file(tmp_path)
    ds = load_dataset(spec, tmp_path)
    assert ds.train.x["note"].dtype == np.int64 and ds.train.x["note"].shape[1] == 8
    assert cli("train", str(path), "--out", "run", "-q").code == 0
    model = onnx.load(tmp_path / "run/model.onnx")
    states = json.loads({p.key: p.value for p in model.metadata_props}["dlc.columns"])
    assert {i.name for i in model.graph.input} == {"size", "color", "note"}
    feeds = raw_rows(tmp_path / "t.csv", states)
    # the ids training learnt from are the ids the exported graph computes from the raw cells
    front = onnx.load(tmp_path / "run/model.onnx")
    front.graph.output.append(onnx.helper.make_tensor_value_info(_ids_tensor(front),
                                                                 onnx.TensorProto.FLOAT, None))
    got = ort.InferenceSession(front.SerializeToString()).run([_ids_tensor(front)], feeds)[0]
    np.testing.assert_array_equal(got.astype(np.int64), encode(states["note"], feeds))
    r = cli("predict", "run/model.onnx", "t.csv", "-o", "p.npz")
    assert r.code == 0, r.err
    probs, index = ort.InferenceSession(model.SerializeToString()).run(
        ["probabilities", "class_index"], feeds)
    predicted = np.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(predicted["class_index"], index)
    labels = json.loads({p.key: p.value for p in model.metadata_props}["dlc.labels"])
    np.testing.assert_array_equal(np.stack([predicted[f"p_{c}"] for c in labels], 1), probs)
    r = cli("evaluate", "run/model.onnx", "--data", "t.csv", "-o", "m.json")
    assert r.code == 0 and json.loads((tmp_path / "m.json").read_text())["accuracy"] > 0.8


def _ids_tensor(model) -> str:
    """The text front's output: the Cast of the ids to float in the note column's scope."""
    return next(n.output[0] for n in model.graph.node
                if n.op_type == "Cast" and n.name.startswith("columns/note")
                and n.attribute[0].i == onnx.TensorProto.FLOAT)


def test_init_infers_text_and_writes_a_spec_that_trains(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()  # an identifier column stays out
    (tmp_path / "t.csv").write_text("\n".join([f"ref,{lines[0]}"] + [
        f"r{i:04d},{line}" for i, line in enumerate(lines[1:])]) + "\n")
    assert cli("init", "t.csv", "--target", "y", "-o", "spec.yaml").code == 0
    spec = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    assert spec["inputs"]["note_text"]["columns"]["note"]["kind"] == "text"
    assert set(spec["inputs"]["table"]["columns"]) == {"size", "color"}
    assert "left out (identifiers: a value per row): ref" in (tmp_path / "spec.yaml").read_text()
    assert cli("validate", "spec.yaml").code == 0
    r = cli("train", "spec.yaml", "--out", "run", "-q", "--log-format", "jsonl")
    assert r.code == 0, r.err
    end = json.loads(r.out.splitlines()[-1])
    assert end["event"] == "end" and end["test"]["accuracy"] > 0.8, end


def test_cv_refits_every_encoder_on_each_folds_training_rows(cli, tmp_path, monkeypatch):
    from dlc.commands.cv import _raw_data, fold_dataset, fold_indices
    from dlc.model.spec import load_spec

    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    path, _ = spec_file(tmp_path, epochs=4)
    spec = load_spec(str(path), [])
    raw = _raw_data(spec)
    offsets = []
    for train, held in fold_indices(raw[1], len(raw[1]), 3, 0, True)[:2]:
        ds = fold_dataset(raw, train, held, spec.data, True)
        size = ds.columns["table"]["columns"][0]
        values = raw[0]["size"][train]  # median-filled, then standardised: the fold's mean
        filled = np.where(np.isnan(values), np.nanmedian(values), values)
        assert size["offset"] == pytest.approx(filled.mean(), rel=1e-6)
        offsets.append(size["offset"])
    assert offsets[0] != offsets[1]
    r = cli("cv", str(path), "--folds", "3", "-o", "cv.json")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "cv.json").read_text())
    assert report["mean"]["accuracy"] > 0.75 and len(report["per_fold"]) == 3


def test_quantize_calibrates_on_the_raw_rows(cli, tmp_path, monkeypatch):
    """Static int8: calibrated on the raw training rows (strings, NA) through the model's own
    front; the int8 copy answers raw rows like the float model."""
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    path, _ = spec_file(tmp_path)
    assert cli("train", str(path), "--out", "run", "-q").code == 0
    r = cli("quantize", "run/model.onnx", "-o", "q.onnx", "--mode", "static")
    assert r.code == 0, r.err
    assert "calibration samples" in r.out and "test split of the spec's data" in r.out
    ops = {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}
    assert {"QuantizeLinear", "StringSplit", "LabelEncoder"} <= ops
    agree = float(r.out.split("same predicted class:")[1].split()[0])
    assert agree >= 0.95
    r = cli("quantize", "run/model.onnx", "-o", "d.onnx", "--mode", "dynamic", "--data", "t.csv")
    assert r.code == 0 and "t.csv (all samples)" not in r.out, r.err  # the spec's test split
    assert cli("predict", "q.onnx", "t.csv").code == 0


def test_explain_attributes_each_raw_column(cli, tmp_path, monkeypatch):
    """Attributions of the encoded features summed back per raw column (the text column: over
    its token positions and embedding dimensions); integrated gradients stay complete."""
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    path, _ = spec_file(tmp_path)
    assert cli("train", str(path), "--out", "run", "-q").code == 0
    r = cli("explain", "run/model.onnx", "t.csv", "--method", "integrated_gradients",
            "--steps", "64", "-o", "a.csv")
    assert r.code == 0, r.err
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(list(rows[0])[3:]) == ["color", "note", "size"]
    complete = [line for line in r.out.splitlines() if "sum of attributions" in line]
    for line in complete[:20]:
        total, gap = float(line.split("attributions ")[1].split()[0]), float(line.split()[-1])
        assert total == pytest.approx(gap, abs=0.02 + 0.02 * abs(gap)), line
    ranked = r.out.splitlines()[len(complete) + 2:]
    assert ranked[0].split()[1] == "note"  # the words decide the class
    assert cli("explain", "run/model.onnx", "t.csv", "--baseline", "zero").code == 0


def test_a_text_column_outside_an_int64_input_is_a_spec_error(cli, tmp_path):
    path, spec = spec_file(tmp_path)
    spec["inputs"]["table"]["columns"]["note"] = "text"
    del spec["inputs"]["note"]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = cli("validate", str(path))
    assert r.code == 2 and "note: text needs an int64 input (dtype: int64)" in r.err, r
