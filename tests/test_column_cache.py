"""Issue 17, a table with column kinds through the data cache (dlc.data.encode_columns): numbers,
category codes and text bytes streamed once into memory-mapped files; training from them gives
the same bits as the table read into memory, resumes bit for bit, and a bad cell is named by its
CSV line (not its row), as when the table is read whole."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import straight_and_resumed
from test_columns import COLUMNS, spec_file, write_table
from test_data_cache import cv_cached_and_in_memory, same_weights
from test_text_columns import spec_file as text_spec_file
from test_text_columns import write_table as write_text_table

from dlc.data import cache, load_dataset, stats, strings, tokens
from dlc.data.columns import MARKERS
from dlc.data.encode_columns import Texts
from dlc.data.strings import Coded


@pytest.fixture
def small_blocks(monkeypatch):
    """Several CSV blocks (and so several batches, codes spread over them) on a small table."""
    monkeypatch.setattr(cache, "BLOCK", 1024)
    monkeypatch.setattr(stats, "CHUNK", 100)


def with_cache(path, setting):
    spec = yaml.safe_load(path.read_text())
    spec["data"]["cache"] = setting
    out = path.with_name(f"spec-{setting}.yaml")
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


AUTO = {**COLUMNS, "shape": "auto", "color": {"kind": "auto", "min_frequency": 5}}


def test_column_cache_trains_the_same_bits_as_memory(cli, tmp_path, small_blocks):
    write_table(tmp_path / "t.csv")
    spec, _ = spec_file(tmp_path, columns=AUTO)
    runs = {}
    for setting in (True, False, True):
        runs[setting] = tmp_path / f"run-{setting}"
        r = cli("train", with_cache(spec, setting), "--out", runs[setting], "-q", "--force")
        assert r.code == 0, r
        assert ("data cache" in r.err) == setting, r.err
    assert "data cache reusing t.csv (" in r.err
    assert same_weights(runs[True], runs[False])
    assert (runs[True] / "metrics.csv").read_text() == (runs[False] / "metrics.csv").read_text()
    stored = [yaml.safe_load((runs[s] / "spec.yaml").read_text()) for s in (True, False)]
    assert stored[0]["input"] == stored[1]["input"]  # kinds, widths: resolved alike


def test_cached_splits_are_the_arrays_in_memory_for_every_kind(tmp_path, monkeypatch,
                                                               small_blocks):
    """Numeric, categorical (one-hot, rare values), binary, drop, and text with missing cells
    (an `inputs:` table through data.cache: auto): the cached columns are memory-mapped codes
    and bytes, and every split gathers the very arrays and fitted states of the in-memory
    reader."""
    monkeypatch.setattr(cache, "AUTO_BYTES", 0)
    for write, make, kinds in ((write_table, lambda p: spec_file(p, columns=AUTO)[1], Coded),
                               (write_text_table, lambda p: text_spec_file(p)[1], Texts)):
        write(tmp_path / "t.csv")
        spec = make(tmp_path)
        mapped, memory = copy.deepcopy(spec), copy.deepcopy(spec)
        memory["data"]["cache"] = False
        a, b = load_dataset(mapped, tmp_path), load_dataset(memory, tmp_path)
        assert a.columns == b.columns and a.labels == b.labels
        assert mapped == {**memory, "data": spec["data"]}  # kinds, widths resolved alike
        for split in ("train", "val", "test"):
            x, y = inputs(getattr(a, split)), inputs(getattr(b, split))
            assert np.array_equal(getattr(a, split).y, getattr(b, split).y)
            for name in x:
                idx = np.array([3, 0, 3])
                assert np.array_equal(np.asarray(x[name]), np.asarray(y[name]))
                assert np.array_equal(x[name][idx], y[name][idx])
        held = [v for e in inputs(a.train).values() for v in e.raw.values()]
        assert any(isinstance(v, kinds) for v in held) and any(
            isinstance(v, np.memmap) for v in held), held


def inputs(split) -> dict:
    """A split's inputs by name (one `input:`, or `inputs:` as Columns)."""
    return dict(split.x) if isinstance(split.x, dict) else {"input": split.x}


def test_resume_from_the_column_cache_is_bit_exact(cli, tmp_path, monkeypatch, small_blocks):
    write_table(tmp_path / "t.csv")
    spec, _ = spec_file(tmp_path, epochs=3)
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path,
                                            with_cache(spec, True), ["-q"], 2)
    assert same_weights(straight, broken)


@pytest.mark.parametrize("setting", [True, False])
@pytest.mark.parametrize("at,cell,message", [
    (0, "abc", "column 'size': 'abc' is not a number"),
    (3, "1e39", "column 'weight': '1e39' is beyond float32's range")])
