"""`dlc evaluate --per-class`: per-class precision/recall/F1/support equal to scikit-learn's, the
most confused pairs, and the default output unchanged without the flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SPECS

from dlc.model.metrics import confusion_matrix, per_class_report


@pytest.mark.parametrize("classes,seed", [(3, 0), (5, 1), (2, 2)])
def test_per_class_equals_sklearn(classes, seed):
    metrics = pytest.importorskip("sklearn.metrics")  # the oracle; the other tests run without
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, classes, 200))
    pred[pred == classes - 1] = 0  # the last class is never predicted: precision 0, not NaN
    names = [f"c{i}" for i in range(classes)]
    report = per_class_report(confusion_matrix(y, pred, classes), names)
    p, r, f, s = metrics.precision_recall_fscore_support(y, pred, labels=list(range(classes)),
                                                         zero_division=0)
    got = report["classes"]
    assert [c["class"] for c in got] == names
    np.testing.assert_allclose([c["precision"] for c in got], p)
    np.testing.assert_allclose([c["recall"] for c in got], r)
    np.testing.assert_allclose([c["f1"] for c in got], f)
    assert [c["support"] for c in got] == s.tolist()


def test_most_confused_pairs_in_order():
    cm = [[5, 3, 0], [1, 7, 4], [0, 4, 9]]
    report = per_class_report(cm, ["a", "b", "c"], top=3)
    assert report["confused"] == [{"true": "b", "predicted": "c", "count": 4},
                                  {"true": "c", "predicted": "b", "count": 4},
                                  {"true": "a", "predicted": "b", "count": 3}]
    assert [c["class"] for c in per_class_report(cm)["classes"]] == ["0", "1", "2"]
    assert per_class_report([[3, 0], [0, 2]])["confused"] == []


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    folder = tmp_path_factory.mktemp("models")
    for name in ("iris", "diabetes"):
        model = compile_spec(load_spec(SPECS / f"{name}.yaml"))
        (folder / f"{name}.onnx").write_bytes(model.SerializeToString())
    return folder


def test_evaluate_per_class_cli(cli, compiled, tmp_path):
    plain, with_flag = tmp_path / "plain.json", tmp_path / "flag.json"
    every = ["--data", "builtin:iris", "--split", "all"]
    r0 = cli("evaluate", compiled / "iris.onnx", *every, "-o", plain)
    r1 = cli("evaluate", compiled / "iris.onnx", *every, "--per-class", "-o", with_flag)
    assert r0.code == 0 and r1.code == 0, (r0, r1)
    assert r1.out.startswith(r0.out) and "precision" not in r0.out.split("matrix")[1]
    table = r1.out[len(r0.out):].splitlines()
    assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert [row.split()[0] for row in table[1:4]] == ["setosa", "versicolor", "virginica"]
    assert [int(row.split()[-1]) for row in table[1:4]] == [50, 50, 50]
    a, b = json.loads(plain.read_text()), json.loads(with_flag.read_text())
    report = b.pop("per_class")
    assert a == b and "per_class" not in a
    cm = np.array(a["confusion_matrix"])
    assert [c["recall"] for c in report["classes"]] == pytest.approx(np.diag(cm) / cm.sum(1))
    names = [c["class"] for c in report["classes"]]
    off = cm - np.diag(np.diag(cm))
    assert off.max() > 0, "an untrained model confuses some classes"  # so the pairs are exercised
    top = report["confused"][0]
    assert top["count"] == off.max() == cm[names.index(top["true"]), names.index(top["predicted"])]
    assert f"  {top['true']} -> {top['predicted']}: {top['count']}" in r1.out


def test_per_class_refuses_regression(cli, compiled):
    r = cli("evaluate", compiled / "diabetes.onnx", "--data", "builtin:diabetes", "--per-class")
    assert r.code == 2 and "--per-class needs a classification" in r.err
