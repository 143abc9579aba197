"""Issue 15, data side: float32 overflow (8), resource claims (13), prediction CSVs a spreadsheet
would execute (20), paths that are not regular files (21), ids beyond an embedding's vocabulary
(23). Each through the real CLI: exit 1 (2 for specs) and one line naming what is wrong."""

from __future__ import annotations

import csv
import json
import io
import os
import zipfile

import numpy as np
import pytest

from conftest import SPECS

SAMPLE = SPECS / "data" / "iris_sample.csv"
HEADER = "sepal_length,sepal_width,petal_length,petal_width"


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """A compiled iris model (seeded weights: enough to predict) with hostile class names."""
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    path = tmp_path_factory.mktemp("hostile") / "iris.onnx"
    labels = "task.labels=['=HYPERLINK(\"http://x\")', '+cmd', '@SUM(1)']"
    path.write_bytes(compile_spec(load_spec(SPECS / "iris.yaml", [labels])).SerializeToString())
    return path


def one_line(r, code: int, *parts: str) -> None:
    assert r.code == code and r.err.count("\n") == 1, r
    for part in parts:
        assert part in r.err, r


# ---- 8: a value beyond float32 is not finite ------------------------------------------------
def test_csv_cell_beyond_float32_is_named(cli, tmp_path, iris):
    data = tmp_path / "in.csv"
    data.write_text(f"{HEADER}\n5.1,3.5,1.4,0.2\n4.8,1e39,1.6,0.2\n")
    one_line(cli("predict", iris, data), 1, "in.csv:3", "sepal_width", "1e39", "float32")


def test_npz_value_beyond_float32_is_refused(cli, tmp_path, iris):
    data = tmp_path / "in.npz"
    np.savez(data, x=np.array([[5.1, 3.5, 1.4, 0.2], [4.8, -1e39, 1.6, 0.2]]))
    one_line(cli("predict", iris, data), 1, "in.npz", "float32", "sample 1")


def test_training_target_beyond_float32_is_named(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n" + "1,2,3\n" * 9 + "1,2,-2e39\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: t\ninput: {shape: [2]}\nlayers: [{type: dense, units: 1}]\n"
                    "task: {kind: regression}\ndata: {source: csv:d.csv, target: y}\n")
    one_line(cli("train", spec, "--out", tmp_path / "run", "-q"), 1, "d.csv:11", "'y'",
             "float32")