def test_a_bad_cell_is_named_by_its_csv_line(cli, tmp_path, monkeypatch, small_blocks, setting,
                                            at, cell, message):
    """Through the cache as read whole: `file:line`, the line counting a quoted cell that
    spans lines and a blank line (Arrow's streaming reader knows neither lines nor rows)."""
    batches, encode = [], cache.ColumnEncoder.encode
    monkeypatch.setattr(cache.ColumnEncoder, "encode",
                        lambda self, *a: batches.append(a[1]) or encode(self, *a))
    write_table(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    cells = lines[120].split(",")
    cells[at] = cell
    lines[120] = ",".join(cells)
    lines[30] = lines[30].replace(lines[30].split(",")[1], '"two\nlines"', 1)
    lines.insert(60, "")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    spec, _ = spec_file(tmp_path)
    r = cli("train", with_cache(spec, setting), "--out", tmp_path / "run", "-q")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert f"t.csv:123: {message}" in r.err, r.err  # line 121 + the quoted line + the blank
    assert bool(batches) == setting  # the cache's streamed batches, or the table read whole


def test_a_text_vocabulary_is_counted_chunk_by_chunk(monkeypatch):
    """TextSpec.build counts CHUNK texts at a time (a big split's token lists never whole):
    the vocabulary of small chunks is the vocabulary of one."""
    texts = [f"w{i % 7} w{i % 5} and w{i % 3}, W{i % 11}!" for i in range(300)]
    spec = tokens.TextSpec("note", "word", 8, True, vocab_size=12, min_freq=2)
    whole = spec.build(texts).vocab
    monkeypatch.setattr(tokens, "CHUNK", 7)
    assert spec.build(iter(texts)).vocab == whole and len(whole) == 12


def test_quoted_cells_spanning_lines_stream_across_blocks(tmp_path, small_blocks):
    """Every category is a quoted cell of two lines: the cache's streaming reader, cut into
    1 KiB blocks, reads them as the table read whole does (Arrow's chunker needs
    newlines_in_values for that, else 'out of sync with chunker')."""
    write_table(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    for i in range(1, len(lines)):
        lines[i] = lines[i].replace(",red,", ',"red\nish",').replace(",blue,", ',"blue\nish",')
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    _, spec = spec_file(tmp_path, columns={**COLUMNS, "color": "categorical"})
    mapped, memory = copy.deepcopy(spec), copy.deepcopy(spec)
    mapped["data"]["cache"], memory["data"]["cache"] = True, False
    a, b = load_dataset(mapped, tmp_path), load_dataset(memory, tmp_path)
    color = next(c for c in a.columns["input"]["columns"] if c["name"] == "color")
    assert "red\nish" in color["values"] and a.columns == b.columns
    assert np.array_equal(np.asarray(a.train.x), np.asarray(b.train.x))


def test_cv_folds_from_the_column_cache_equal_memory(cli, tmp_path):
    """dlc cv reads a column table through the cache and refits every encoder per fold from
    the memory-mapped columns: the same figures as the table read into memory."""
    write_table(tmp_path / "t.csv")
    spec, _ = spec_file(tmp_path, columns=AUTO, epochs=2)
    results = cv_cached_and_in_memory(cli, tmp_path, lambda s: with_cache(spec, s))
    assert results[True] == results[False]


def test_coded_categories_are_counted_as_their_cells():
    """A Coded column's training rows are counted by code: the answer of the same cells read
    into memory (distinct present values, sorted, with their counts), markers and values the
    rows never hold left out."""
    values = ["b", "NA", "a", "", "zz", "c"]
    codes = np.array([0, 1, 2, 0, 3, 2, 0, 1, 5], np.int32)
    column, rows = strings.Coded(codes, values), np.array([0, 1, 2, 3, 5, 6, 7])
    got = strings.counts(column.take(rows), MARKERS)
    want = strings.counts(column[rows], MARKERS)
    assert got[0] == want[0] == ["a", "b"] and got[1].tolist() == want[1].tolist() == [2, 3]


def test_parquet_through_the_column_cache_equals_the_csv_in_memory(tmp_path, small_blocks):
    """The cache streams a Parquet file by row groups through the same encoder; a missing cell
    stored as null reads as the CSV's marker does."""
    write_table(tmp_path / "t.csv")
    table = pacsv.read_csv(tmp_path / "t.csv", convert_options=pacsv.ConvertOptions(
        null_values=MARKERS, strings_can_be_null=True, column_types={"size": "float64"}))
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=40)
    _, spec = spec_file(tmp_path, columns=AUTO)
    mapped, memory = copy.deepcopy(spec), copy.deepcopy(spec)
    mapped["data"].update(cache=True, source="parquet:t.parquet")
    memory["data"]["cache"] = False
    a, b = load_dataset(mapped, tmp_path), load_dataset(memory, tmp_path)
    assert a.columns == b.columns and a.labels == b.labels
    assert isinstance(a.train.x.raw["color"], Coded)
    assert np.array_equal(np.asarray(a.train.x), np.asarray(b.train.x))
    assert np.array_equal(a.test.y, b.test.y)


def test_a_ragged_row_is_named_by_its_line_through_the_cache(cli, tmp_path, small_blocks):
    write_table(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    lines[100] = lines[100].rsplit(",", 1)[0]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    spec, _ = spec_file(tmp_path)
    r = cli("train", with_cache(spec, True), "--out", tmp_path / "run", "-q")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert "t.csv:101: expected 5 columns, found 4" in r.err, r.err


def test_inputs_with_columns_take_data_cache_and_missing(cli, tmp_path, small_blocks):
    """`inputs:` entries with columns (a table and a text input) take data.cache: true and a
    data.missing default, as a single `input:` with columns does (both were refused as "one
    `input:` only"): validate passes, training goes through the cache and gives the bits of
    the table read into memory."""
    write_text_table(tmp_path / "t.csv")
    path, _ = text_spec_file(tmp_path, epochs=2)
    spec = yaml.safe_load(path.read_text())
    spec["data"]["missing"] = {"strategy": "median"}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = {}
    for setting in (True, False):
        chosen = with_cache(path, setting)
        assert cli("validate", chosen).code == 0
        runs[setting] = tmp_path / f"run-{setting}"
        r = cli("train", chosen, "--out", runs[setting], "-q", "--force")
        assert r.code == 0, r
        assert ("data cache" in r.err) == setting, r.err
    assert same_weights(runs[True], runs[False])
