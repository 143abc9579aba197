"""Issue 17, column kinds (`input.columns`): numeric, categorical (one-hot, out-of-vocabulary
column, min_frequency), binary, and missing values per column (fills, indicator, drop) learnt from
the training split and run inside the exported graph, so a plain onnxruntime session fed the raw
CSV values (strings, NaN for a missing number) answers what `dlc predict` does."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from dlc.commands import init
from dlc.data import load_dataset
from dlc.data._table import read_table
from dlc.data.columns import MARKERS, encode, fit
from dlc.graph import Builder
from dlc.model.columns import column_front

COLORS = ["red", "green", "blue", "teal"]


def write_table(path, n=160, seed=0):
    """A numeric column `size` (every 9th cell missing), a categorical `color` (teal rare, some
    cells missing), a binary `shape` (round/square, some missing), a numeric `weight` whose
    missing rows are dropped, and a class `y` that depends on all of them."""
    rng = np.random.default_rng(seed)
    lines = ["size,color,shape,weight,y"]
    for i in range(n):
        size, weight = rng.normal(), rng.normal()
        color = COLORS[i % 3] if i % 40 else "teal"
        shape = "round" if rng.random() < 0.5 else "square"
        score = size + (color == "red") - (shape == "round") + weight
        cells = [f"{size:.3f}", color, shape, f"{weight:.3f}", "hi" if score > 0 else "lo"]
        if i % 9 == 4:
            cells[0] = MARKERS[i % len(MARKERS)]
        if i % 11 == 6:
            cells[1] = "NA"
        if i % 13 == 7:
            cells[2] = ""
        if i % 17 == 8:
            cells[3] = "?"
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


COLUMNS = {"size": {"kind": "numeric", "missing": "median", "indicator": True},
           "color": {"kind": "categorical", "min_frequency": 5, "indicator": True},
           "shape": "binary",
           "weight": {"kind": "numeric", "missing": "drop"}}


def spec_file(tmp_path, columns=COLUMNS, epochs=3):
    spec = {"dlc": 1, "name": "cols", "input": {"columns": columns},
            "layers": [{"type": "dense", "name": "h", "units": 8, "activation": "relu"},
                       {"type": "dense", "name": "out", "units": 2}],
            "task": {"kind": "classification"},
            "data": {"source": "csv:t.csv", "target": "y",
                     "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "train": {"epochs": epochs, "batch_size": 16,
                      "optimizer": {"type": "adam", "lr": 0.01}, "seed": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, spec


def raw_csv(path, state):
    """The CSV's cells as a plain onnxruntime user feeds them: float32 with NaN for a missing
    number, the text of every other cell."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    feeds = {}
    for c in state["columns"]:
        cells = [r[c["name"]] for r in rows]
        if c["kind"] == "numeric":
            feeds[c["name"]] = np.array([np.nan if v in MARKERS else float(v) for v in cells],
                                        np.float32)
        else:
            feeds[c["name"]] = np.array(cells, dtype=object)
    return feeds


def front_model(state) -> bytes:
    b = Builder()
    b.output(column_front(b, state), "encoded", "float32", ["N", None])
    return b.model("front").SerializeToString()


def test_the_graph_front_is_the_training_encoding(tmp_path):
    """Training feeds encode()'s arrays; the exported graph's front must compute the same
    numbers from the raw cells, for every kind, missing cells and unseen categories too."""
    write_table(tmp_path / "t.csv")
    _, spec = spec_file(tmp_path)
    ds = load_dataset(spec, tmp_path)
    state = ds.columns["input"]
    (tmp_path / "new.csv").write_text("size,color,shape,weight\n1.5,purple,round,0\n"
                                      "NA,,,1\n-2,teal,oval,2\n0,red,square,3\n")
    session = ort.InferenceSession(front_model(state))
    for name in ("t.csv", "new.csv"):
        feeds = raw_csv(tmp_path / name, state)
        feeds = {k: v for k, v in feeds.items() if k != "weight" or name == "new.csv"} | \
            {"weight": np.nan_to_num(feeds["weight"])}  # drop rows: refused, never encoded
        got = session.run(None, feeds)[0]
        np.testing.assert_array_equal(got, encode(state, feeds))
    new = encode(state, raw_csv(tmp_path / "new.csv", state))
    color = next(c for c in state["columns"] if c["name"] == "color")
    assert color["values"] == ["blue", "green", "red"]  # teal: under min_frequency 5
    oov = 1 + 1 + len(color["values"])  # size, its indicator, then color's one-hot
    assert new[0, oov] == 1 and new[2, oov] == 1  # purple (unseen) and teal (rare): the OOV
    assert new[1, oov + 1] == 1  # color's missing indicator; the fill is the commonest value
    assert ds.train.x.shape[1] == spec["input"]["shape"][0] == 2 + 4 + 1 + 1 + 1


