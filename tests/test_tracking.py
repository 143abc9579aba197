"""Experiment tracking (train.tracking: {backend: mlflow}), read back with MLflow's own client."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys

import onnx
import pytest
from conftest import ROOT, SPECS, interrupt_in_epoch

from dlc.errors import SpecError
from dlc.train.tracking import params_of
from dlc.model.spec import load_spec_text

MLFLOW = ("--set", "train.tracking.backend=mlflow")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh file: store; the environment as a user's (dlc itself allows MLflow's file store).
    Tests that read runs back skip without MLflow; the others run either way."""
    pytest.importorskip("mlflow")
    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return (tmp_path / "store").as_uri()


def only_run(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} at {uri}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return client, runs[0]


def test_iris_run_logged(cli, tmp_path, store):
    out = tmp_path / "run"
    r = cli("train", SPECS / "iris.yaml", "--out", out, "-q", "--set", "train.epochs=3", *MLFLOW,
            "--set", f"train.tracking.uri={store}")
    assert r.code == 0, r
    client, run = only_run(store, "iris")
    info, data = run.info, run.data
    assert info.status == "FINISHED" and info.run_name == "run"
    assert data.params["train.optimizer.lr"] == "0.01"
    assert data.params["train.optimizer.type"] == "adam"
    assert data.params["train.epochs"] == "3" and data.params["train.batch_size"] == "16"
    assert data.params["layers.0.units"] == "32" and data.params["input.shape"] == "[4]"
    history = client.get_metric_history(info.run_id, "val_loss")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
        pytest.approx([float(row["val_loss"]) for row in rows], rel=1e-6)
    assert {"test_loss", "test_accuracy", "test_f1", "final_val_loss",
            "train_loss", "lr"} <= set(data.metrics)
    model = onnx.load(out / "model.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert data.tags["dlc.spec_sha256"] == meta["dlc.spec_sha256"] == \
        hashlib.sha256((SPECS / "iris.yaml").read_text().encode()).hexdigest()
    assert data.tags["dlc.version"] == meta["dlc.version"]
    artifacts = {a.path: a.file_size for a in client.list_artifacts(info.run_id)}
    for name in ("model.onnx", "metrics.csv", "spec.yaml", "summary.json"):
        assert artifacts[name] == (out / name).stat().st_size, name


def test_diverging_run_is_failed(cli, tmp_path, store):
    r = cli("train", SPECS / "diabetes.yaml", "--out", tmp_path / "run", "-q", *MLFLOW,
            "--set", f"train.tracking.uri={store}", "--set", "train.tracking.experiment=boom",
            "--set", "train.epochs=3", "--set", "train.optimizer.type=sgd",
            "--set", "train.optimizer.lr=1e30")
    assert r.code == 1 and "diverged" in r.err, r
    _, run = only_run(store, "boom")
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["dlc.error"]


def test_interrupted_run_is_killed(cli, tmp_path, store, monkeypatch):
    interrupt_in_epoch(monkeypatch, 2)
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "-q", *MLFLOW,
            "--set", f"train.tracking.uri={store}", "--set", "train.epochs=3")
    assert r.code == 130, r
    client, run = only_run(store, "iris")
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.csv", "spec.yaml"}


def test_resume_logs_whole_history(cli, tmp_path, store):
    out = tmp_path / "run"
    args = ("-q", *MLFLOW, "--set", f"train.tracking.uri={store}")
    r = cli("train", SPECS / "iris.yaml", "--out", out, "--set", "train.epochs=2", *args)
    assert r.code == 0, r
    r = cli("train", "--resume", out, "--epochs", "3", "-q")
    assert r.code == 0, r
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("iris").experiment_id])
    resumed = [run for run in runs if "dlc.resumed_after_epoch" in run.data.tags]
    assert len(runs) == 2 and len(resumed) == 1
    steps = sorted(m.step for m in client.get_metric_history(resumed[0].info.run_id, "val_loss"))
    assert steps == [1, 2, 3] and resumed[0].info.status == "FINISHED"


def test_default_store_is_mlruns_of_working_folder(cli, tmp_path, store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("train", SPECS / "iris.yaml", "--out", "run", "-q", "--set", "train.epochs=1", *MLFLOW,
            "--set", "train.tracking.experiment=local")
    assert r.code == 0, r
    _, run = only_run((tmp_path / "mlruns").as_uri(), "local")
    assert run.info.status == "FINISHED"


def test_tracking_none_writes_no_store(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("train", SPECS / "iris.yaml", "--out", "run", "-q", "--set", "train.epochs=1")
    assert r.code == 0, r
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]



def test_validate_does_not_import_mlflow(tmp_path):
    spec = tmp_path / "tracked.yaml"
    spec.write_text((SPECS / "iris.yaml").read_text() + "  tracking: {backend: mlflow}\n")
    code = ("import sys; from dlc.cli import main; sys.argv = ['dlc', 'validate', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(spec)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert "exit 0" in out.stdout or "exit" not in out.stdout, out
    assert out.stdout.strip().splitlines()[-1] == "False", out


def test_schema_rejects_unknown_backend_and_keys():
    base = "dlc: 1\nname: t\ninput: {shape: [2]}\nlayers: [{type: dense, units: 1}]\n" \
           "task: {kind: regression}\ntrain:\n  tracking: "
    assert load_spec_text(base + "{backend: mlflow}").data["train"]["tracking"] == \
        {"backend": "mlflow"}
    assert load_spec_text(base + "{}").data["train"]["tracking"] == {"backend": "none"}
    for bad in ("{backend: wandb}", "{backend: mlflow, url: x}", "mlflow"):
        with pytest.raises(SpecError):
            load_spec_text(base + bad)


def test_params_are_dotted_and_cut_to_mlflow_limits():
    params = params_of({"a": {"b": [1, 2], "c": "x" * 9000}, "layers": [{"units": 3}],
                        "bad key!": {}})
    assert params["a.b"] == "[1, 2]" and params["layers.0.units"] == "3"
    assert len(params["a.c"]) == 6000 and params["a.c"].endswith("...")
    assert params["bad key_"] == "{}"
