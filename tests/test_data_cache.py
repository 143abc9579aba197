"""Issue 17, data bigger than memory (data.cache): a table streamed once into a memory-mapped
cache trains to the same bits as the same table read into memory, resumes bit for bit, is
rebuilt when the file or the spec's column settings change, and an interrupted build leaves no
half cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import SPECS, straight_and_resumed
from onnx import numpy_helper

from dlc.data import cache, load_dataset, stats

N = 900


def write_table(path, n=N, seed=0, target="class"):
    """Four numeric features with some NA cells, a string class (or a numeric value)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).round(4)
    y = np.where(x[:, 0] + x[:, 1] > 0, "up", "down") if target == "class" else \
        (x[:, 0] * 2 + x[:, 3]).round(4)
    lines = ["a,b,c,d,y"]
    for i, (row, t) in enumerate(zip(x, y)):
        cells = [f"{v:g}" for v in row]
        if i % 11 == 5:
            cells[2] = "NA"
        lines.append(",".join([*cells, str(t)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def spec_file(tmp_path, cache_setting, missing="mean", kind="classification", **data):
    out = {"classification": 2, "regression": 1}[kind]
    spec = {"dlc": 1, "name": "c", "input": {"shape": [4]},
            "layers": [{"type": "dense", "name": "h", "units": 8, "activation": "relu"},
                       {"type": "dense", "name": "out", "units": out}],
            "task": {"kind": kind, "metrics": ["accuracy" if out == 2 else "mae"]},
            "data": {"source": "csv:t.csv", "target": "y", "cache": cache_setting,
                     "missing": {"strategy": missing},
                     "split": {"val": 0.2, "test": 0.2, "seed": 0}, **data},
            "train": {"epochs": 3, "batch_size": 32, "optimizer": {"type": "adam", "lr": 0.01},
                      "seed": 0}}
    path = tmp_path / f"spec-{cache_setting}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def weights(run):
    return {t.name: numpy_helper.to_array(t)
            for t in onnx.load(run / "model.onnx").graph.initializer}


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def small_chunks(monkeypatch):
    """Several statistics chunks and CSV blocks even on a small table."""
    monkeypatch.setattr(stats, "CHUNK", 100)
    monkeypatch.setattr(cache, "BLOCK", 4096)


@pytest.mark.parametrize("missing,kind", [("mean", "classification"),
                                          ("median", "classification"),
                                          ("drop", "regression")])
def test_cache_trains_the_same_bits_as_memory(cli, tmp_path, small_chunks, missing, kind):
    write_table(tmp_path / "t.csv", target="class" if kind == "classification" else "value")
    runs = {}
    for setting in (True, False, True):
        spec = spec_file(tmp_path, setting, missing, kind)
        runs[setting] = tmp_path / f"run-{setting}"
        r = cli("train", spec, "--out", runs[setting], "-q", "--force")
        assert r.code == 0, r
        if setting:  # one line on stderr: built the first time, then reused
            assert ("data cache built" in r.err) != ("data cache reusing" in r.err), r.err
    assert "data cache reusing t.csv (" in r.err
    assert same_weights(runs[True], runs[False])
    assert (runs[True] / "metrics.csv").read_text() == (runs[False] / "metrics.csv").read_text()


def test_split_views_equal_the_arrays_in_memory(tmp_path, small_chunks):
    write_table(tmp_path / "t.csv")
    mapped = load_dataset(yaml.safe_load(spec_file(tmp_path, True).read_text()), tmp_path)
    memory = load_dataset(yaml.safe_load(spec_file(tmp_path, False).read_text()), tmp_path)
    assert isinstance(mapped.train.x, stats.Rows) and isinstance(mapped.train.x.raw, np.memmap)
    assert mapped.norm == memory.norm and mapped.labels == memory.labels == ["down", "up"]
    for a, b in ((mapped.train, memory.train), (mapped.test, memory.test)):
        assert np.array_equal(np.asarray(a.x), b.x) and np.array_equal(a.y, b.y)
        assert a.y.dtype == np.uint8 and a.x.index.dtype == np.int32  # 1 + 4 bytes a row, not 16
        idx = np.array([5, 0, 3, 3])
        assert np.array_equal(a.x[idx], b.x[idx]) and np.array_equal(a.x[2:9], b.x[2:9])


def test_resume_from_the_cache_is_bit_exact(cli, tmp_path, monkeypatch, small_chunks):
    write_table(tmp_path / "t.csv")
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path,
                                            spec_file(tmp_path, True), ["-q"], 2)
    assert same_weights(straight, broken)


def test_a_stale_cache_is_rebuilt(cli, tmp_path, small_chunks):
    table = write_table(tmp_path / "t.csv")
    spec = spec_file(tmp_path, True)

    def train():
        r = cli("train", spec, "--out", tmp_path / "run", "-q", "--force")
        assert r.code == 0, r
        return r.err

    assert "data cache built" in train()
    assert "data cache reusing" in train()
    text = table.read_text()  # one value changed, the file's size kept
    table.write_text(text.replace("\n0.1", "\n0.2", 1))
    assert table.read_text() != text and len(table.read_text()) == len(text)
    assert "data cache built" in train()
    spec.write_text(spec.read_text().replace("strategy: mean", "strategy: drop"))
    assert "data cache built" in train()  # rows dropped: other arrays
    spec.write_text(spec.read_text().replace("test: 0.2", "test: 0.3"))
    assert "data cache reusing" in train()  # splits and statistics are per run, not cached


def test_a_damaged_cache_is_rebuilt(cli, tmp_path, small_chunks):
    write_table(tmp_path / "t.csv")
    spec = spec_file(tmp_path, True)
    r = cli("train", spec, "--out", tmp_path / "a", "-q")
    assert r.code == 0, r
    raw = Path(r.err.split(" in ")[-1].strip()) / "x.raw"  # "data cache built ... in FOLDER"
    raw.write_bytes(raw.read_bytes()[:-4])  # truncated
    r = cli("train", spec, "--out", tmp_path / "b", "-q")
    assert r.code == 0 and "data cache built" in r.err, r
    assert same_weights(tmp_path / "a", tmp_path / "b")


def test_an_interrupted_build_leaves_no_cache(cli, tmp_path, monkeypatch, small_chunks):
    write_table(tmp_path / "t.csv")
    spec = spec_file(tmp_path, True)
    encode, calls = cache.TableEncoder.encode, []

    def interrupted(self, batch, first_row):
        calls.append(first_row)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(self, batch, first_row)

    monkeypatch.setattr(cache.TableEncoder, "encode", interrupted)
    assert cli("train", spec, "--out", tmp_path / "run", "-q").code == 130
    root = cache.cachedir.folder("tables")
    assert [p for p in root.iterdir() if "t.csv" in p.name or p.name.startswith(".")] == []
    monkeypatch.setattr(cache.TableEncoder, "encode", encode)
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--force")
    assert r.code == 0 and "data cache built" in r.err, r


def test_a_header_row_wider_than_the_first_read(cli, tmp_path, monkeypatch, small_chunks):
    """The column names come from a small first block (no read-ahead); a wider header row is
    read again with a whole block."""
    write_table(tmp_path / "t.csv")
    monkeypatch.setattr(cache, "HEAD", 8)
    assert cache.column_names(tmp_path / "t.csv", "csv", True) == ["a", "b", "c", "d", "y"]
    r = cli("train", spec_file(tmp_path, True), "--out", tmp_path / "run", "-q")
    assert r.code == 0 and "data cache built" in r.err, r


def test_evaluate_reads_a_big_table_through_the_cache(cli, tmp_path, monkeypatch, small_chunks):
    """dlc evaluate --data memory-maps a table that data.cache sends to the cache and scores it
    as the same table read into memory; a class the model never learnt is one line (exit 1)."""
    table = write_table(tmp_path / "t.csv")
    monkeypatch.chdir(tmp_path)  # --data csv:t.csv: the model's own source, split as in training
    scores = {}
    for setting in (True, False):
        run = tmp_path / f"run-{setting}"
        assert cli("train", spec_file(tmp_path, setting), "--out", run, "-q").code == 0
        for split in ("test", "all"):
            out = tmp_path / f"{setting}-{split}.json"
            r = cli("evaluate", run / "model.onnx", "--data", "csv:t.csv", "--split", split,
                    "-o", out)
            assert r.code == 0 and ("data cache" in r.err) == setting, r
            scores[setting, split] = json.loads(out.read_text())
    for split in ("test", "all"):
        assert scores[True, split] == scores[False, split]
    table.write_text(table.read_text() + "0.1,0.2,0.3,0.4,sideways\n")
    r = cli("evaluate", tmp_path / "run-True" / "model.onnx", "--data", "csv:t.csv")
    assert r.code == 1 and "sideways" in r.err and len(r.err.strip().splitlines()) == 1, r


def cv_cached_and_in_memory(cli, tmp_path, spec_for) -> dict:
    """{data.cache setting: dlc cv's figures (3 folds)} of the spec spec_for(setting) writes,
    through the cache (True; its note on stderr) and read into memory (False)."""
    results = {}
    for setting in (True, False):
        out = tmp_path / f"cv-{setting}.json"
        r = cli("cv", spec_for(setting), "--folds", "3", "-o", out)
        assert r.code == 0 and ("data cache" in r.err) == setting, r
        results[setting] = {k: v for k, v in json.loads(out.read_text()).items() if k != "spec"}
    return results


def test_cv_reads_a_big_table_through_the_cache(cli, tmp_path):
    """dlc cv on a table that data.cache sends to the cache memory-maps it and gives the folds'
    figures of the same table read into memory (one statistics chunk: numpy's own figures)."""
    write_table(tmp_path / "t.csv")
    results = cv_cached_and_in_memory(cli, tmp_path, lambda s: spec_file(tmp_path, s))
    assert results[True] == results[False]


def test_parquet_through_the_cache_equals_csv(cli, tmp_path, small_chunks):
    write_table(tmp_path / "t.csv")
    pq.write_table(pa.csv.read_csv(tmp_path / "t.csv", convert_options=pa.csv.ConvertOptions(
        null_values=["NA"])), tmp_path / "t.parquet", row_group_size=128)
    spec = yaml.safe_load(spec_file(tmp_path, True).read_text())
    from_csv = load_dataset(spec, tmp_path)
    spec["data"]["source"] = "parquet:t.parquet"
    from_parquet = load_dataset(spec, tmp_path)
    assert from_csv.norm == from_parquet.norm
    assert np.array_equal(np.asarray(from_csv.train.x), np.asarray(from_parquet.train.x))


@pytest.mark.parametrize("cell,message", [("abc", "'abc' is not a number"),
                                          ("1e39", "'1e39' is beyond float32's range")])
def test_a_bad_cell_is_one_line_naming_its_csv_line(cli, tmp_path, small_chunks, cell, message):
    """Arrow's streaming reader names neither the line nor the row of a cell it cannot convert:
    the cache finds it again (the stdlib csv pass, the file read as text), as when the table
    is read whole; a quoted cell spanning two lines and a blank line shift the line."""
    table = write_table(tmp_path / "t.csv")
    lines = table.read_text().splitlines()
    lines[700] = cell + lines[700][lines[700].index(","):]
    lines[5] = lines[5].replace(",up", ',"up\n"').replace(",down", ',"down\n"')
    lines.insert(9, "")
    table.write_text("\n".join(lines) + "\n")
    for setting in (True, False):
        r = cli("train", spec_file(tmp_path, setting), "--out", tmp_path / "run", "-q")
        assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r
        assert f"t.csv:703: column 'a': {message}" in r.err, r.err


def test_cache_true_on_a_source_it_cannot_hold(cli, tmp_path):
    spec = spec_file(tmp_path, True)
    data = yaml.safe_load(spec.read_text())
    data["data"] = {"source": "builtin:iris", "cache": True}
    spec.write_text(yaml.safe_dump(data))
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 2 and "data.cache: caches the numeric table columns of one" in r.err, r


def test_predict_streams_its_csv(cli, tmp_path, monkeypatch):
    """`dlc predict` turns CSV_ROWS rows into text at a time (stdout and -o alike), never the
    whole table; the text is what one csv.writer pass over every row writes."""
    import csv
    import io

    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec
    from dlc.runtime import infer, predictions

    model = tmp_path / "iris.onnx"
    labels = "task.labels=['=x', 'b,c', 'd']"  # escaped and quoted cells
    model.write_bytes(compile_spec(load_spec(SPECS / "iris.yaml", [labels])).SerializeToString())
    data = tmp_path / "in.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(25, 4)).astype(np.float32))
    m = infer.load_model(str(model))
    out = infer.predict(m, str(data))
    monkeypatch.setattr(predictions, "CSV_ROWS", 10)
    chunks = list(infer.write_predictions(m, out, None))
    assert len(chunks) == 3  # 10 + 10 + 5 rows (the header with the first)
    cols = predictions._columns(m, out)
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow([predictions._cell(c) for c in cols])
    writer.writerows([predictions._cell(v) for v in row]
                     for row in zip(*(c.tolist() for c in cols.values())))
    assert "".join(chunks) == expected.getvalue()
    r = cli("predict", model, data)
    assert r.code == 0 and r.out == expected.getvalue(), r
    assert cli("predict", model, data, "-o", tmp_path / "p.csv").code == 0
    assert (tmp_path / "p.csv").read_text() == expected.getvalue()
