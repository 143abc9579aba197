"""`dlc cv`: fold assignment equal to scikit-learn's (Stratified)KFold, folds without leakage,
and mean ± std over freshly trained fold models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SPECS

from dlc.commands.cv import fold_dataset, fold_indices

RNG = np.random.default_rng(7)
LABELS = {
    "iris": np.repeat([0, 1, 2], 50),
    "imbalanced": RNG.choice(4, 97, p=[0.55, 0.3, 0.1, 0.05]),
    "binary_unsorted": RNG.integers(0, 2, 61),
    "first_seen_order": np.array([2, 2, 0, 1, 2, 0, 1, 1, 2, 0, 0, 2, 1, 2, 0, 1, 2, 2]),
}


def sklearn_folds():
    """scikit-learn's model_selection (the oracle; the tests without it run either way)."""
    return pytest.importorskip("sklearn.model_selection")


def sets(splits):
    return [(sorted(map(int, tr)), sorted(map(int, te))) for tr, te in splits]


@pytest.mark.filterwarnings("ignore:The least populated class")
@pytest.mark.parametrize("name", list(LABELS))
@pytest.mark.parametrize("folds", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_stratified_folds_equal_sklearn(name, folds, seed):
    y = LABELS[name]
    skf = sklearn_folds().StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    ref = skf.split(np.zeros(len(y)), y)
    ours = fold_indices(y, len(y), folds, seed, stratify=True)
    assert sets(ours) == sets(ref)


@pytest.mark.parametrize("n,folds,seed", [(10, 2, 0), (11, 3, 5), (150, 5, 0), (442, 10, 3)])
def test_plain_folds_equal_sklearn_kfold(n, folds, seed):
    kfold = sklearn_folds().KFold(n_splits=folds, shuffle=True, random_state=seed)
    ref = list(kfold.split(np.zeros(n)))
    assert sets(fold_indices(None, n, folds, seed, stratify=False)) == sets(ref)
    y = RNG.normal(size=(n, 1)).astype(np.float32)  # regression targets are never stratified
    assert sets(fold_indices(y, n, folds, seed, stratify=False)) == sets(ref)


def test_binary_targets_shaped_n_by_1_stratify_like_sklearn():
    y = LABELS["binary_unsorted"]
    skf = sklearn_folds().StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    ref = skf.split(np.zeros(len(y)), y)
    ours = fold_indices(y.astype(np.float32)[:, None], len(y), 4, 0, stratify=True)
    assert sets(ours) == sets(ref)


def test_fold_data_has_no_leakage_and_train_only_normalisation():
    n = 60
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # x = own index
    y = np.repeat([0, 1, 2], 20)
    spec = {"data": {"split": {"val": 0.2, "seed": 0}, "normalize": "none"},
            "train": {"early_stopping": {"patience": 3}}}
    held_all = []
    for train, held in fold_indices(y, n, 4, 0, True):
        ds = fold_dataset((x, y, None, None), train, held, spec, True)
        ids = {part: set(ds_part.x[:, 0].astype(int)) for part, ds_part in
               (("train", ds.train), ("val", ds.val), ("test", ds.test))}
        assert ids["test"] == set(held.tolist())
        assert ids["train"] | ids["val"] == set(train.tolist())
        assert not ids["train"] & ids["val"] and len(ids["val"]) == 9
        assert np.bincount(ds.val.y).tolist() == [3, 3, 3]  # stratified validation part
        held_all += held.tolist()
    assert sorted(held_all) == list(range(n))
    spec = {"data": {"split": {"val": 0.2}, "normalize": "standard"}, "train": {}}
    train, held = fold_indices(y, n, 4, 0, True)[0]
    ds = fold_dataset((x, y, None, None), train, held, spec, True)
    assert ds.val is None and len(ds.train) == len(train)  # no early stopping: no val
    assert ds.norm["offset"][0] == pytest.approx(x[train, 0].mean())


def test_cv_iris_cli(cli, tmp_path):
    out = tmp_path / "cv.json"
    r = cli("cv", SPECS / "iris.yaml", "--folds", "3", "--set", "train.epochs=15", "-o", out)
    assert r.code == 0, r
    assert "3-fold cross-validation (stratified, seed 0)" in r.out
    assert "accuracy: " in r.out and " ± " in r.out
    report = json.loads(out.read_text())
    rows = report["per_fold"]
    assert [r["test"] for r in rows] == [50, 50, 50] and all(r["val"] == 0 for r in rows)
    assert all(r["train"] == 100 and r["epochs_run"] == 15 for r in rows)
    acc = [r["metrics"]["accuracy"] for r in rows]
    assert report["mean"]["accuracy"] == pytest.approx(np.mean(acc))
    assert report["std"]["accuracy"] == pytest.approx(np.std(acc))
    assert report["mean"]["accuracy"] > 0.7  # 15 epochs learn iris well above chance (1/3)


def test_cv_regression_is_not_stratified(tmp_path):
    from dlc.commands.cv import cross_validate
    from dlc.model.spec import load_spec

    spec = load_spec(SPECS / "diabetes.yaml", ["train.epochs=1"])
    report = cross_validate(spec, 2)
    assert not report["stratified"] and [r["test"] for r in report["per_fold"]] == [221, 221]
    assert set(report["mean"]) >= {"loss", "mse", "mae", "r2"}


def test_cv_errors(cli):
    r = cli("cv", SPECS / "iris.yaml", "--folds", "1")
    assert r.code == 2 and "--folds must be at least 2" in r.err
    r = cli("cv", SPECS / "iris.yaml", "--folds", "51")
    assert r.code == 1 and "more than the samples of every class" in r.err


def test_cv_folds_start_from_init_from(cli, tmp_path):
    """With train.init_from every fold starts from the named model's parameters: at a learning
    rate too small to move them, each fold scores what the trained model scores (a fresh
    initialisation, with the same learning rate, stays near chance)."""
    trained = tmp_path / "trained"
    assert cli("train", SPECS / "iris.yaml", "--out", trained, "-q").code == 0
    still = ["--folds", "3", "--set", "train.epochs=1", "--set", "train.optimizer.lr=1e-9"]
    r = cli("cv", SPECS / "iris.yaml", *still, "--set",
            f"train.init_from={trained / 'model.onnx'}", "-o", tmp_path / "from.json")
    assert r.code == 0, r
    fresh = cli("cv", SPECS / "iris.yaml", *still, "-o", tmp_path / "fresh.json")
    assert fresh.code == 0, fresh
    loaded = json.loads((tmp_path / "from.json").read_text())["mean"]["accuracy"]
    alone = json.loads((tmp_path / "fresh.json").read_text())["mean"]["accuracy"]
    assert loaded > 0.9 and alone < 0.8, (loaded, alone)
