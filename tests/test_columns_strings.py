"""Issue 17, string columns through pyarrow.compute (dlc.data.strings): the raw cells, counts and
lookups of input.columns equal their per-cell definitions (the Python loops they replaced), fit
and encode give the same state and bits either way, and a column of 2 distinct values holds 2
Python strings, not one per cell."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dlc.data import columns, load_dataset, read_columns, stats, strings
from dlc.data._table import MISSING, read_table
from dlc.errors import DlcError

CELLS = ["Biscoe", " Dream ", "Torgersen", "NA", "", "?", "dream", "Dréam", "n/a", "Biscoe  ",
         "Z", "a b"]


def table_file(tmp_path, n=500, seed=0):
    """A CSV with a numeric column, two string columns with missing markers and padded cells,
    an integer-coded column and a class."""
    rng = np.random.default_rng(seed)
    pick = lambda k: [CELLS[i] for i in rng.integers(0, len(CELLS), n)]  # noqa: E731
    num = np.where(rng.random(n) < 0.1, "NA", rng.normal(size=n).round(3).astype(str))
    lines = ["num,island,sex,code,y"] + [
        f"{a},{b},{c},{d},{e}" for a, b, c, d, e in zip(
            num, pick(n), pick(n), rng.integers(0, 4, n), rng.integers(0, 2, n))]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def per_cell(table, name):
    """The definition: one stripped Python string per cell."""
    return np.array([s.strip() for s in table.strings(table.columns.index(name))], dtype=object)


def test_cells_counts_and_lookups_equal_their_per_cell_definitions(tmp_path):
    table = read_table(table_file(tmp_path), "t.csv", True, "csv")
    for name in ("island", "sex", "code"):
        want = per_cell(table, name)
        got = strings.stripped_cells(table.text(table.columns.index(name)))
        assert got.dtype == object and got.tolist() == want.tolist()
        assert len({id(c) for c in got}) == len(set(want))  # one Python string per value
        uniq, counts = np.unique(want.astype(str), return_counts=True)
        got_values, got_counts = strings.counts(got)
        assert got_values == uniq.tolist() and got_counts.tolist() == counts.tolist()
        assert sorted(strings.distinct(got)) == uniq.tolist()
        assert strings.is_in(got, sorted(MISSING)).tolist() == np.isin(want,
                                                                       sorted(MISSING)).tolist()
        keys, ids = ["Biscoe", "Dream", "NA", "?"], [0, 1, 2, 2]
        table_ = dict(zip(keys, ids))
        assert strings.lookup(got, keys, ids, 7).tolist() == [table_.get(v, 7) for v in want]


def test_a_cell_that_is_no_string_matches_nothing():
    """A number or None among the cells (a JSON row) matches no key and no marker, as in the
    per-cell dict lookup."""
    cells = np.array(["Dream", 3, None, "NA"], dtype=object)
    assert strings.lookup(cells, ["Dream", "3", "NA"], [0, 1, 2], 9).tolist() == [0, 9, 9, 2]
    assert strings.is_in(cells, sorted(MISSING)).tolist() == [False, False, False, True]


def _definitions(monkeypatch):
    """dlc.data.strings replaced by the per-cell loops it replaced."""
    def lookup(cells, keys, ids, default):
        table = dict(zip(keys, ids))
        return np.array([table.get(v, default) for v in cells], np.int64)

    def counts(cells, without=()):
        cells = cells[~np.isin(cells, list(without))]
        uniq, n = np.unique(cells.astype(str), return_counts=True)
        return uniq.tolist(), n

    monkeypatch.setattr(strings, "lookup", lookup)
    monkeypatch.setattr(strings, "counts", counts)
    monkeypatch.setattr(strings, "is_in", lambda cells, markers: np.isin(cells, markers))


@pytest.mark.parametrize("config", [
    {"num": {"kind": "numeric", "indicator": True}, "island": {"kind": "categorical"},
     "sex": {"kind": "categorical", "min_frequency": 40}, "code": {"kind": "categorical"}},
    {"island": {"kind": "categorical", "encoding": "embedding", "missing": "constant",
                "value": "Dream"}, "sex": {"kind": "categorical", "encoding": "embedding"}}],
    ids=["one-hot", "embedding"])
def test_fit_and_encode_equal_the_per_cell_definition(tmp_path, monkeypatch, config):
    table = read_table(table_file(tmp_path), "t.csv", True, "csv")
    kinds = {n: c["kind"] for n, c in config.items()}
    raw = columns.raw_columns(table, list(config), kinds)
    train = np.arange(0, len(table), 2)
    fast = columns.fit(config, {n: v[train] for n, v in raw.items()}, "standard")
    x_fast = columns.encode(fast, raw)
    _definitions(monkeypatch)
    slow_raw = {n: per_cell(table, n) if kinds[n] != "numeric" else v for n, v in raw.items()}
    slow = columns.fit(config, {n: v[train] for n, v in slow_raw.items()}, "standard")
    assert fast == slow
    np.testing.assert_array_equal(x_fast, columns.encode(slow, slow_raw))


def test_a_parquet_column_of_other_types_prints_as_python_does(tmp_path):
    """Parquet floats and booleans read as Python prints them (`1.0`, `True`), nulls as ''."""
    pa.parquet.write_table(pa.table({"f": [1.0, None, 2.5], "b": [True, False, None],
                                     "i": [7, None, -3]}), tmp_path / "t.parquet")
    table = read_table(tmp_path / "t.parquet", "t.parquet", True, "parquet")
    assert [table.strings(i) for i in range(3)] == [["1.0", "", "2.5"], ["True", "False", ""],
                                                    ["7", "", "-3"]]


def test_a_column_table_is_encoded_batch_by_batch(tmp_path):
    """The splits of an input.columns table hold its raw columns and encode a batch when it is
    gathered (a wide one-hot table never sits in memory whole): the same bits as the whole table
    encoded at once."""
    table_file(tmp_path, n=300)
    spec = {"dlc": 1, "name": "c", "layers": [{"type": "dense", "name": "out", "units": 2}],
            "input": {"columns": {"num": "numeric", "island": "categorical",
                                  "sex": "categorical", "code": "categorical"}},
            "task": {"kind": "classification"},
            "data": {"source": "csv:t.csv", "target": "y",
                     "split": {"val": 0.2, "test": 0.2, "seed": 0}}}
    ds = load_dataset(spec, tmp_path)
    raw, _, _, _ = read_columns("csv:t.csv", spec, tmp_path)
    whole = columns.encode(ds.columns["input"], raw)
    for part in (ds.train, ds.val, ds.test):
        assert isinstance(part.x, stats.Encoded) and part.x.shape == (len(part.y), whole.shape[1])
        np.testing.assert_array_equal(np.asarray(part.x), whole[part.x.index])
        idx = np.array([5, 0, 3, 3])
        np.testing.assert_array_equal(part.x[idx], whole[part.x.index[idx]])
        np.testing.assert_array_equal(part.x[2:9], whole[part.x.index[2:9]])


def test_target_errors_name_the_first_row_of_the_bad_value(tmp_path):
    """The target's rules run once per distinct cell; an error still names the line where the
    offending value first appears."""
    rows = ["a,y", "red,up", "blue,down", "NA,up", "red,sideways", "blue,up", "red,sideways"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    spec = {"dlc": 1, "name": "c", "layers": [{"type": "dense", "name": "out", "units": 2}],
            "input": {"columns": {"a": "categorical"}},
            "task": {"kind": "classification", "labels": ["down", "up"]},
            "data": {"source": "csv:t.csv", "target": "y"}}
    with pytest.raises(DlcError, match=r"t.csv:5: column 'y': task.labels does not match .*'sideways'"):
        read_columns("csv:t.csv", spec, tmp_path)
    raw, y, labels, _ = read_columns("csv:t.csv", {**spec, "task": {"kind": "classification"}},
                                     tmp_path)
    assert labels == ["down", "sideways", "up"] and y.tolist() == [2, 0, 2, 1, 2, 1]
    assert raw["a"].tolist() == ["red", "blue", "NA", "red", "blue", "red"]
