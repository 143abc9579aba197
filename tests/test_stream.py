"""Issue 17, `dlc predict` and `dlc evaluate --data` on a table streamed in record batches
(dlc.data.stream): for numeric features, columns by kind with missing values and strings, and
text, the predictions (CSV, byte for byte) and the metrics are those of the table read whole,
and a bad cell is named by the same line. Small CSV blocks and an odd --batch-size make several
batches, and model runs that straddle them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from conftest import SPECS
from test_columns import spec_file, write_table
from test_text_columns import spec_file as text_spec_file
from test_text_columns import write_table as write_text_table

from dlc.data import cache, stream
from dlc.model.compile import compile_spec
from dlc.model.spec import load_spec
from dlc.runtime import infer

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def batches(monkeypatch):
    """Small CSV blocks; counts the streamed batches (a list: one entry a batch)."""
    monkeypatch.setattr(cache, "BLOCK", 512)
    seen, tables = [], stream.tables

    def counted(*args):
        for table in tables(*args):
            seen.append(len(table))
            yield table

    monkeypatch.setattr(stream, "tables", counted)
    return seen


def same_as_whole(cli, monkeypatch, seen, *args, least=3):
    """Run a dlc command streamed, then with the table read whole; both results, each with
    the bytes of its -o file (if any) in place of its stdout when that is empty."""
    out = Path(args[args.index("-o") + 1]) if "-o" in args else None
    seen.clear()
    streamed = cli(*args)
    assert len(seen) >= least or streamed.code != 0, seen  # it streamed, in several batches
    written = out.read_bytes() if out and out.exists() else None
    with monkeypatch.context() as m:
        m.setattr(infer, "_streamed", lambda *a, **k: None)
        whole = cli(*args)
    if written is not None:
        assert written == out.read_bytes()
    return streamed, whole


def test_numeric_predictions_stream_to_the_same_bytes(cli, tmp_path, monkeypatch, batches):
    model = tmp_path / "iris.onnx"
    model.write_bytes(compile_spec(load_spec(SPECS / "iris.yaml")).SerializeToString())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)) * 3
    named = tmp_path / "named.csv"  # by name, in another order, with a column to ignore
    named.write_text("note,petal_width,sepal_length,petal_length,sepal_width\n" + "".join(
        f"n{i},{r[3]:.7g},{r[0]:.7g},{r[2]:.7g},{r[1]:.7g}\n" for i, r in enumerate(x)))
    bare = tmp_path / "bare.csv"  # no header: every column in order
    bare.write_text("".join(",".join(f"{v:.9g}" for v in r) + "\n" for r in x))
    pq.write_table(pacsv.read_csv(named), tmp_path / "named.parquet")
    feather.write_feather(pacsv.read_csv(named), tmp_path / "named.feather")
    for data, least in ((named, 3), (bare, 3), (tmp_path / "named.parquet", 1),
                        (tmp_path / "named.feather", 1)):
        streamed, whole = same_as_whole(cli, monkeypatch, batches, "predict", model, data,
                                        "--batch-size", "7", least=least)
        assert streamed.code == whole.code == 0, (streamed.err, whole.err)
        assert streamed.out == whole.out and len(streamed.out.splitlines()) == 301
    lines = bare.read_text().splitlines()
    lines[250] = ",".join(["1", "abc", "2", "3"])
    bare.write_text("\n".join(lines) + "\n")
    streamed, whole = same_as_whole(cli, monkeypatch, batches, "predict", model, bare)
    assert streamed.code == whole.code == 1 and streamed.err == whole.err
    assert "bare.csv:251: column '#1': 'abc' is not a number" in streamed.err, streamed.err


def test_columns_with_missing_cells_and_strings_stream_to_the_same_bits(cli, tmp_path,
                                                                        monkeypatch, batches):
    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "t.csv", n=400)
    spec, _ = spec_file(tmp_path, epochs=1)
    assert cli("train", str(spec), "--out", "run", "-q").code == 0
    for data in ("t.csv", "csv:t.csv"):  # all rows; the model's own source: its test split
        streamed, whole = same_as_whole(cli, monkeypatch, batches, "evaluate", "run/model.onnx",
                                        "--data", data, "--batch-size", "7", "-o", "m.json")
        assert streamed.code == whole.code == 0, (streamed.err, whole.err)
        assert streamed.out == whole.out and "accuracy" in streamed.out
    assert "the test split of csv:t.csv" in streamed.out
    # without a target, a missing cell of a `missing: drop` column is refused by its line
    bare = "".join(line.rsplit(",", 1)[0] + "\n" for line in open(tmp_path / "t.csv"))
    (tmp_path / "x.csv").write_text(bare)
    streamed, whole = same_as_whole(cli, monkeypatch, batches, "predict", "run/model.onnx",
                                    "x.csv")
    assert streamed.code == whole.code == 1 and streamed.err == whole.err
    assert "x.csv:10: a missing cell" in streamed.err, streamed.err
    write_table(tmp_path / "new.csv", n=400, seed=1)
    rows = tmp_path / "new.csv"
    rows.write_text(rows.read_text().replace(",?,", ",1.5,"))  # no dropped cell left
    for out in ([], ["-o", "p.csv"]):
        streamed, whole = same_as_whole(cli, monkeypatch, batches, "predict", "run/model.onnx",
                                        "new.csv", "--batch-size", "7", *out)
        assert streamed.code == whole.code == 0, (streamed.err, whole.err)
        assert streamed.out == whole.out
    assert len((tmp_path / "p.csv").read_bytes().splitlines()) == 401
    pq.write_table(pacsv.read_csv(rows), tmp_path / "new.parquet")  # NA and empty: nulls
    streamed, whole = same_as_whole(cli, monkeypatch, batches, "predict", "run/model.onnx",
                                    "new.parquet", "--batch-size", "7", least=1)
    assert streamed.code == whole.code == 0 and streamed.out == whole.out


def test_text_columns_stream_to_the_same_bits(cli, tmp_path, monkeypatch, batches):
    monkeypatch.chdir(tmp_path)
    write_text_table(tmp_path / "t.csv", n=300)
    spec, _ = text_spec_file(tmp_path, epochs=1)
    assert cli("train", str(spec), "--out", "run", "-q").code == 0
    streamed, whole = same_as_whole(cli, monkeypatch, batches, "evaluate", "run/model.onnx",
                                    "--data", "t.csv", "--batch-size", "7", "-o", "m.json")
    assert streamed.code == whole.code == 0 and streamed.out == whole.out
    assert json.loads((tmp_path / "m.json").read_text())["samples"] == 300
    streamed, whole = same_as_whole(cli, monkeypatch, batches, "predict", "run/model.onnx",
                                    "t.csv", "--batch-size", "7")
    assert streamed.code == whole.code == 0 and streamed.out == whole.out


def test_predict_streams_past_the_text_row_bound(cli, tmp_path, monkeypatch, batches):
    """A streamed table's CSV predictions are written part by part: MAX_TEXT_ROWS (the bound
    of predictions gathered in memory) no longer applies to them; JSON keeps it."""
    from dlc.runtime import predictions

    monkeypatch.setattr(predictions, "MAX_TEXT_ROWS", 10)
    model = tmp_path / "iris.onnx"
    model.write_bytes(compile_spec(load_spec(SPECS / "iris.yaml")).SerializeToString())
    data = tmp_path / "x.csv"
    data.write_text("".join("1,2,3,4\n" for _ in range(200)))
    r = cli("predict", model, data)
    assert r.code == 0 and len(r.out.splitlines()) == 201, r.err
    r = cli("predict", model, data, "-o", tmp_path / "p.json")
    assert r.code == 1 and "MAX_TEXT_ROWS" in r.err


def test_numeric_evaluation_streams_to_the_same_metrics(cli, tmp_path, monkeypatch, batches):
    """A one-input model of numeric features with data.missing (NA cells filled in the graph);
    a class the model does not know is named by its line, as before."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 3))
    names = np.array(["lo", "mid", "hi"])[np.digitize(x[:, 0] - x[:, 1], [-0.5, 0.5])]
    cells = [[f"{v:.5f}" for v in r] for r in x]
    for i in range(0, 400, 13):
        cells[i][i % 3] = "NA"
    (tmp_path / "t.csv").write_text("a,b,c,y\n" + "".join(
        ",".join(r) + f",{n}\n" for r, n in zip(cells, names)))
    (tmp_path / "spec.yaml").write_text(
        "dlc: 1\nname: num\ninput: {shape: [3]}\n"
        "layers: [{type: dense, name: h, units: 8, activation: relu},"
        " {type: dense, name: out, units: 3}]\n"
        "task: {kind: classification}\n"
        "data: {source: csv:t.csv, target: y, missing: {strategy: median},"
        " split: {val: 0.2, test: 0.2, seed: 0}}\n"
        "train: {epochs: 1, batch_size: 16, optimizer: {type: adam, lr: 0.01}, seed: 0}\n")
    assert cli("train", "spec.yaml", "--out", "run", "-q").code == 0
    for data in ("t.csv", "csv:t.csv"):
        streamed, whole = same_as_whole(cli, monkeypatch, batches, "evaluate", "run/model.onnx",
                                        "--data", data, "--batch-size", "7", "-o", "m.json")
        assert streamed.code == whole.code == 0, (streamed.err, whole.err)
        assert streamed.out == whole.out and "accuracy" in streamed.out
    assert "the test split of csv:t.csv" in streamed.out
    text = (tmp_path / "t.csv").read_text()
    at = text.rindex(",hi\n")  # an unknown class in a late batch
    (tmp_path / "u.csv").write_text(text[:at] + ",top\n" + text[at + 4:])
    streamed, whole = same_as_whole(cli, monkeypatch, batches, "evaluate", "run/model.onnx",
                                    "--data", "u.csv")
    assert streamed.code == whole.code == 1 and streamed.err == whole.err, streamed.err
    line = text[:at].count("\n") + 1
    assert f"u.csv:{line}: column 'y': 'top' is not one of" in streamed.err, streamed.err