def test_fits_come_from_the_training_rows_only():
    raw = {"n": np.array([1.0, np.nan, 3.0, 100.0]),
           "c": np.array(["a", "b", "b", "z"], dtype=object)}
    state = fit({"n": {"kind": "numeric", "missing": "mean"}, "c": {"kind": "categorical"}},
                {k: v[:3] for k, v in raw.items()}, "none")
    n, c = state["columns"]
    assert n["fill"] == 2.0 and c["values"] == ["a", "b"] and c["fill"] == "b"
    x = encode(state, raw)
    np.testing.assert_array_equal(x[:, 0], [1, 2, 3, 100])
    np.testing.assert_array_equal(x[3, 1:], [0, 0, 1])  # z: out of vocabulary


def test_plain_onnxruntime_on_raw_rows_answers_what_dlc_predict_does(cli, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    spec, _ = spec_file(tmp_path)
    assert cli("train", str(spec), "--out", "run", "-q").code == 0
    rows = tmp_path / "rows.csv"
    rows.write_text("weight,shape,color,size\n0.5,round,purple,NA\n-1,,red,0.3\n"
                    "2,square,,\n0,oval,teal,1e3\n")
    r = cli("predict", "run/model.onnx", str(rows), "-o", "p.npz")
    assert r.code == 0, r.err
    predicted = np.load(tmp_path / "p.npz")
    model = onnx.load(tmp_path / "run/model.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    state, labels = json.loads(meta["dlc.columns"])["input"], json.loads(meta["dlc.labels"])
    assert {i.name for i in model.graph.input} == {"size", "color", "shape", "weight"}
    probs, index = ort.InferenceSession(model.SerializeToString()).run(
        ["probabilities", "class_index"], raw_csv(rows, state))
    np.testing.assert_array_equal(predicted["class_index"], index)
    np.testing.assert_array_equal(predicted["label"], np.asarray(labels)[index])
    np.testing.assert_array_equal(np.stack([predicted[f"p_{c}"] for c in labels], 1), probs)
    r = cli("predict", "run/model.onnx", str(rows))  # class names on stdout
    assert r.code == 0 and r.out.splitlines()[1].split(",")[1] == labels[index[0]]
    pq.write_table(pacsv.read_csv(rows), tmp_path / "rows.parquet")  # NA and empty: nulls
    assert cli("predict", "run/model.onnx", "rows.parquet", "-o", "q.npz").code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "q.npz")["class_index"], index)


