"""dlc.data: builtin, CSV and NPZ sources, splits, normalisation, predict inputs, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import raises_one_line

from dlc.data import Dataset, Split, load_arrays, load_dataset, read_inputs
from dlc.data._split import split_indices

IRIS_HEADER = "sepal_length,sepal_width,petal_length,petal_width,species"


def make_spec(source, kind="classification", shape=(4,), **data):
    data.setdefault("split", {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0})
    data.setdefault("normalize", "none")
    return {
        "dlc": 1,
        "name": "t",
        "input": {"shape": list(shape), "dtype": "float32"},
        "layers": [{"type": "dense", "units": 3}],
        "task": {"kind": kind},
        "data": {"source": source, "header": True, "x_key": "x", "y_key": "y", **data},
    }


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def iris_csv(tmp_path: Path, n_per_class: int = 10) -> Path:
    rows = [IRIS_HEADER]
    rng = np.random.default_rng(1)
    for name in ("setosa", "versicolor", "virginica"):
        for _ in range(n_per_class):
            vals = ",".join(f"{v:.2f}" for v in rng.uniform(0, 8, 4))
            rows.append(f"{vals},{name}")
    return write_csv(tmp_path / "iris.csv", "\n".join(rows))


# ---------------------------------------------------------------- builtins


@pytest.mark.parametrize(
    "name, kind, n, f, labels",
    [
        ("digits", "classification", 1797, 64, [str(i) for i in range(10)]),
        ("iris", "classification", 150, 4, ["setosa", "versicolor", "virginica"]),
        ("wine", "classification", 178, 13, ["class_0", "class_1", "class_2"]),
        ("breast_cancer", "binary", 569, 30, ["malignant", "benign"]),
        ("diabetes", "regression", 442, 10, None),
    ],
)
def test_builtin_shapes(name, kind, n, f, labels):
    x, y, got_labels, features = load_arrays(f"builtin:{name}", make_spec("", kind, (f,)), Path())
    assert x.shape == (n, f) and x.dtype == np.float32
    assert got_labels == labels
    assert features is not None and len(features) == f
    if kind == "classification":
        assert y.shape == (n,) and y.dtype == np.int64
    else:
        assert y.shape == (n, 1) and y.dtype == np.float32
    if kind == "binary":
        assert set(np.unique(y)) == {0.0, 1.0}


@pytest.mark.parametrize("shape", [(1, 8, 8), (8, 8)])
def test_digits_reshaped_to_input_shape(shape):
    ds = load_dataset(make_spec("builtin:digits", shape=shape), Path())
    assert ds.train.x.shape[1:] == shape
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797


def test_shape_mismatch():
    spec = make_spec("builtin:digits", shape=(3, 32, 32))
    raises_one_line(lambda: load_dataset(spec, Path()), "data has 64 features per sample", "3072")


def test_task_labels_override_builtin_names():
    spec = make_spec("builtin:iris")
    spec["task"]["labels"] = ["a", "b", "c"]
    assert load_dataset(spec, Path()).labels == ["a", "b", "c"]


def test_unknown_builtin_and_source():
    raises_one_line(lambda: load_dataset(make_spec("builtin:mnist"), Path()), "mnist", "digits")
    raises_one_line(lambda: load_dataset(make_spec("http://x"), Path()), "csv:PATH")


def test_binary_builtin_not_01():
    raises_one_line(lambda: load_dataset(make_spec("builtin:iris", "binary"), Path()), "0 or 1", "2")


# ---------------------------------------------------------------- splits


def test_split_sizes_and_determinism():
    spec = make_spec("builtin:iris")
    ds = load_dataset(spec, Path())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (105, 15, 30)
    again = load_dataset(spec, Path())
    assert np.array_equal(ds.test.x, again.test.x) and np.array_equal(ds.val.y, again.val.y)
    y = np.repeat(np.arange(3), 50)
    a = split_indices(y, 150, 0.1, 0.2, True, 0)
    b = split_indices(y, 150, 0.1, 0.2, True, 0)
    c = split_indices(y, 150, 0.1, 0.2, True, 1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(np.sort(a[2]), np.sort(c[2]))
    assert sorted(np.concatenate(a).tolist()) == list(range(150))


@pytest.mark.parametrize("stratify", [True, False])
def test_unstratified_sizes(stratify):
    tr, va, te = split_indices(np.zeros(97, np.int64), 97, 0.15, 0.25, stratify, 3)
    assert (len(te), len(va), len(tr)) == (24, 15, 58)


@pytest.mark.parametrize("stratify, want", [
    (True, [[0, 13, 17, 14, 7, 2, 11, 16, 19, 18, 5], [10, 9, 8, 6], [15, 12, 4, 3, 1]]),
    (False, [[17, 12, 15, 8, 6, 14, 0, 4, 10, 2, 5], [13, 19, 16, 11], [1, 18, 9, 7, 3]])])
@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.float32])
def test_split_indices_are_int32_with_the_draws_they_always_had(stratify, want, dtype):
    """Half the memory of int64 indices on a big table, and the same split as the int64 code
    drew (pinned from it), for targets of any integer or float dtype: seeded runs keep their
    splits."""
    y = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2, 0, 1, 2, 2, 0, 1, 0, 1], dtype)
    parts = split_indices(y, 20, 0.2, 0.25, stratify, 5)
    assert [p.tolist() for p in parts] == want and {p.dtype for p in parts} == {np.dtype(np.int32)}


def test_stratification_keeps_proportions():
    rng = np.random.default_rng(0)
    y = rng.choice(4, size=503, p=[0.5, 0.3, 0.15, 0.05])
    tr, va, te = split_indices(y, len(y), 0.1, 0.2, True, 7)
    for idx, frac in ((te, 0.2), (va, 0.1), (tr, 0.7)):
        for c in range(4):
            expected = frac * np.sum(y == c)
            assert abs(np.sum(y[idx] == c) - expected) <= 1.0 + 1e-9, (c, frac)


def test_zero_fractions_give_none():
    spec = make_spec("builtin:iris", split={"val": 0.0, "test": 0.0, "stratify": True, "seed": 0})
    ds = load_dataset(spec, Path())
    assert ds.val is None and ds.test is None and len(ds.train) == 150


def test_split_leaving_empty_set(tmp_path):
    path = write_csv(tmp_path / "tiny.csv", "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1")
    split = {"val": 0.1, "test": 0.2, "stratify": False, "seed": 0}
    spec = make_spec("csv:tiny.csv", shape=(2,), split=split)
    raises_one_line(lambda: load_dataset(spec, tmp_path), "data.split", "val", "empty")
    spec["data"]["split"] = {"val": 0.5, "test": 0.5, "stratify": False, "seed": 0}
    raises_one_line(lambda: load_dataset(spec, tmp_path), "no training samples")
    assert path.exists()


# ---------------------------------------------------------------- normalisation


def _constructed(tmp_path, kind):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(200, 3))
    x[:, 2] = 4.0  # constant feature -> scale 1
    y = rng.integers(0, 2, 200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = make_spec("npz:d.npz", shape=(3,), normalize=kind)
    return load_dataset(spec, tmp_path), x


def test_standard_uses_train_stats_only(tmp_path):
    ds, raw = _constructed(tmp_path, "standard")
    assert np.allclose(ds.train.x[:, :2].mean(axis=0), 0, atol=1e-5)
    assert np.allclose(ds.train.x[:, :2].std(axis=0), 1, atol=1e-4)
    assert not np.allclose(ds.val.x[:, :2].mean(axis=0), 0, atol=1e-5)
    assert ds.norm["kind"] == "standard" and ds.norm["scale"][2] == 1.0
    assert np.all(ds.train.x[:, 2] == 0)
    # normalize() on raw data reproduces the stored arrays
    back = ds.normalize(raw)
    assert back.dtype == np.float32
    offset, scale = np.array(ds.norm["offset"]), np.array(ds.norm["scale"])
    assert np.allclose(back, (raw - offset) / scale, atol=1e-5)


def test_minmax(tmp_path):
    ds, _ = _constructed(tmp_path, "minmax")
    assert np.allclose(ds.train.x[:, :2].min(axis=0), 0, atol=1e-6)
    assert np.allclose(ds.train.x[:, :2].max(axis=0), 1, atol=1e-6)
    assert ds.norm["scale"][2] == 1.0


def test_no_normalisation(tmp_path):
    ds, _ = _constructed(tmp_path, "none")
    assert ds.norm is None
    assert np.array_equal(ds.normalize(np.ones((2, 3))), np.ones((2, 3), np.float32))


# ---------------------------------------------------------------- csv


def test_csv_categorical_labels(tmp_path):
    iris_csv(tmp_path)
    ds = load_dataset(make_spec("csv:iris.csv", normalize="standard"), tmp_path)
    assert ds.labels == ["setosa", "versicolor", "virginica"]
    assert ds.features == IRIS_HEADER.split(",")[:4]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 30
    assert ds.train.y.dtype == np.int64 and set(ds.train.y) == {0, 1, 2}


def test_csv_task_labels_order_categorical(tmp_path):
    iris_csv(tmp_path)
    spec = make_spec("csv:iris.csv")
    spec["task"]["labels"] = ["virginica", "versicolor", "setosa"]
    x, y, labels, _ = load_arrays("csv:iris.csv", spec, tmp_path)
    assert labels == ["virginica", "versicolor", "setosa"] and y[0] == 2


def test_csv_target_by_name_index_and_feature_subset(tmp_path):
    write_csv(tmp_path / "d.csv", "label,a,b,c\n1,0.5,2,3\n0,1.5,4,5\n2,2.5,6,7")
    spec = make_spec("csv:d.csv", shape=(3,), target="label")
    x, y, labels, features = load_arrays("csv:d.csv", spec, tmp_path)
    assert features == ["a", "b", "c"] and y.tolist() == [1, 0, 2] and labels == ["0", "1", "2"]
    assert x[0].tolist() == [0.5, 2, 3]
    spec = make_spec("csv:d.csv", shape=(3,), target=0)
    assert np.array_equal(load_arrays("csv:d.csv", spec, tmp_path)[1], y)
    spec = make_spec("csv:d.csv", shape=(2,), target="label", features=["c", "a"])
    x, _, _, features = load_arrays("csv:d.csv", spec, tmp_path)
    assert features == ["c", "a"] and x[1].tolist() == [5, 1.5]


def test_csv_without_header(tmp_path):
    write_csv(tmp_path / "d.csv", "0.5,2,1\n1.5,4,0")
    spec = make_spec("csv:d.csv", shape=(2,), header=False)
    x, y, _, features = load_arrays("csv:d.csv", spec, tmp_path)
    assert x.shape == (2, 2) and y.tolist() == [1, 0] and features is None
    spec["data"]["target"] = "y"
    raises_one_line(lambda: load_arrays("csv:d.csv", spec, tmp_path), "data.header is false")


def test_csv_regression_and_binary(tmp_path):
    write_csv(tmp_path / "r.csv", "a,b,t\n1,2,0.5\n3,4,-1.25")
    x, y, labels, _ = load_arrays("csv:r.csv", make_spec("", "regression", (2,)), tmp_path)
    assert y.dtype == np.float32 and y.shape == (2, 1) and labels is None
    write_csv(tmp_path / "b.csv", "a,b,t\n1,2,yes\n3,4,no\n5,6,yes")
    _, y, labels, _ = load_arrays("csv:b.csv", make_spec("", "binary", (2,)), tmp_path)
    assert labels == ["no", "yes"] and y.shape == (3, 1) and y[:, 0].tolist() == [1, 0, 1]


def test_csv_absolute_path(tmp_path):
    path = iris_csv(tmp_path)
    x, *_ = load_arrays(f"csv:{path}", make_spec(""), Path("/nonexistent"))
    assert x.shape == (30, 4)


def test_csv_without_target_allowed(tmp_path):
    write_csv(tmp_path / "p.csv", "sepal_length,sepal_width,petal_length,petal_width\n1,2,3,4")
    spec = make_spec("csv:iris.csv", target="species")
    x, y, _, _ = load_arrays("csv:p.csv", spec, tmp_path, require_target=False)
    assert y is None and x.shape == (1, 4)
    spec = make_spec("csv:iris.csv")  # default target (last column) with exactly 4 columns
    x, y, _, _ = load_arrays("csv:p.csv", spec, tmp_path, require_target=False)
    assert y is None and x.shape == (1, 4)
    raises_one_line(lambda: load_arrays("csv:p.csv", spec, tmp_path), "data has 3 features")


def test_csv_strict_labels(tmp_path):
    iris_csv(tmp_path)
    run = lambda: load_arrays(  # noqa: E731
        "csv:iris.csv", make_spec(""), tmp_path, labels=["setosa", "versicolor"]
    )
    raises_one_line(run, "iris.csv:22", "'virginica' is not one of the class names")


# ---------------------------------------------------------------- csv errors


def test_missing_file(tmp_path):
    spec = make_spec("csv:nope.csv")
    raises_one_line(lambda: load_dataset(spec, tmp_path), "data file not found", "nope.csv", "data.source")


def test_missing_column_did_you_mean(tmp_path):
    iris_csv(tmp_path)
    spec = make_spec("csv:iris.csv", target="specis")
    raises_one_line(
        lambda: load_dataset(spec, tmp_path),
        "data.target: column 'specis' not in iris.csv; did you mean 'species'?",
    )
    spec = make_spec("csv:iris.csv", features=["sepal_lenght"])
    raises_one_line(lambda: load_dataset(spec, tmp_path), "data.features", "did you mean 'sepal_length'")
    spec = make_spec("csv:iris.csv", target=9)
    raises_one_line(lambda: load_dataset(spec, tmp_path), "data.target", "out of range")


@pytest.mark.parametrize(
    "cell, expect",
    [
        ("abc", "iris.csv:3: column 'petal_width': 'abc' is not a number"),
        ("nan", "iris.csv:3: column 'petal_width'"),
        ("inf", "iris.csv:3: column 'petal_width'"),
        ("", "iris.csv:3: column 'petal_width': empty cell"),
    ],
)
def test_bad_feature_cells(tmp_path, cell, expect):
    write_csv(tmp_path / "iris.csv", f"{IRIS_HEADER}\n1,2,3,4,a\n1,2,3,{cell},b\n1,2,3,4,a")
    raises_one_line(lambda: load_dataset(make_spec("csv:iris.csv"), tmp_path), expect)


def test_blank_lines_keep_line_numbers(tmp_path):
    write_csv(tmp_path / "iris.csv", f"{IRIS_HEADER}\n\n1,2,3,4,a\n\n1,x,3,4,b")
    raises_one_line(lambda: load_dataset(make_spec("csv:iris.csv"), tmp_path), "iris.csv:5:", "'x'")


def test_ragged_row_and_empty_target(tmp_path):
    write_csv(tmp_path / "iris.csv", f"{IRIS_HEADER}\n1,2,3,4,a\n1,2,3,b")
    raises_one_line(lambda: load_dataset(make_spec("csv:iris.csv"), tmp_path), "iris.csv:3", "columns")
    write_csv(tmp_path / "iris.csv", f"{IRIS_HEADER}\n1,2,3,4,a\n1,2,3,4,")
    raises_one_line(lambda: load_dataset(make_spec("csv:iris.csv"), tmp_path), "iris.csv:3", "empty")


def test_binary_csv_target_not_01(tmp_path):
    write_csv(tmp_path / "b.csv", "a,t\n1,0\n2,1\n3,2")
    spec = make_spec("csv:b.csv", "binary", (1,))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "b.csv:4", "binary target must be 0 or 1")
    write_csv(tmp_path / "b.csv", "a,t\n1,x\n2,y\n3,z")
    raises_one_line(lambda: load_dataset(spec, tmp_path), "binary target has 3 distinct values")


def test_regression_target_not_number(tmp_path):
    write_csv(tmp_path / "r.csv", "a,t\n1,0.5\n2,oops")
    spec = make_spec("csv:r.csv", "regression", (1,))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "r.csv:3: column 't': 'oops' is not a number")


def test_class_index_beyond_task_labels(tmp_path):
    write_csv(tmp_path / "c.csv", "a,t\n1,0\n2,1\n3,5")
    spec = make_spec("csv:c.csv", shape=(1,))
    spec["task"]["labels"] = ["x", "y", "z"]
    raises_one_line(lambda: load_dataset(spec, tmp_path), "c.csv:4", "class index 5 is out of range")


# ---------------------------------------------------------------- npz


def test_npz_load_with_labels(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(10, 2, 2)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 2, labels=np.array(["cat", "dog"]))
    spec = make_spec("npz:d.npz", shape=(4,))
    ds = load_dataset(spec, tmp_path)
    assert ds.labels == ["cat", "dog"] and ds.train.x.shape[1:] == (4,)
    spec = make_spec("npz:d.npz", shape=(2, 2), x_key="x", y_key="y")
    assert load_arrays("npz:d.npz", spec, tmp_path)[0].shape == (10, 2, 2)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 2)), y=np.zeros(4))
    spec = make_spec("npz:d.npz", shape=(2,))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "no array 'x'", "inputs, y")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), target=np.zeros(4))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "no array 'y'", "target, x")
    x, y, _, _ = load_arrays("npz:d.npz", spec, tmp_path, require_target=False)
    assert y is None and x.shape == (4, 2)
    bad = np.zeros((4, 2))
    bad[2, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=bad, y=np.zeros(4))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "NaN or inf", "sample 2")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3)), y=np.zeros(4))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "data has 3 features per sample")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.zeros(3))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "y has 3 samples")
    (tmp_path / "d.npz").write_text("not a zip")
    raises_one_line(lambda: load_dataset(spec, tmp_path), "d.npz")


def test_npz_binary_not_01(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 3, 0]))
    spec = make_spec("npz:d.npz", "binary", (2,))
    raises_one_line(lambda: load_dataset(spec, tmp_path), "y[2]", "binary target must be 0 or 1, found 3")


def test_npz_regression_multi_output(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 2)), y=np.ones((20, 3)))
    ds = load_dataset(make_spec("npz:d.npz", "regression", (2,)), tmp_path)
    assert ds.train.y.shape == (14, 3) and ds.train.y.dtype == np.float32


# ---------------------------------------------------------------- read_inputs


def test_read_inputs_csv_by_name(tmp_path):
    path = write_csv(tmp_path / "in.csv", "d,extra,b,a,c\n4,9,2,1,3\n8,9,6,5,7")
    x = read_inputs(path, ["a", "b", "c", "d"], [4])
    assert x.dtype == np.float32 and x.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_read_inputs_csv_all_columns_and_no_header(tmp_path):
    path = write_csv(tmp_path / "in.csv", "p,q\n1,2\n3,4")
    assert read_inputs(path, None, [2]).tolist() == [[1, 2], [3, 4]]
    path = write_csv(tmp_path / "raw.csv", "1,2,3,4")
    assert read_inputs(path, ["a", "b"], [2, 2]).shape == (1, 2, 2)


def test_read_inputs_csv_errors(tmp_path):
    feats = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    path = write_csv(tmp_path / "input.csv", "a,b,c,d,e\n1,2,3,4,5")
    raises_one_line(lambda: read_inputs(path, None, [4]), "input.csv has 5 columns; the model expects 4")
    raises_one_line(
        lambda: read_inputs(path, feats, [4]),
        "input.csv has 5 columns; the model expects 4 features (sepal_length, sepal_width",
    )
    header = "sepal_length,sepal_width,petal_lenght,petal_width,x"
    path = write_csv(tmp_path / "input.csv", header + "\n1,2,3,4,5")
    raises_one_line(lambda: read_inputs(path, feats, [4]), "did you mean 'petal_lenght'")
    path = write_csv(tmp_path / "input.csv", ",".join(feats) + "\n1,2,x,4")
    raises_one_line(lambda: read_inputs(path, feats, [4]), "input.csv:2: column 'petal_length': 'x'")
    raises_one_line(lambda: read_inputs(tmp_path / "missing.csv", feats, [4]), "input file not found")


def test_read_inputs_npz(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((3, 64)))
    assert read_inputs(tmp_path / "a.npz", None, [1, 8, 8]).shape == (3, 1, 8, 8)
    np.savez(tmp_path / "b.npz", batch=np.ones((2, 8, 8)))
    assert read_inputs(tmp_path / "b.npz", None, [64]).shape == (2, 64)
    np.savez(tmp_path / "c.npz", x=np.ones((4,)))
    assert read_inputs(tmp_path / "c.npz", None, [4]).shape == (1, 4)
    np.savez(tmp_path / "d.npz", x=np.ones((2, 5)))
    raises_one_line(lambda: read_inputs(tmp_path / "d.npz", None, [4]), "d.npz", "5 values", "4 features")
    np.savez(tmp_path / "e.npz", p=np.ones((2, 4)), q=np.ones((2, 4)))
    raises_one_line(lambda: read_inputs(tmp_path / "e.npz", None, [4]), "no array 'x'", "p, q")
    np.save(tmp_path / "f.npy", np.ones((2, 4)))
    assert read_inputs(tmp_path / "f.npy", None, [4]).shape == (2, 4)


def test_dataclasses_are_plain():
    s = Split(np.zeros((2, 1), np.float32), np.zeros(2, np.int64))
    ds = Dataset(s, None, None, ["a"], None, None)
    assert len(s) == 2 and ds.n_classes == 1
