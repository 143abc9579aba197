"""Issue 17, `dlc init DATA --target COLUMN`: a spec inferred from a table that validates and
trains as it is, and reaches a scikit-learn logistic-regression baseline on the same split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

def write_table(path, n=600, seed=3):
    """Four numeric features (some cells empty or NA), a string column, a yes/no target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    city = rng.choice(["north", "south"], n)
    y = np.where(x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2] > 0, "yes", "no")
    lines = ["w,x,z,v,city,outcome"]
    for i in range(n):
        cells = [f"{v:.3f}" for v in x[i]]
        if i % 6 == 0:
            cells[1] = ""
        if i % 10 == 0:
            cells[3] = "NA"
        lines.append(",".join([*cells, city[i], y[i]]))
    path.write_text("\n".join(lines) + "\n")
    return path


def baseline(spec: dict, folder) -> float:
    """Logistic regression on the same features and test split, median-filled and scaled on
    the training rows (scikit-learn)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dlc.data import _random_split, _split_config, load_arrays

    x, y, _, _ = load_arrays(spec["data"]["source"], spec, folder)
    tr, _, te = _random_split(spec, y, len(x), _split_config(spec["data"]))
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegression()).fit(x[tr], y[tr].ravel())
    return float(model.score(x[te], y[te].ravel()))


def test_init_then_train_reaches_the_logistic_regression_baseline(cli, tmp_path):
    pytest.importorskip("sklearn")  # the baseline only: the other tests here need no oracle
    write_table(tmp_path / "survey.csv")
    spec = tmp_path / "spec.yaml"
    r = cli("init", tmp_path / "survey.csv", "--target", "outcome", "-o", spec)
    assert r.code == 0, r
    text = spec.read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    assert "# left out (text): city" in text
    loaded = yaml.safe_load(text)
    assert loaded["task"]["kind"] == "binary" and loaded["input"]["shape"] == [4]
    assert loaded["data"]["missing"] == {"strategy": "median"}
    assert cli("validate", spec).code == 0
    assert cli("train", spec, "--out", tmp_path / "run", "-q").code == 0
    acc = json.loads((tmp_path / "run" / "summary.json").read_text())["test"]["accuracy"]
    assert acc >= baseline(loaded, tmp_path) - 0.02


@pytest.mark.parametrize("target,kind,units", [("w", "regression", 1), ("city", "binary", 1),
                                               ("outcome", "binary", 1)])
def test_init_infers_the_task(cli, tmp_path, target, kind, units):
    write_table(tmp_path / "t.csv")
    r = cli("init", tmp_path / "t.csv", "--target", target)
    assert r.code == 0, r
    spec = yaml.safe_load(r.out)
    assert spec["task"]["kind"] == kind and spec["layers"][-1]["units"] == units


def test_init_refuses_what_it_cannot_use(cli, tmp_path):
    write_table(tmp_path / "t.csv")
    r = cli("init", tmp_path / "t.csv", "--target", "outcom")
    assert r.code == 1 and "did you mean 'outcome'" in r.err, r
    (tmp_path / "spec.yaml").write_text("mine")
    r = cli("init", tmp_path / "t.csv", "--target", "outcome", "-o", tmp_path / "spec.yaml")
    assert r.code == 1 and "--force" in r.err and (tmp_path / "spec.yaml").read_text() == "mine"
    (tmp_path / "t.txt").write_text("a,b\n1,2\n")
    assert cli("init", tmp_path / "t.txt", "--target", "b").code == 1