def test_drop_rows_are_left_out_and_refused_by_predict(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    spec, data = spec_file(tmp_path, epochs=1)
    ds = load_dataset(data, tmp_path)
    dropped = sum(1 for i in range(160) if i % 17 == 8)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 160 - dropped
    assert cli("train", str(spec), "--out", "run", "-q").code == 0
    (tmp_path / "rows.csv").write_text("size,color,shape,weight\n1,red,round,0\n1,red,round,NA\n")
    r = cli("predict", "run/model.onnx", "rows.csv")
    assert r.code == 1 and "rows.csv:3: a missing cell" in r.err and "missing: drop" in r.err


def test_kinds_are_inferred_and_a_misspelt_kind_is_a_spec_error(cli, tmp_path):
    write_table(tmp_path / "t.csv")
    _, data = spec_file(tmp_path, {"size": "auto", "color": "auto", "shape": "auto"})
    load_dataset(data, tmp_path)
    kinds = {k: v["kind"] for k, v in data["input"]["columns"].items()}
    assert kinds == {"size": "numeric", "color": "categorical", "shape": "binary"}
    spec, _ = spec_file(tmp_path, {"size": "numerik", "color": {"kind": "categorical",
                                                                "min_frequenc": 2}})
    r = cli("validate", str(spec))
    assert r.code == 2 and "input.columns.size: " in r.err and "did you mean 'numeric'" in r.err
    assert "input.columns.color.min_frequenc: unknown key" in r.err, r.err


@pytest.mark.parametrize("change,word", [
    ({"outputs": {"a": {"kind": "binary", "target": "y"}}}, "outputs"),
    ({"data": {"source": "npz:t.npz"}}, "npz:t.npz"),
    ({"input": {"columns": {"size": "numeric"}, "dtype": "int64"}}, "an int64 input takes"),
])
def test_columns_outside_one_table_task_are_refused(cli, tmp_path, change, word):
    path, spec = spec_file(tmp_path)
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if key in spec else value
    if "outputs" in change:
        del spec["task"]
    path.write_text(yaml.safe_dump(spec))
    r = cli("validate", str(path))
    assert r.code == 2 and "input.columns" in r.err and word in r.err, r.err


def test_data_missing_is_every_columns_default(tmp_path):
    write_table(tmp_path / "t.csv")
    _, spec = spec_file(tmp_path, {"size": "numeric", "color": "categorical"})
    spec["data"]["missing"] = {"strategy": "constant", "value": 7}
    state = load_dataset(spec, tmp_path).columns["input"]
    size, color = state["columns"]
    assert size["fill"] == 7.0 and color["fill"] == "7"  # not a category: out of vocabulary


def embedding_spec(tmp_path):
    spec = {"dlc": 1, "name": "emb",
            "inputs": {"numbers": {"columns": {"size": {"kind": "numeric", "indicator": True},
                                               "shape": "binary"}},
                       "cats": {"dtype": "int64", "columns": {
                           "color": {"kind": "categorical", "encoding": "embedding",
                                     "min_frequency": 5}}}},
            "layers": [{"type": "embedding", "name": "embed", "inputs": ["cats"], "dim": 3},
                       {"type": "flatten", "name": "flat"},
                       {"type": "concat", "name": "joined", "inputs": ["numbers", "flat"]},
                       {"type": "dense", "name": "out", "units": 2}],
            "task": {"kind": "classification"},
            "data": {"source": "csv:t.csv", "target": "y",
                     "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "train": {"epochs": 2, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.01},
                      "seed": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, spec


def test_embedded_categories_learn_their_vocab_size_and_run_in_the_graph(cli, tmp_path,
                                                                        monkeypatch):
    """An int64 entry of `inputs:` with categorical columns (encoding: embedding): ids from the
    training split, an out-of-vocabulary id, the embedding's vocab_size learnt; the exported
    model takes the raw columns and plain onnxruntime answers what dlc predict does."""
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    path, spec = embedding_spec(tmp_path)
    ds = load_dataset(spec, tmp_path)
    assert spec["layers"][0]["vocab_size"] == 4  # blue, green, red + out of vocabulary
    assert ds.train.x["cats"].dtype == np.int64
    assert set(np.asarray(ds.train.x["cats"]).ravel()) <= {0, 1, 2, 3}
    assert cli("train", str(path), "--out", "run", "-q").code == 0
    (tmp_path / "rows.csv").write_text("size,color,shape\n1,purple,round\nNA,red,\n0,,square\n")
    assert cli("predict", "run/model.onnx", "rows.csv", "-o", "p.npz").code == 0
    model = onnx.load(tmp_path / "run/model.onnx")
    states = json.loads({p.key: p.value for p in model.metadata_props}["dlc.columns"])
    feeds = {**raw_csv(tmp_path / "rows.csv", states["numbers"]),
             **raw_csv(tmp_path / "rows.csv", states["cats"])}
    probs = ort.InferenceSession(model.SerializeToString()).run(["probabilities"], feeds)[0]
    predicted = np.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(np.stack([predicted["p_hi"], predicted["p_lo"]], 1), probs)
    ids = encode(states["cats"], raw_csv(tmp_path / "rows.csv", states["cats"]))
    front = ort.InferenceSession(front_model(states["cats"]))
    np.testing.assert_array_equal(front.run(None, {"color": feeds["color"]})[0], ids)
    color = states["cats"]["columns"][0]
    assert color["values"] == ["blue", "green", "red"]
    np.testing.assert_array_equal(ids[:, 0], [3, 2, color["values"].index(color["fill"])])


def test_a_numeric_column_is_filled_with_a_number():
    from dlc.errors import DlcError

    with pytest.raises(DlcError, match=r"input.columns.n.value: a numeric column's fill"):
        fit({"n": {"kind": "numeric", "missing": "constant", "value": "zero"}},
            {"n": np.array([1.0, np.nan])}, None)


def test_an_unseen_binary_value_is_a_missing_cell_in_the_graph_and_in_python(cli, tmp_path,
                                                                              monkeypatch):
    """`oval` in a round/square column: no 0/1 stands for it, so it is read as a missing cell
    (the fill, and the indicator fires), by encode() and by the exported graph alike; plain
    onnxruntime on the raw rows still answers what dlc predict does."""
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv")
    columns = {**COLUMNS, "shape": {"kind": "binary", "indicator": True}}
    spec, data = spec_file(tmp_path, columns=columns)
    state = load_dataset(data, tmp_path).columns["input"]
    rows = tmp_path / "rows.csv"
    rows.write_text("size,color,shape,weight\n1,red,oval,0\n1,red,,0\n1,red,round,0\n")
    feeds = raw_csv(rows, state)
    encoded = encode(state, feeds)
    np.testing.assert_array_equal(ort.InferenceSession(front_model(state)).run(None, feeds)[0],
                                  encoded)
    shape = 1 + 1 + 4 + 1  # size, its indicator, color's one-hot, color's indicator
    fill = ["round", "square"].index(state["columns"][2]["fill"])
    assert encoded[:, shape].tolist() == [fill, fill, 0]  # oval and a missing cell: the fill
    assert encoded[:, shape + 1].tolist() == [1, 1, 0]  # ... and both fire the indicator
    assert cli("train", str(spec), "--out", "run", "-q").code == 0
    assert cli("predict", "run/model.onnx", str(rows), "-o", "p.npz").code == 0
    session = ort.InferenceSession(str(tmp_path / "run/model.onnx"))
    index, = session.run(["class_index"], feeds)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npz")["class_index"], index)


@pytest.mark.parametrize("cell,found,instead", [
    (lambda i: f"review {i} says the {COLORS[i % 4]} one is fine", "free text",
     "declare it {kind: text} under an int64 input"),
    (lambda i: f"id-{i:05d}", "an identifier", "leave the column out")])
def test_auto_never_one_hots_free_text_or_identifiers(cli, tmp_path, cell, found, instead):
    """A string column with a value per row under `auto`: `dlc init`'s rule (infer_kind, the
    one function both use) finds text or an identifier, and training refuses it in one line
    saying what to write, instead of a one-hot column per distinct string."""
    write_table(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    (tmp_path / "t.csv").write_text("\n".join([lines[0] + ",note"] + [
        f"{line},{cell(i)}" for i, line in enumerate(lines[1:])]) + "\n")
    spec, _ = spec_file(tmp_path, {"size": "numeric", "note": "auto"})
    r = cli("train", str(spec), "--out", tmp_path / "run", "-q")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert f"input.columns.note: auto found {found} (160 distinct values in 160 rows" in r.err
    assert instead in r.err, r.err
    kinds, left = init._columns(read_table(tmp_path / "t.csv", "t.csv", True), 4)  # 4: y
    assert (kinds["note"][0] == "text") if found == "free text" else ("note" in left)
