"""Issue 17, reading: CSV, Parquet and Feather tables through pyarrow (dlc/data/_table.py), with
the `file:line` of a bad cell kept (Arrow itself knows no line numbers)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import yaml

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def iris(tmp_path):
    """scikit-learn's iris (dlc's bundled copy) as a CSV with a string target column."""
    from dlc.data._sources import BUILTIN_DIR

    with np.load(BUILTIN_DIR / "iris.npz") as z:
        x, y, names = z["x"], z["y"], [str(n) for n in z["labels"]]
    rows = [",".join([*(f"{v:g}" for v in r), names[int(t)]]) for r, t in zip(x, y)]
    path = tmp_path / "iris.csv"
    path.write_text("\n".join([",".join([*FEATURES, "species"]), *rows]) + "\n")
    return path


def spec_for(tmp_path, source: str, **data) -> str:
    """A small iris classifier reading `source`."""
    spec = {"dlc": 1, "name": "t", "input": {"shape": [4]},
            "layers": [{"type": "dense", "name": "out", "units": 3}],
            "task": {"kind": "classification", "loss": "cross_entropy", "metrics": ["accuracy"]},
            "data": {"source": source, "target": "species", "split": {"val": 0.2, "seed": 0},
                     **data},
            "train": {"epochs": 1, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.01},
                      "seed": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def iris_table(path) -> pa.Table:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path)


def raw(source: str, tmp_path):
    from dlc.data._sources import load_raw

    spec = yaml.safe_load(open(spec_for(tmp_path, source)))
    return load_raw(source, spec, tmp_path, None, False, True, "test")


@pytest.mark.parametrize("scheme,write", [("parquet", pq.write_table),
                                          ("feather", feather.write_feather)])
def test_parquet_and_feather_read_like_the_csv(tmp_path, iris, scheme, write):
    write(iris_table(iris), tmp_path / f"iris.{scheme}")
    x, y, labels, features = raw(f"{scheme}:iris.{scheme}", tmp_path)
    cx, cy, clabels, cfeatures = raw(f"csv:{iris}", tmp_path)
    np.testing.assert_array_equal(x, cx)
    np.testing.assert_array_equal(y, cy)
    assert (labels, features) == (clabels, cfeatures)


def test_train_from_parquet_through_the_cli(cli, tmp_path, iris):
    pq.write_table(iris_table(iris), tmp_path / "iris.parquet")
    r = cli("train", spec_for(tmp_path, "parquet:iris.parquet"), "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert (tmp_path / "run" / "model.onnx").is_file()


def test_parquet_null_cell_is_named_by_row(cli, tmp_path, iris):
    table = iris_table(iris)
    col = table.column("sepal_width").to_pylist()
    col[4] = None
    table = table.set_column(1, "sepal_width", pa.array(col, pa.float64()))
    pq.write_table(table, tmp_path / "iris.parquet")
    r = cli("train", spec_for(tmp_path, "parquet:iris.parquet"), "--out", tmp_path / "run")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert "iris.parquet: row 5: column 'sepal_width': empty cell" in r.err, r


def test_bad_cell_line_counts_blank_lines_and_quoted_newlines(cli, tmp_path, iris):
    """Arrow numbers rows, not lines: the line comes from a stdlib csv pass over the file."""
    lines = iris.read_text().splitlines()
    body = [lines[0] + ",note", lines[1] + ',"two\nlines"', "", lines[2] + ",x",
            lines[3].replace(lines[3].split(",")[2], "1.5O", 1) + ",y"]
    (tmp_path / "d.csv").write_text("\n".join(body) + "\n")
    r = cli("train", spec_for(tmp_path, "csv:d.csv", features=FEATURES),
            "--out", tmp_path / "run")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert "d.csv:6: column 'petal_length': '1.5O' is not a number" in r.err, r


def test_ragged_row_and_empty_file_keep_their_messages(cli, tmp_path, iris):
    lines = iris.read_text().splitlines()
    (tmp_path / "d.csv").write_text("\n".join([*lines[:3], "5.0,3.0,1.0", *lines[3:6]]) + "\n")
    r = cli("train", spec_for(tmp_path, "csv:d.csv"), "--out", tmp_path / "run")
    assert r.code == 1 and "d.csv:4: expected 5 columns, found 3" in r.err, r
    (tmp_path / "d.csv").write_text(lines[0] + "\n")
    r = cli("train", spec_for(tmp_path, "csv:d.csv"), "--out", tmp_path / "run")
    assert r.code == 1 and "d.csv: no data rows" in r.err, r


def test_number_text_is_kept_for_labels(tmp_path):
    """A numeric target column is read again as text: class `1.50` stays `1.50`, not `1.5`."""
    from dlc.data._table import read_table

    (tmp_path / "d.csv").write_text("a,y\n1,1.50\n2,2.25\n3,1.50\n")
    table = read_table(tmp_path / "d.csv", "d.csv", True)
    assert table.strings(1) == ["1.50", "2.25", "1.50"]
    np.testing.assert_array_equal(table.numbers([0, 1]), [[1, 1.5], [2, 2.25], [3, 1.5]])


def test_predict_reads_parquet_like_the_csv(cli, tmp_path, iris):
    """`dlc predict MODEL rows.parquet` answers what the same rows as CSV get."""
    spec = spec_for(tmp_path, f"csv:{iris}")
    assert cli("train", spec, "--out", tmp_path / "run", "-q").code == 0
    pq.write_table(iris_table(iris).drop_columns(["species"]), tmp_path / "rows.parquet")
    model = tmp_path / "run" / "model.onnx"
    a = cli("predict", model, tmp_path / "rows.parquet", "-o", tmp_path / "a.csv")
    b = cli("predict", model, iris, "-o", tmp_path / "b.csv")
    assert a.code == 0 and b.code == 0, (a, b)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 151


def test_bom_and_blank_rows_are_skipped_and_lines_stay_true(tmp_path):
    """A UTF-8 byte-order mark is not part of the first name; a row of blank cells is skipped
    like a blank line, and the line numbers of the rows after it still count it."""
    from dlc.data._table import read_table

    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbfa,b,y\n1,2,x\n , ,  \n3,4,w\n")
    table = read_table(tmp_path / "d.csv", "d.csv", True)
    assert table.columns == ["a", "b", "y"] and len(table) == 2
    assert table.lines == [2, 4] and table.where(1) == "d.csv:4"
    np.testing.assert_array_equal(table.numbers([0, 1]), [[1, 2], [3, 4]])


@pytest.mark.parametrize("cell,hint", [("", "data.missing fills or drops"),
                                       ("NA", "data.missing fills or drops"),
                                       ("fair", "a column of categories goes through a named "
                                                "input with dtype: int64")])
def test_a_text_or_missing_feature_cell_says_what_handles_it(cli, tmp_path, iris, cell, hint):
    lines = iris.read_text().splitlines()
    cells = lines[3].split(",")
    cells[1] = cell
    (tmp_path / "d.csv").write_text("\n".join([*lines[:3], ",".join(cells), *lines[4:]]) + "\n")
    r = cli("train", spec_for(tmp_path, "csv:d.csv"), "--out", tmp_path / "run")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert "d.csv:4: column 'sepal_width'" in r.err and hint in r.err, r