# ---- 13: sizes claimed by a file are bounded before allocating ------------------------------
def _npy_claiming(shape: tuple) -> bytes:
    """An .npy stream whose header claims `shape` (float32) but holds 16 bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + bytes(16)


def test_npz_header_claiming_2_to_the_40_is_refused(cli, tmp_path, iris):
    data = tmp_path / "huge.npz"
    with zipfile.ZipFile(data, "w") as z:
        z.writestr("x.npy", _npy_claiming((2**38, 4)))
    one_line(cli("predict", iris, data), 1, "huge.npz", "MAX_ARRAY_BYTES")


def test_class_cell_claiming_10_to_the_20_classes(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n" + "1,2,0\n1,2,1\n" * 5 + "1,2,99999999999999999999\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: t\ninput: {shape: [2]}\nlayers: [{type: dense, units: 3}]\n"
                    "task: {kind: classification}\ndata: {source: csv:d.csv, target: y}\n")
    one_line(cli("train", spec, "--out", tmp_path / "run", "-q"), 1, "d.csv:12", "MAX_CLASSES")


def test_spec_file_over_the_limit(cli, tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(17 * 2**20)  # sparse: no disk used
    one_line(cli("validate", big), 1, "big.yaml", "16 MiB")


def test_validate_dev_zero_says_what_it_is(cli):
    one_line(cli("validate", "/dev/zero"), 1, "/dev/zero", "character device")


def test_text_predictions_are_bounded(cli, tmp_path, iris, monkeypatch):
    """A small compressed input must not ask for gigabytes of CSV text; npz output has no such
    bound (the limit is lowered here so the test stays small)."""
    from dlc.runtime import predictions

    monkeypatch.setattr(predictions, "MAX_TEXT_ROWS", 10)
    data = tmp_path / "many.npz"
    np.savez_compressed(data, x=np.ones((11, 4), np.float32))
    one_line(cli("predict", iris, data, "-o", tmp_path / "p.csv"), 1, "MAX_TEXT_ROWS", ".npz")
    assert not (tmp_path / "p.csv").exists()
    r = cli("predict", iris, data, "-o", tmp_path / "p.npz")
    assert r.code == 0, r
    with np.load(tmp_path / "p.npz") as z:
        assert len(z["class_index"]) == 11


# ---- 20: formula cells are neutralised ------------------------------------------------------
def test_prediction_csv_cells_are_not_formulas(cli, iris):
    r = cli("predict", iris, SAMPLE)
    assert r.code == 0, r
    rows = list(csv.reader(io.StringIO(r.out)))
    labels = [row[1] for row in rows[1:]]  # every class name here starts a formula
    assert labels and all(c[:2] in ("'=", "'+", "'@") for c in labels), labels
    assert not [c for c in rows[0] + labels if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert [float(v) for v in rows[1][2:]], rows[1]  # numbers stay numbers


# ---- 21: name what a path really is ---------------------------------------------------------
def test_fifo_input_is_named_a_fifo(cli, tmp_path, iris):
    os.mkfifo(tmp_path / "in.csv")
    one_line(cli("predict", iris, tmp_path / "in.csv"), 1, "FIFO")


def test_folder_as_csv_source_is_named_a_folder(cli, tmp_path):
    (tmp_path / "d.csv").mkdir()
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: t\ninput: {shape: [2]}\nlayers: [{type: dense, units: 1}]\n"
                    "task: {kind: regression}\ndata: {source: csv:d.csv}\n")
    one_line(cli("train", spec, "--out", tmp_path / "run", "-q"), 1, "is a folder")


def test_text_file_as_npz_is_not_called_pickled(cli, tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: t\ninput: {shape: [2]}\nlayers: [{type: dense, units: 1}]\n"
                    "task: {kind: regression}\ndata: {source: npz:passwd}\n")
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    one_line(r, 1, "not an .npz or .npy file")
    assert "pickle" not in r.err


# ---- 23: ids beyond the embedding's vocabulary ----------------------------------------------
def test_category_beyond_vocab_size_names_column_and_value(cli, tmp_path):
    r = cli("train", SPECS / "penguins_wide_deep.yaml", "--out", tmp_path / "run", "-q",
            "--set", "layers.1.vocab_size=5")
    one_line(r, 1, "penguins.csv:", "column 'island'", "vocab_size 5", "embed")


def test_token_id_beyond_vocab_size_in_npz(cli, tmp_path):
    np.savez(tmp_path / "ids.npz", x=np.array([[1, 2], [3, 9]] * 5), y=np.array([0, 1] * 5))
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: t\ninput: {shape: [2], dtype: int64}\nlayers:\n"
                    "  - {type: embedding, name: emb, vocab_size: 8, dim: 2}\n"
                    "  - {type: flatten}\n  - {type: dense, units: 2}\n"
                    "task: {kind: classification}\ndata: {source: npz:ids.npz}\n")
    one_line(cli("train", spec, "--out", tmp_path / "run", "-q", "--epochs", "1"), 1,
             "ids.npz: sample 1", "id 9", "vocab_size 8")


def test_explain_steps_are_bounded(cli, iris):
    r = cli("explain", iris, SAMPLE, "--method", "integrated_gradients", "--steps", "100000000")
    one_line(r, 2, "--steps", "MAX_STEPS")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """transformer_reverse compiled: int64 token ids in, a class per token out (vocab 10)."""
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    path = tmp_path_factory.mktemp("tokens") / "seq.onnx"
    path.write_bytes(compile_spec(load_spec(SPECS / "transformer_reverse.yaml"))
                     .SerializeToString())
    return path


def test_predict_token_id_beyond_vocab_size(cli, tmp_path, tokens):
    np.savez(tmp_path / "ids.npz", x=np.array([[1, 2, 3, 4, 5, 6, 7, 99]]))
    one_line(cli("predict", tokens, tmp_path / "ids.npz"), 1, "ids.npz: sample 0", "id 99",
             "vocab_size 10")


def test_predict_token_ids_from_npz(cli, tmp_path, tokens):
    """int64 ids from a file reach the model as int64 (they were fed as float32: exit 1), and
    per-token predictions go to JSON or npz (CSV has one row per sample: one line, exit 1)."""
    np.savez(tmp_path / "ids.npz", x=np.array([[1, 2, 3, 4, 5, 6, 7, 9]] * 3))
    one_line(cli("predict", tokens, tmp_path / "ids.npz"), 1, "a class per token", ".json")
    r = cli("predict", tokens, tmp_path / "ids.npz", "-o", tmp_path / "p.json")
    assert r.code == 0, r
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 3 and len(rows[0]["label"]) == 8 and len(rows[0]["probabilities"][0]) == 10
