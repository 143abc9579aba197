"""Sequence data: time-series windows (time-order split, train-only statistics, predict from a
series) and text (the word tokens of the model's text front, vocabulary from the training split,
OOV/padding, truncation, raw texts read for predict and evaluate), with one-line errors."""

from __future__ import annotations

import csv
import json
import re
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import SPECS

from dlc.data import TextSpec, load_arrays, load_dataset, model_inputs
from dlc.data.text import text_config
from dlc.data.windows import Window, input_windows, make_windows
from dlc.errors import DlcError
from dlc.model.text_front import OOV, PAD


def raises(fn, *substrings):
    with pytest.raises(DlcError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for s in substrings:
        assert s in message, message
    return message


# ================================================================ windows


def series_spec(source, length=5, horizon=2, shape=None, kind="regression", **window):
    return {
        "dlc": 1,
        "name": "ts",
        "input": {"shape": list(shape or [length, 1]), "dtype": "float32"},
        "layers": [{"type": "flatten"}, {"type": "dense", "units": horizon}],
        "task": {"kind": kind},
        "data": {"source": source, "header": True, "normalize": "standard",
                 "split": {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0},
                 "window": {"length": length, "horizon": horizon, **window}},
    }


def write_series(path: Path, n: int = 100) -> Path:
    """Columns t (0..n-1), a (= t), b (= 1000 + 2t), value (= t): value at step t is t."""
    rows = ["t,a,b,value"] + [f"{t},{t},{1000 + 2 * t},{t}" for t in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def raw(split, norm) -> np.ndarray:
    """Undo the input normalisation of split.x ([m, L, F] in flattened order)."""
    flat = split.x.reshape(len(split.x), -1).astype(np.float64)
    out = flat * np.asarray(norm["scale"]) + np.asarray(norm["offset"])
    return np.round(out, 3).reshape(split.x.shape)


@pytest.mark.parametrize("n,length,horizon,stride,count",
                         [(20, 5, 2, 1, 14), (20, 5, 2, 3, 5), (7, 5, 2, 1, 1), (6, 5, 2, 1, 0),
                          (30, 1, 1, 1, 29), (30, 10, 5, 4, 4)])
def test_window_counts_and_values(n, length, horizon, stride, count):
    series = np.arange(n, dtype=np.float64)
    x, y = make_windows(series[:, None], series, Window(length, horizon, stride, None, None))
    assert x.shape == (count, length, 1) and y.shape == (count, horizon)
    assert x.dtype == np.float32 and y.dtype == np.float32
    for i in range(count):
        start = i * stride
        assert x[i, :, 0].tolist() == list(range(start, start + length))
        assert y[i].tolist() == list(range(start + length, start + length + horizon))


def test_windows_are_views_not_copies(tmp_path):
    """Overlapping windows share the series' memory (sliding_window_view), in make_windows and
    in the training split; fancy indexing copied each value `length` times."""
    series = np.arange(50, dtype=np.float64)
    x, y = make_windows(series[:, None], series, Window(10, 3, 1, None, None))
    assert np.shares_memory(x[0], x[1]) and np.shares_memory(y[0], y[1])
    assert not x.flags.writeable  # a view: nothing may write through it into the series
    write_series(tmp_path / "s.csv")
    ds = load_dataset(series_spec("csv:s.csv", column="value"), tmp_path)
    assert np.shares_memory(ds.train.x[0], ds.train.x[1])


def test_time_order_split_without_leakage(tmp_path):
    write_series(tmp_path / "s.csv")
    ds = load_dataset(series_spec("csv:s.csv", column="value"), tmp_path)
    # 100 steps: train [0, 70), val [70, 80), test [80, 100); each part windowed on its own
    assert (len(ds.train), len(ds.val), len(ds.test)) == (70 - 6, 10 - 6, 20 - 6)
    assert ds.train.x.shape == (64, 5, 1) and ds.train.y.shape == (64, 2)
    tr, va, te = (raw(s, ds.norm) for s in (ds.train, ds.val, ds.test))
    assert tr.max() < 70 and ds.train.y.max() < 70  # no training window sees a later value
    assert va.min() >= 70 and ds.val.y.min() >= 70 and ds.val.y.max() < 80
    assert te.min() >= 80 and ds.test.y.max() == 99
    # val/test stay in time order; each target follows its own window
    assert np.all(np.diff(te[:, 0, 0]) == 1)
    assert np.allclose(te[:, -1, 0] + 1, ds.test.y[:, 0])
    assert ds.labels is None and ds.text is None


def test_normalisation_from_the_training_part_only(tmp_path):
    write_series(tmp_path / "s.csv")
    ds = load_dataset(series_spec("csv:s.csv", column="value"), tmp_path)
    train_steps = np.arange(70, dtype=np.float64)
    assert ds.norm["kind"] == "standard"
    assert len(ds.norm["offset"]) == 5  # L positions x 1 column, all the same statistics
    assert np.allclose(ds.norm["offset"], train_steps.mean())
    assert np.allclose(ds.norm["scale"], train_steps.std())
    assert abs(float(ds.train.x.mean())) < 0.2  # centred on the training part, not the whole
    assert float(ds.test.x.min()) > 1.5  # test values lie above every training value
    # targets are not normalised: the model predicts raw values
    assert ds.test.y.min() >= 80


def test_several_input_columns_and_stride(tmp_path):
    write_series(tmp_path / "s.csv")
    spec = series_spec("csv:s.csv", length=4, horizon=3, shape=[4, 2], stride=2,
                       column="value", columns=["a", "b"])
    ds = load_dataset(spec, tmp_path)
    assert ds.train.x.shape[1:] == (4, 2) and ds.train.y.shape[1] == 3
    assert len(ds.train) == (70 - 7) // 2 + 1
    a, b = np.arange(70.0), 1000 + 2 * np.arange(70.0)
    assert np.allclose(ds.norm["offset"], [a.mean(), b.mean()] * 4)
    assert np.allclose(ds.norm["scale"], [a.std(), b.std()] * 4)
    x = raw(ds.train, ds.norm)
    assert np.allclose(x[1, :, 0], [2, 3, 4, 5]) and np.allclose(x[1, :, 1], 1000 + 2 * x[1, :, 0])
    assert ds.train.y[1].tolist() == [6, 7, 8]
    flat = series_spec("csv:s.csv", length=4, horizon=3, shape=[8], column=3, columns=[1, 2])
    assert load_dataset(flat, tmp_path).train.x.shape[1:] == (8,)


def test_npz_series_and_no_normalisation(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.arange(50.0))
    spec = series_spec("npz:s.npz", length=3, horizon=1)
    spec["data"]["normalize"] = "none"
    spec["data"]["split"] = {"val": 0.0, "test": 0.2}
    ds = load_dataset(spec, tmp_path)
    assert ds.norm is None and ds.val is None
    assert (len(ds.train), len(ds.test)) == (40 - 3, 10 - 3)
    assert ds.test.x[0, :, 0].tolist() == [40, 41, 42] and ds.test.y[0].tolist() == [43]
    np.savez(tmp_path / "m.npz", x=np.stack([np.arange(50.0), -np.arange(50.0)], axis=1))
    spec = series_spec("npz:m.npz", length=3, horizon=1, shape=[3, 2], column=1, columns=[0, 1])
    ds = load_dataset(spec, tmp_path)
    assert ds.train.x.shape[1:] == (3, 2) and ds.train.y[0].tolist() == [-3]


def test_load_arrays_windows_the_whole_series(tmp_path):
    write_series(tmp_path / "s.csv")
    x, y, labels, features = load_arrays("csv:s.csv", series_spec("", column="value"), tmp_path)
    assert x.shape == (100 - 6, 5, 1) and y.shape == (94, 2)
    assert x[-1, :, 0].tolist() == [93, 94, 95, 96, 97] and y[-1].tolist() == [98, 99]
    assert labels is None and features is None


def test_predict_inputs_from_a_series(tmp_path):
    write_series(tmp_path / "s.csv", n=12)
    spec = series_spec("", length=5, horizon=2, stride=3, column="value")
    x = model_inputs(tmp_path / "s.csv", spec)
    # windows aligned to the end: the last one holds the last 5 steps (its forecast is the future)
    assert x.shape == (3, 5, 1) and x[-1, :, 0].tolist() == [7, 8, 9, 10, 11]
    assert x[0, :, 0].tolist() == [1, 2, 3, 4, 5]
    assert input_windows(np.arange(5.0)[:, None], Window(5, 1, 1, None, None)).shape == (1, 5, 1)
    (tmp_path / "w.csv").write_text("1,2,3,4,5\n6,7,8,9,10\n")  # ready-made flattened windows
    assert model_inputs(tmp_path / "w.csv", spec).shape == (2, 5, 1)
    (tmp_path / "short.csv").write_text("value\n1\n2\n")
    raises(lambda: model_inputs(tmp_path / "short.csv", spec), "2 time steps", "need 5")


def test_window_errors_are_one_line(tmp_path):
    write_series(tmp_path / "s.csv")

    def load(**kw):
        spec = series_spec("csv:s.csv", **{"column": "value", **kw})
        return lambda: load_dataset(spec, tmp_path)

    raises(load(column="valeu"), "data.window.column", "'valeu'", "did you mean 'value'?")
    raises(load(column=9), "data.window.column", "index 9 out of range", "4 columns")
    raises(load(columns=["a", "zz"], shape=[5, 2]), "data.window.columns", "'zz'")
    raises(load(length=60), "the val part", "has 10", "length 60 + horizon 2 = 62")
    raises(load(kind="classification"), "regression", "task.kind is classification")
    raises(load(shape=[6, 1]), "samples are [5, 1]", "input.shape is [6, 1]")
    raises(load(length=0), "data.window.length", ">= 1")
    spec = series_spec("csv:s.csv", column="value")
    spec["data"]["target"] = "value"
    raises(lambda: load_dataset(spec, tmp_path), "data.target does not apply", "window.column")
    (tmp_path / "tiny.csv").write_text("value\n1\n2\n3\n")
    spec = series_spec("csv:tiny.csv")
    raises(lambda: load_dataset(spec, tmp_path), "tiny.csv", "3 time steps", "= 7")
    (tmp_path / "bad.csv").write_text("value\n1\n2\nx\n" + "4\n" * 20)
    raises(lambda: load_dataset(series_spec("csv:bad.csv"), tmp_path), "bad.csv:4", "'x'")
    raises(lambda: load_dataset(series_spec("builtin:diabetes"), tmp_path), "csv: or npz:")
    np.savez(tmp_path / "s.npz", x=np.arange(50.0))
    spec = series_spec("npz:s.npz", column="value")
    raises(lambda: load_dataset(spec, tmp_path), "0-based index", "'value'")
    spec = series_spec("csv:s.csv", column="value")
    spec["data"]["split"] = {"val": 0.0, "test": 0.95}
    raises(lambda: load_dataset(spec, tmp_path), "the train part", "has 5")


def test_window_spec_trains_and_predicts_end_to_end(cli, tmp_path):
    """A dense forecaster on a noisy sine: beats the naive last-value forecast; predict and
    evaluate take the raw series."""
    t = np.arange(600)
    value = 50 + 20 * np.sin(2 * np.pi * t / 25) + np.random.default_rng(0).normal(0, 1, 600)
    rows = ["step,value"] + [f"{i},{v:.4f}" for i, v in zip(t, value)]
    (tmp_path / "sine.csv").write_text("\n".join(rows) + "\n")
    spec = series_spec("csv:sine.csv", length=20, horizon=3, column="value")
    spec["layers"] = [{"type": "flatten"}, {"type": "dense", "units": 32, "activation": "relu"},
                      {"type": "dense", "units": 3}]
    spec["task"] = {"kind": "regression", "loss": "mse", "metrics": ["mae"]}
    spec["train"] = {"epochs": 60, "batch_size": 32, "optimizer": {"type": "adam", "lr": 0.01}}
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    r = cli("train", tmp_path / "s.yaml", "--out", tmp_path / "run", "--quiet")
    assert r.code == 0, r
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    test = value[480:]
    naive = np.mean([abs(test[i + 20:i + 23] - test[i + 19]).mean() for i in range(120 - 22)])
    assert summary["test"]["mae"] < 0.5 * naive, (summary, naive)
    r = cli("predict", tmp_path / "run" / "model.onnx", tmp_path / "sine.csv")
    assert r.code == 0, r
    lines = r.out.strip().splitlines()
    assert lines[0] == "prediction_0,prediction_1,prediction_2" and len(lines) == 1 + 600 - 19
    last = [float(v) for v in lines[-1].split(",")]
    future = 50 + 20 * np.sin(2 * np.pi * np.arange(600, 603) / 25)
    assert np.abs(np.array(last) - future).max() < 4, (last, future)
    r = cli("evaluate", tmp_path / "run" / "model.onnx", "--data", tmp_path / "sine.csv")
    assert r.code == 0 and "mae" in r.out, r


# ================================================================ text

TEXTS = [("the cat sat on the mat", "animal"), ("a dog barked at the cat", "animal"),
         ("the red car drove fast", "vehicle"), ("a blue truck and a car", "vehicle")]


def text_spec(source, length=6, kind="classification", dtype="int64", **text):
    return {
        "dlc": 1,
        "name": "tx",
        "input": {"shape": [length], "dtype": dtype},
        "layers": [{"type": "dense", "units": 2}],
        "task": {"kind": kind},
        "data": {"source": source, "header": True, "normalize": "standard",
                 "split": {"val": 0.0, "test": 0.0, "stratify": True, "seed": 0},
                 "text": {"max_length": length, **text}},
    }


def write_texts(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


WORD = re.compile(r"\w+|[^\w\s]")  # the tokenizer dlc had in Python before the text front


def test_word_tokens_are_the_regex_tokens_on_ascii_text():
    """The front's tokens (StringNormalizer, StringSplit, one cut per ASCII punctuation mark)
    are exactly Python's word regex on ASCII text; marks outside ASCII stay in their words."""
    texts = ["Hello, World!  It's 42x", "", "   ", "a\tb\nc\r\nd", "don't... stop?!",
             "(x) [y] {z} <w> a_b c-d e/f 3.14 $5 #1 @me ~50% ^_^ `q` \"u\" |v| +=*&\\",
             "ends with a mark.", ".starts", ",,,", "Tab\tand  double  spaces"]
    word = TextSpec("text", "word", 8, True)
    assert word.tokens(texts) == [WORD.findall(t.lower()) for t in texts]
    assert TextSpec("text", "word", 8, False).tokens(["Hello World"]) == [["Hello", "World"]]
    assert word.tokens(["ÜBER Straße — «quoted»"]) == [["über", "straße", "—", "«quoted»"]]


ASCII_TEXT = st.text(st.sampled_from(list("abcXYZ019_ \t\n\r\x0b\x0c" + string.punctuation)),
                     max_size=24)


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(st.lists(ASCII_TEXT, min_size=1, max_size=6))
def test_only_words_with_a_space_or_mark_are_cut_and_put_back_in_order(texts):
    """The front cuts only the words that hold a space or mark and merges their pieces back
    between the plain words (text_front._merge): any mix of both, any row, gives the regex's
    tokens in order."""
    assert TextSpec("text", "word", 8, True).tokens(texts) == \
        [WORD.findall(t.lower()) for t in texts]


def test_vocabulary_order_size_and_min_freq():
    ts = TextSpec("text", "word", 4, True, vocab_size=5, min_freq=1)
    built = ts.build(["b a a c", "c a d", "e"])
    assert built.vocab == ("<pad>", "<oov>", "a", "c", "b")  # by count, ties by token
    assert TextSpec("text", "word", 4, True, 100, 2).build(["b a a c", "c a d"]).vocab == \
        ("<pad>", "<oov>", "a", "c")


def test_padding_oov_and_truncation():
    built = TextSpec("text", "word", 4, True).build(["the cat sat", "the dog"])
    index = {t: i for i, t in enumerate(built.vocab)}
    x = built.encode(["The cat", "the zebra sat on the mat", ""])
    assert x.dtype == np.int64 and x.shape == (3, 4)
    assert x[0].tolist() == [index["the"], index["cat"], PAD, PAD]
    assert x[1].tolist() == [index["the"], OOV, index["sat"], OOV]  # first 4 tokens kept
    assert x[2].tolist() == [PAD] * 4
    assert PAD == 0 and OOV == 1 and built.vocab[:2] == ("<pad>", "<oov>")
    assert built.to_meta()["vocab"] == list(built.vocab)


def test_char_tokenizer_is_refused_for_word(tmp_path):
    write_texts(tmp_path / "t.csv", TEXTS)
    raises(lambda: load_dataset(text_spec("csv:t.csv", tokenizer="char"), tmp_path),
           "data.text.tokenizer", "'char' cannot be computed inside the model", "use word")


def test_vocabulary_from_the_training_split_only(tmp_path):
    rows = [(f"shared words unique{i}", "ab"[i % 2]) for i in range(40)]
    write_texts(tmp_path / "t.csv", rows)
    spec = text_spec("csv:t.csv", length=3)
    spec["data"]["split"] = {"val": 0.25, "test": 0.25, "stratify": True, "seed": 0}
    ds = load_dataset(spec, tmp_path)
    vocab = ds.text["vocab"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 10, 10)
    assert len(vocab) == 2 + 2 + 20  # padding, OOV, "shared", "words", one unique per row
    assert set(ds.train.x[:, 2].tolist()) <= set(range(2, len(vocab)))
    assert OOV not in ds.train.x
    assert ds.val.x[:, 2].tolist() == [OOV] * 10 and ds.test.x[:, 2].tolist() == [OOV] * 10
    assert ds.test.x[:, :2].tolist() == [[vocab.index("shared"), vocab.index("words")]] * 10


def test_text_settings_validated(tmp_path):
    write_texts(tmp_path / "t.csv", TEXTS)

    def load(**kw):
        return lambda: load_dataset(text_spec("csv:t.csv", **kw), tmp_path)

    raises(load(dtype="float32"), "int64 token ids", "input.dtype: int64")
    raises(load(column="txt"), "data.text.column", "did you mean 'text'?")
    raises(load(tokenizer="bpe"), "'bpe' cannot be computed", "use word")
    raises(load(vocab_size=2), "data.text.vocab_size", ">= 3")
    spec = text_spec("csv:t.csv")
    spec["data"]["features"] = ["text"]
    raises(lambda: load_dataset(spec, tmp_path), "data.features does not apply to text")
    spec = text_spec("csv:t.csv")
    spec["input"]["shape"] = [5]
    raises(lambda: load_dataset(spec, tmp_path), "6 token ids", "input.shape is [5]")
    spec = text_spec("csv:t.csv", column="label")
    raises(lambda: load_dataset(spec, tmp_path), "the last column is the text column")
    spec["data"]["target"] = "label"
    raises(lambda: load_dataset(spec, tmp_path), "also the text column")
    raises(lambda: load_dataset(text_spec("builtin:iris"), tmp_path), "needs a csv: source")
    spec = text_spec("csv:t.csv")
    spec["data"]["augment"] = {"noise": 0.1}
    raises(lambda: load_dataset(spec, tmp_path), "augment does not apply to text")
    write_texts(tmp_path / "u.csv", [("x", "")] + TEXTS)
    raises(lambda: load_dataset(text_spec("csv:u.csv"), tmp_path), "u.csv:2", "empty target")


def test_max_length_defaults_to_input_shape():
    spec = text_spec("", length=7)
    del spec["data"]["text"]["max_length"]
    assert text_config(spec).max_length == 7


def test_load_arrays_and_model_inputs_give_raw_text(tmp_path):
    """evaluate and predict read the texts themselves: the model tokenises them."""
    write_texts(tmp_path / "t.csv", TEXTS)
    spec = text_spec("csv:t.csv")
    write_texts(tmp_path / "new.csv", [("The zebra, sat", "animal"), ("", "vehicle")])
    x, y, labels, _ = load_arrays("csv:new.csv", spec, tmp_path, labels=["animal", "vehicle"])
    assert x.dtype == object and x.tolist() == ["The zebra, sat", ""]
    assert y.tolist() == [0, 1] and labels == ["animal", "vehicle"]
    assert model_inputs(tmp_path / "new.csv", spec).tolist() == ["The zebra, sat", ""]
    (tmp_path / "in.txt").write_text("first text\n\nsecond one\n")
    assert model_inputs(tmp_path / "in.txt", spec).tolist() == ["first text", "second one"]


def test_a_text_model_that_takes_token_ids_is_refused_in_one_line(cli, tmp_path):
    """Text models made before the tokenizer moved into the graph took int64 ids: predict
    cannot feed them raw text, and says so instead of onnxruntime's type error."""
    from onnx import TensorProto, helper

    from dlc.model.spec import load_spec_text

    spec = text_spec("csv:t.csv")
    spec["layers"] = [{"type": "embedding", "vocab_size": 100, "dim": 4},
                      {"type": "sequence_pool"}, {"type": "dense", "units": 2}]
    spec = load_spec_text(json.dumps(spec)).data  # resolved, as a trained model stores it
    nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["f", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
             helper.make_node("ArgMax", ["logits"], ["class_index"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "ids", [helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info(n, t, ["N", 2][:k]) for n, t, k in (
            ("logits", TensorProto.FLOAT, 2), ("probabilities", TensorProto.FLOAT, 2),
            ("class_index", TensorProto.INT64, 1))],
        [helper.make_tensor("w", TensorProto.FLOAT, [6, 2], [0.0] * 12)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"dlc.spec_resolved": json.dumps(spec)})
    (tmp_path / "in.txt").write_text("a text\n")
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    r = cli("predict", onnx_path, tmp_path / "in.txt")
    assert r.code == 1 and "takes token ids, not raw text" in r.err, r
    assert len(r.err.strip().splitlines()) == 1, r


def test_example_data_files_are_well_formed():
    with open(SPECS / "data" / "wordnet_glosses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5000 and all(r["text"].strip() for r in rows)
    assert sorted({r["label"] for r in rows}) == ["animal", "artifact", "food", "person", "plant"]
    values = np.loadtxt(SPECS / "data" / "sunspots_monthly.csv", delimiter=",", skiprows=1,
                        usecols=1)
    assert values.shape == (3126,) and values.min() >= 0


def test_window_split_without_validation_part():
    """data.split.val = 0 gives no validation split (regression: it crashed on an empty part)."""
    from pathlib import Path

    from dlc.data import load_dataset
    from dlc.model.spec import load_spec

    root = Path(__file__).resolve().parent.parent / "specs"
    spec = load_spec(root / "lstm_forecast.yaml", ["data.split.val=0"])
    ds = load_dataset(spec.data, root)
    assert ds.val is None and len(ds.train) > 0 and len(ds.test) > 0
