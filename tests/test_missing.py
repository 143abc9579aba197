"""Issue 17, missing values (data.missing): fills learnt from the training split and baked into
the exported graph, so a plain onnxruntime session fed NaN answers what `dlc predict` does on
rows with empty cells; `drop` leaves such rows out."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from dlc.data import _random_split, _split_config, load_dataset

MARKERS = ["", "NA", "nan", "?"]


def write_table(path, n=120, seed=0):
    """Three numeric features, a string class from the first two; every 7th cell of a and c is
    missing (written with one of the MISSING markers)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).round(3)
    y = np.where(x[:, 0] + x[:, 1] > 0, "up", "down")
    lines = ["a,b,c,y"]
    for i, (row, t) in enumerate(zip(x, y)):
        cells = [f"{v:g}" for v in row]
        if i % 7 == 3:
            cells[0] = MARKERS[i % 4]
        if i % 7 == 5:
            cells[2] = MARKERS[(i + 1) % 4]
        lines.append(",".join([*cells, t]))
    path.write_text("\n".join(lines) + "\n")
    return path


def spec_file(tmp_path, missing, normalize="standard"):
    spec = {"dlc": 1, "name": "m", "input": {"shape": [3]},
            "layers": [{"type": "dense", "name": "h", "units": 8, "activation": "relu"},
                       {"type": "dense", "name": "out", "units": 2}],
            "task": {"kind": "classification", "metrics": ["accuracy"]},
            "data": {"source": "csv:t.csv", "target": "y", "normalize": normalize,
                     "split": {"val": 0.2, "test": 0.2, "seed": 0}, "missing": missing},
            "train": {"epochs": 2, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.01},
                      "seed": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec


@pytest.mark.parametrize("missing,expect", [
    ({"strategy": "mean"}, lambda t: np.nanmean(t, axis=0)),
    ({"strategy": "median"}, lambda t: np.nanmedian(t, axis=0)),
    ({"strategy": "constant", "value": 7}, lambda t: np.full(3, 7.0)),
])
def test_fills_come_from_the_training_split(tmp_path, missing, expect):
    write_table(tmp_path / "t.csv")
    _, spec = spec_file(tmp_path, missing)
    ds = load_dataset(spec, tmp_path)
    from dlc.data._csv import load_table

    x, y, _, _ = load_table(tmp_path / "t.csv", "t.csv", spec, None, False, True)
    tr, _, _ = _random_split(spec, y, len(x), _split_config(spec["data"]))
    np.testing.assert_allclose(ds.norm["fill"], expect(x[tr]), rtol=1e-6)  # x is float32 there
    assert np.isnan(x).any() and np.isfinite(ds.train.x).all()


def test_most_frequent_takes_the_smallest_of_ties():
    from dlc.data import stats

    x = np.array([[1.0, np.nan], [2.0, 5.0], [2.0, 4.0], [np.nan, np.nan]])
    data = {"missing": {"strategy": "most_frequent"}, "normalize": "none"}
    norm = stats.fit(x, np.arange(4), data)
    fill, filled = norm["fill"], stats.transform(x, norm)
    assert fill == [2.0, 4.0] and filled[3].tolist() == [2.0, 4.0]


@pytest.mark.parametrize("normalize", ["standard", "none"])
def test_plain_onnxruntime_fed_nan_answers_like_dlc_predict(cli, tmp_path, normalize):
    write_table(tmp_path / "t.csv")
    spec, _ = spec_file(tmp_path, {"strategy": "mean"}, normalize)
    assert cli("train", spec, "--out", tmp_path / "run", "-q").code == 0
    model = tmp_path / "run" / "model.onnx"
    r = cli("predict", model, tmp_path / "t.csv", "-o", tmp_path / "p.npz")
    assert r.code == 0, r
    predicted = np.load(tmp_path / "p.npz")
    rows = [line.split(",")[:3] for line in (tmp_path / "t.csv").read_text().splitlines()[1:]]
    raw = np.array([[np.nan if c in MARKERS else float(c) for c in row] for row in rows],
                   np.float32)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {"input": raw})[0]
    np.testing.assert_array_equal(probs[:, 1], predicted["p_up"])
    # the graph fills exactly what training filled: NaN there == the fill written in
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    fill = np.asarray(yaml.safe_load(meta["dlc.normalize"])["fill"], np.float32)
    filled = np.where(np.isnan(raw), fill, raw)
    np.testing.assert_array_equal(sess.run(["probabilities"], {"input": filled})[0], probs)


def test_drop_leaves_rows_out_and_predict_refuses_them(cli, tmp_path):
    write_table(tmp_path / "t.csv")
    spec, spec_dict = spec_file(tmp_path, {"strategy": "drop"})
    ds = load_dataset(spec_dict, tmp_path)
    total = sum(len(s) for s in (ds.train, ds.val, ds.test))
    assert total == 120 - len(range(3, 120, 7)) - len(range(5, 120, 7))
    assert cli("train", spec, "--out", tmp_path / "run", "-q").code == 0
    r = cli("predict", tmp_path / "run" / "model.onnx", tmp_path / "t.csv")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert "t.csv:5: column 'a': '?' is not a number" in r.err, r


def test_without_missing_an_empty_cell_stays_an_error(cli, tmp_path):
    write_table(tmp_path / "t.csv")
    spec, _ = spec_file(tmp_path, None)
    text = spec.read_text().replace("  missing: null\n", "")
    spec.write_text(text)
    r = cli("train", spec, "--out", tmp_path / "run")
    assert r.code == 1 and "t.csv:5: column 'a': '?' is not a number" in r.err, r


@pytest.mark.parametrize("change,why", [
    ({"data.source": "builtin:iris"}, "a csv:, parquet: or feather: source"),
    ({"data.window": {"length": 3}}, "not with data.window"),
])
def test_missing_where_it_would_be_ignored_is_a_spec_error(cli, tmp_path, change, why):
    path, spec = spec_file(tmp_path, {"strategy": "mean"})
    for key, value in change.items():
        spec["data"][key.split(".")[1]] = value
    path.write_text(yaml.safe_dump(spec))
    r = cli("validate", path)
    assert r.code == 2 and "data.missing" in r.err and why in r.err, r


def test_cross_validation_fills_each_fold(cli, tmp_path):
    """dlc cv builds its folds itself: each fold's training rows give the fills."""
    write_table(tmp_path / "t.csv")
    spec, _ = spec_file(tmp_path, {"strategy": "mean"})
    r = cli("cv", spec, "--folds", "3", "-o", tmp_path / "cv.json")
    assert r.code == 0, r
    folds = json.loads((tmp_path / "cv.json").read_text())["per_fold"]
    assert len(folds) == 3 and all(np.isfinite(f["metrics"]["loss"]) for f in folds)
