"""Training end to end through the CLI: targets of the example specs, run folder, predict and
evaluate on the exported model, determinism, and bad inputs giving one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import SPECS

from dlc.data import load_dataset
from dlc.model.spec import load_spec

TARGETS = [("digits_mlp", "accuracy", 0.97), ("iris", "accuracy", 0.93),
           ("breast_cancer", "accuracy", 0.95), ("diabetes", "r2", 0.40)]


@pytest.mark.parametrize("name,metric,target", TARGETS, ids=[t[0] for t in TARGETS])
def test_example_spec_reaches_target(cli, tmp_path, name, metric, target):
    out = tmp_path / "run"
    r = cli("train", SPECS / f"{name}.yaml", "--out", out, "--quiet")
    assert r.code == 0, r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"][metric] >= target, summary
    # steps alone go at least as fast as the whole run (which also validates and writes files)
    rows = len(load_dataset(load_spec(SPECS / f"{name}.yaml").data, SPECS).train.x)
    assert summary["train_samples_per_s"] >= rows * summary["epochs_run"] / summary["seconds"]
    for f in ("model.onnx", "train.onnx", "checkpoint.npz", "metrics.csv", "spec.yaml"):
        assert (out / f).is_file(), f
    onnx.checker.check_model(onnx.load(out / "model.onnx"), full_check=True)


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("iris") / "run"
    train(load_spec(SPECS / "iris.yaml"), str(out), quiet=True)
    return out


def test_model_metadata(iris_run):
    meta = {p.key: p.value for p in onnx.load(iris_run / "model.onnx").metadata_props}
    assert json.loads(meta["dlc.labels"]) == ["setosa", "versicolor", "virginica"]
    assert json.loads(meta["dlc.normalize"])["kind"] == "minmax"
    assert "accuracy" in json.loads(meta["dlc.metrics"])["test"]
    assert meta["dlc.spec"] == (SPECS / "iris.yaml").read_text()


def test_predict_takes_raw_inputs(cli, iris_run, tmp_path):
    r = cli("predict", iris_run / "model.onnx", SPECS / "data" / "iris_sample.csv")
    assert r.code == 0, r
    rows = r.out.strip().splitlines()
    assert rows[0] == "class_index,label,p_setosa,p_versicolor,p_virginica"
    labels = [row.split(",")[1] for row in rows[1:]]
    assert labels == ["setosa", "setosa", "versicolor", "versicolor", "virginica"]
    for ext in ("json", "npz", "csv"):
        out = tmp_path / f"pred.{ext}"
        assert cli("predict", iris_run / "model.onnx", SPECS / "data" / "iris_sample.csv",
                   "-o", out).code == 0
        assert out.stat().st_size > 0
    rows = json.loads((tmp_path / "pred.json").read_text())
    assert rows[0]["label"] == "setosa" and abs(sum(rows[0][f"p_{c}"] for c in
                                                    ("setosa", "versicolor", "virginica")) - 1) < 1e-5


def test_evaluate_matches_sklearn(cli, iris_run, tmp_path):
    sklearn = pytest.importorskip("sklearn.metrics")
    from sklearn.datasets import load_iris

    from dlc.runtime import infer

    out = tmp_path / "metrics.json"
    r = cli("evaluate", iris_run / "model.onnx", "--data", "builtin:iris", "--split", "all",
            "-o", out)
    assert r.code == 0, r
    result = json.loads(out.read_text())
    x, y = load_iris(return_X_y=True)
    pred = infer.load_model(iris_run / "model.onnx").run(x.astype(np.float32))["class_index"]
    assert result["accuracy"] == pytest.approx(sklearn.accuracy_score(y, pred))
    assert result["f1"] == pytest.approx(sklearn.f1_score(y, pred, average="macro"))
    assert result["confusion_matrix"] == sklearn.confusion_matrix(y, pred).tolist()
    assert "confusion matrix" in r.out


def test_same_seed_same_metrics(cli, tmp_path):
    args = ["--quiet", "--epochs", "5", "--set", "train.batch_size=8"]
    for run in ("a", "b"):
        assert cli("train", SPECS / "iris.yaml", "--out", tmp_path / run, *args).code == 0
    assert cli("train", SPECS / "iris.yaml", "--out", tmp_path / "c", *args, "--seed", "1").code == 0
    a, b, c = ((tmp_path / r / "metrics.csv").read_text() for r in "abc")
    assert a == b and a != c
    assert a.splitlines()[0].startswith("epoch,train_loss,train_accuracy,train_f1,val_loss")
    assert len(a.splitlines()) == 6


def test_existing_run_folder_needs_force(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = cli("train", SPECS / "iris.yaml", "--out", out, "--quiet", "--epochs", "1")
    assert r.code == 1 and "--force" in r.err, r
    assert (out / "keep.txt").read_text() == "precious"
    assert cli("train", SPECS / "iris.yaml", "--out", out, "-q", "--epochs", "1", "--force").code == 0


def _csv_spec(tmp_path, rows: list[str], extra: str = "") -> str:
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: csv\ninput: {shape: [2]}\nlayers:\n  - {type: dense, units: 2}\n"
                    "task: {kind: classification}\ndata:\n  source: csv:d.csv\n"
                    f"  split: {{val: 0.0, test: 0.0}}\n{extra}train: {{epochs: 1}}\n")
    return spec


BAD_DATA = [
    ("missing-file", None, "", "data file not found"),
    ("wrong-column", ["a,b,kind", "1,2,x", "3,4,y"], "  target: knd\n", "did you mean 'kind'"),
    ("nan", ["a,b,kind", "1,nan,x", "3,4,y"], "", "d.csv:2"),
    ("not-a-number", ["a,b,kind", "1,abc,x", "3,4,y"], "", "'abc' is not a number"),
]


@pytest.mark.parametrize("case_id,rows,extra,message", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_one_line(cli, tmp_path, case_id, rows, extra, message):
    spec = _csv_spec(tmp_path, rows or [], extra)
    if rows is None:
        (tmp_path / "d.csv").unlink()
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 1, r
    assert message in r.err and len(r.err.strip().splitlines()) == 1, r
    assert "Traceback" not in r.err


def test_csv_training_with_categorical_labels(cli, tmp_path):
    rows = ["a,b,kind"] + [f"{i % 7},{i % 3},{'big' if i % 7 > 3 else 'small'}" for i in range(40)]
    spec = _csv_spec(tmp_path, rows)
    assert cli("train", spec, "--out", tmp_path / "run", "-q").code == 0
    meta = {p.key: p.value for p in onnx.load(tmp_path / "run" / "model.onnx").metadata_props}
    assert json.loads(meta["dlc.labels"]) == ["big", "small"]


def test_bad_model_and_inputs(cli, iris_run, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    r = cli("predict", corrupt, SPECS / "data" / "iris_sample.csv")
    assert r.code == 1 and "not a valid ONNX model" in r.err, r
    r = cli("predict", tmp_path / "missing.onnx", SPECS / "data" / "iris_sample.csv")
    assert r.code == 1 and "model file not found" in r.err, r
    r = cli("predict", iris_run / "model.onnx", SPECS / "data" / "digits_sample.csv")
    assert r.code == 1 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r
    r = cli("predict", iris_run / "model.onnx", SPECS / "data" / "iris_sample.csv",
            "-o", tmp_path / "nope" / "p.csv")
    assert r.code != 0 and "Traceback" not in r.err, r
    plain = tmp_path / "plain.onnx"
    assert cli("compile", SPECS / "iris.yaml", "-o", plain).code == 0
    model = onnx.load(plain)
    del model.metadata_props[:]
    onnx.save(model, plain)
    r = cli("predict", plain, SPECS / "data" / "iris_sample.csv")
    assert r.code == 1 and "not a dlc model" in r.err, r


def test_output_folders(cli, tmp_path):
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "new" / "run", "-q", "--epochs", "1")
    assert r.code == 0 and (tmp_path / "new" / "run" / "model.onnx").is_file(), r
    (tmp_path / "file").write_text("x")
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "file" / "run", "-q")
    assert r.code == 1 and "cannot create the run folder" in r.err, r
    r = cli("compile", SPECS / "iris.yaml", "-o", tmp_path / "no" / "m.onnx")
    assert r.code == 1 and "does not exist" in r.err, r
