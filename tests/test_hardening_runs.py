"""Issue 15, the run side: run folders (--force, lock, names, damage), non-finite results,
checkpoint claims, failed writes, signals, what a resume changed, file modes. Through the CLI."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import onnx
import pytest
import yaml
from conftest import ROOT, SPECS, interrupt_in_epoch
from onnx import numpy_helper

IRIS = SPECS / "iris.yaml"
FAST = ["-q", "--set", "train.batch_size=32"]


def _strict_json(path):
    """json.loads that refuses NaN/Infinity, as every other JSON reader does."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _meta(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["meta"].tobytes())


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _one_error_line(r, code=1):
    lines = r.err.strip().splitlines()
    assert r.code == code and lines and lines[-1].startswith("error: "), r
    assert "Traceback" not in r.err and "unexpected error" not in r.err, r
    return lines[-1]


# ---- 2 / 8: a 1-sample BatchNorm batch; a model that is not finite is never written as good ----
def test_batchnorm_with_a_last_batch_of_one_trains_a_finite_model(cli, tmp_path):
    out = tmp_path / "bn"  # 105 training rows, batch 8: the last batch holds one sample
    r = cli("train", IRIS, "--set", "train.batch_size=8", "--set", "layers.1={type: batchnorm}",
            "--out", out, "-q", "--epochs", "3")
    assert r.code == 0, r
    summary = _strict_json(out / "summary.json")
    assert all(np.isfinite(v) for v in summary["test"].values())
    assert all(np.isfinite(w).all() for w in _weights(out / "model.onnx").values())


def test_a_model_that_is_not_finite_is_not_written(cli, tmp_path, monkeypatch):
    from dlc.train.trainer import Trainer

    real = Trainer.final_params

    def poisoned(self):  # what a NaN running variance did: finite losses, a NaN buffer
        params = dict(real(self))
        name = next(iter(params))
        params[name] = np.full_like(params[name], np.nan)
        return params

    monkeypatch.setattr(Trainer, "final_params", poisoned)
    out = tmp_path / "nan"
    r = cli("train", IRIS, "--out", out, "--epochs", "1", *FAST)
    line = _one_error_line(r)
    assert "not finite" in line or "NaN" in line, line
    assert not (out / "model.onnx").exists()
    summary = _strict_json(out / "summary.json")  # valid JSON: null where a value was NaN
    assert "NaN" in summary["error"] and summary["test"]["loss"] is None


# ---- 3: --force starts from an empty run folder ------------------------------------------------
def test_force_leaves_nothing_of_the_old_run(cli, tmp_path):
    out = tmp_path / "run"
    keep = ["--set", "train.checkpoint={every: 1, keep: 3}"]
    assert cli("train", IRIS, "--out", out, "--epochs", "5", *keep, *FAST).code == 0
    (out / "notes.txt").write_text("mine")
    assert cli("train", IRIS, "--out", out, "--epochs", "2", "--force", *keep, *FAST).code == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch-*")) == \
        ["epoch-0001.npz", "epoch-0002.npz"]
    assert _meta(out / "checkpoint.npz")["epoch"] == 2
    assert (out / "notes.txt").read_text() == "mine"  # not dlc's: kept
    # a run B that diverges at once holds its own epoch 0, never A's checkpoint
    r = cli("train", IRIS, "--out", out, "--force", "--epochs", "3", *FAST,
            "--set", "train.optimizer={type: sgd, lr: 1.0e+30}")
    line = _one_error_line(r)
    assert f"the last good checkpoint (epoch 0) is {out}/checkpoint.npz" in line, line
    meta = _meta(out / "checkpoint.npz")
    assert meta["epoch"] == 0 and meta["history"] == []
    assert not list((out / "checkpoints").glob("epoch-*"))


# ---- 4: one training per folder; unique default folders -----------------------------------------
def test_a_locked_run_folder_is_refused_naming_the_owner(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".dlc.lock", os.O_RDWR | os.O_CREAT)
    try:  # what a running training holds (flock conflicts across open files, in one process too)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        line = _one_error_line(cli("train", IRIS, "--out", out, "--force", "--epochs", "1", *FAST))
        assert "in use by another dlc training (pid 4242)" in line, line
        assert [p.name for p in out.iterdir()] == [".dlc.lock"]
    finally:
        os.close(fd)
    assert cli("train", IRIS, "--out", out, "--epochs", "1", *FAST).code == 0  # lock released


def test_default_run_folders_are_unique_within_a_second(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    now = datetime.now(timezone.utc)
    for s in range(4):  # runs started in this second (and the next ones) took these names
        taken = tmp_path / "runs" / "iris" / (now + timedelta(seconds=s)).strftime("%Y%m%d-%H%M%S")
        taken.mkdir(parents=True)
        (taken / "model.onnx").write_text("another run's")
    r = cli("train", IRIS, "--epochs", "1", *FAST)
    assert r.code == 0, r
    made = [p for p in (tmp_path / "runs" / "iris").iterdir() if (p / "summary.json").exists()]
    assert len(made) == 1 and made[0].name.rsplit("-", 1)[-1] == "2", made


# ---- 7: what the checkpoint holds is what the message says --------------------------------------
def test_interrupt_before_the_first_checkpoint_says_what_is_true(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupt_in_epoch(monkeypatch, 3)
    r = cli("train", IRIS, "--out", out, "--epochs", "10", *FAST,
            "--set", "train.checkpoint.every=5")
    line = _one_error_line(r, 130)
    assert "checkpoint.npz holds epoch 0" in line, line
    assert _meta(out / "checkpoint.npz")["epoch"] == 0  # the initial weights, resumable


# ---- 11: failed writes are one line; the old checkpoint stays ----------------------------------
@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("iris") / "run"
    train(load_spec(IRIS, ["train.epochs=3", "train.batch_size=32"]), str(out), quiet=True)
    return out


@pytest.mark.parametrize("command", ["predict", "evaluate", "compile"])
def test_output_naming_a_folder_is_one_line(cli, iris_run, tmp_path, command):
    args = {"predict": ["predict", iris_run / "model.onnx", SPECS / "data" / "iris_sample.csv"],
            "evaluate": ["evaluate", iris_run / "model.onnx", "--data", "builtin:iris"],
            "compile": ["compile", IRIS]}[command]
    folder = tmp_path / {"predict": "p.csv", "evaluate": "m.json", "compile": "m.onnx"}[command]
    folder.mkdir()
    line = _one_error_line(cli(*args, "-o", folder))
    assert f"cannot write {folder}: it is a folder" in line, line


def test_disk_full_during_training_keeps_the_checkpoint(cli, tmp_path, monkeypatch):
    import dlc.files.atomic

    out, real = tmp_path / "run", os.fsync

    def full_at_epoch_3(fd):  # ENOSPC on the checkpoint after epoch 3 (metrics.csv: 2 epochs)
        metrics = out / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) == 3:
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(dlc.files.atomic.os, "fsync", full_at_epoch_3)
    line = _one_error_line(cli("train", IRIS, "--out", out, "--epochs", "6", *FAST))
    assert "No space left on device" in line and f"resume with: dlc train --resume {out}" in line
    assert "checkpoint.npz holds epoch 2" in line, line
    assert _meta(out / "checkpoint.npz")["epoch"] == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_run_folder_fails_before_training(tmp_path):
    import resource

    def tiny_files():  # `ulimit -f`: every write past 1 KB fails (EFBIG; Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dlc", "train", str(IRIS), "--out", str(out),
                           "-q"], capture_output=True, text=True, preexec_fn=tiny_files,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot write") and "File too large" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "epoch" not in proc.stderr


# ---- 12: a damaged run folder is one line on --resume ------------------------------------------
def _damage_meta(change):
    def damage(run):
        with np.load(run / "checkpoint.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays["meta"].tobytes())
        change(meta, arrays)
        if "meta" in arrays:
            value = arrays["meta"] if isinstance(arrays["meta"], list) else meta
            arrays["meta"] = np.frombuffer(json.dumps(value).encode(), np.uint8)
        np.savez(run / "checkpoint.npz", **arrays)
    return damage


DAMAGE = {
    "run.json not JSON": lambda run: (run / "run.json").write_text("{nope"),
    "run.json a list": lambda run: (run / "run.json").write_text("[1, 2]"),
    "checkpoint truncated": lambda run: (run / "checkpoint.npz").write_bytes(
        (run / "checkpoint.npz").read_bytes()[:500]),
    "no meta": _damage_meta(lambda meta, arrays: arrays.pop("meta")),
    "bad rng": _damage_meta(lambda meta, arrays: meta.update(rng={"bit_generator": "nope"})),
    "string epoch": _damage_meta(lambda meta, arrays: meta.update(epoch="3")),
    "string history": _damage_meta(lambda meta, arrays: meta.update(history="abc")),
    "history of strings": _damage_meta(lambda meta, arrays: meta.update(history=[{"a": "b"}])),
    "meta a list": _damage_meta(lambda meta, arrays: arrays.update(meta=[1])),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_resume_of_a_damaged_run_folder_is_one_line(cli, iris_run, tmp_path, case):
    run = tmp_path / "run"
    shutil.copytree(iris_run, run)
    DAMAGE[case](run)
    line = _one_error_line(cli("train", "--resume", run, "-q", "--epochs", "4"))
    assert str(run) in line, line


# ---- 17: SIGTERM and SIGHUP stop training like Ctrl-C -------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path, signum):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dlc", "train", str(IRIS), "--out", str(out),
                             "-q", "--epochs", "100000"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline:  # an epoch is done
        time.sleep(0.05)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in err and f"resume with: dlc train --resume {out}" in err, err
    held = int(err.split("checkpoint.npz holds epoch ")[1].split(";")[0])
    assert _meta(out / "checkpoint.npz")["epoch"] == held >= 1


# ---- 18: a resume records what it changed, and says when it has nothing to do ------------------
def test_resume_records_its_overrides(cli, iris_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(iris_run, run)
    r = cli("train", "--resume", run, "-q", "--epochs", "5", "--set", "train.optimizer.lr=0.01")
    assert r.code == 0, r
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    assert spec["train"]["optimizer"]["lr"] == 0.01 and spec["train"]["epochs"] == 5
    meta = {p.key: p.value for p in onnx.load(run / "model.onnx").metadata_props}
    assert yaml.safe_load(meta["dlc.spec"]) == json.loads(meta["dlc.spec_resolved"]) == spec
    resumes = _strict_json(run / "run.json")["resumes"]
    assert resumes == [{"epoch": 3, "overrides": ["train.optimizer.lr=0.01", "train.epochs=5"]}]


def test_resume_with_nothing_to_do_says_so(cli, iris_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(iris_run, run)
    before = (run / "model.onnx").read_bytes()
    r = cli("train", "--resume", run, "--epochs", "2")
    assert r.code == 0 and "nothing to do" in r.err and "3 epochs" in r.err, r
    assert (run / "model.onnx").read_bytes() == before
    assert (run / "spec.yaml").read_text() == (iris_run / "spec.yaml").read_text()


# ---- 19: files dlc writes honour the umask -----------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(cli, iris_run, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = tmp_path / "pred.csv"
        assert cli("predict", iris_run / "model.onnx", SPECS / "data" / "iris_sample.csv",
                   "-o", out).code == 0
        assert cli("compile", IRIS, "-o", tmp_path / "m.onnx").code == 0
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == mode
    assert ((tmp_path / "m.onnx").stat().st_mode & 0o777) == mode


# ---- 6: an optimizer field its type does not use is refused, never ignored ---------------------
def test_sgd_with_momentum_is_refused_with_the_right_type(cli, tmp_path):
    r = cli("train", IRIS, "--set", "train.optimizer={type: sgd, momentum: 0.9}", "-q",
            "--out", tmp_path / "run")
    assert r.code == 2, r
    assert "train.optimizer.momentum: optimizer sgd has no momentum; did you mean type: " \
           "momentum or nesterov?" in r.err, r


def test_models_and_run_folders_of_older_versions_still_load(cli, iris_run, tmp_path):
    """dlc used to fill every optimizer field in for every type; those never acted, and a model
    or run folder holding them is not corrupt."""
    old = {"momentum": 0.9, "alpha": 0.99}
    proto = onnx.load(iris_run / "model.onnx")
    for p in proto.metadata_props:
        if p.key == "dlc.spec_resolved":
            spec = json.loads(p.value)
            spec["train"]["optimizer"].update(old)
            p.value = json.dumps(spec)
    onnx.save(proto, tmp_path / "old.onnx")
    r = cli("predict", tmp_path / "old.onnx", SPECS / "data" / "iris_sample.csv")
    assert r.code == 0 and "label" in r.out, r
    run = tmp_path / "run"
    shutil.copytree(iris_run, run)
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    spec["train"]["optimizer"].update(old)
    (run / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert cli("train", "--resume", run, "-q", "--epochs", "4").code == 0


# ---- 9: evaluate on the model's own source scores the split it was tested on -------------------
def test_evaluate_on_the_own_source_scores_the_test_split(cli, iris_run, tmp_path):
    out = tmp_path / "m.json"
    r = cli("evaluate", iris_run / "model.onnx", "--data", "builtin:iris", "-o", out)
    assert r.code == 0, r
    result = _strict_json(out)
    summary = _strict_json(iris_run / "summary.json")
    assert result["samples"] == 30 and result["accuracy"] == pytest.approx(
        summary["test"]["accuracy"])  # the rows training held out, not all 150
    assert r.out.startswith("scored: the test split of builtin:iris (30 of 150 rows; the split "
                            "the model was tested on)"), r
    r = cli("evaluate", iris_run / "model.onnx", "--data", "builtin:iris", "--split", "val")
    assert r.code == 0 and "samples: 15" in r.out and "the val split" in r.out, r
    r = cli("evaluate", iris_run / "model.onnx", "--data", "builtin:iris", "--split", "all")
    assert r.code == 0 and "samples: 150" in r.out and "all 150 rows" in r.out, r
    r = cli("evaluate", iris_run / "model.onnx", "--data", "builtin:wine", "--split", "test")
    assert r.code == 2 and "use --split all" in r.err, r


def test_evaluate_knows_its_own_data_file_however_it_is_named(cli, tmp_path, monkeypatch):
    """A file source is the model's own however --data names it: the spec's csv:data/... from
    the spec's folder, a bare path from the repository, an absolute csv:PATH; its test split is
    scored (only the first was: the others scored every row, training rows too). A copy of the
    file is another source: every row."""
    run = tmp_path / "run"
    r = cli("train", SPECS / "penguins_columns.yaml", "--out", run, "-q", "--epochs", "2")
    assert r.code == 0, r
    tested = _strict_json(run / "summary.json")["test"]["accuracy"]
    data = SPECS / "data" / "penguins_full.csv"
    for cwd, source in ((SPECS, "csv:data/penguins_full.csv"),
                        (ROOT, "specs/data/penguins_full.csv"), (tmp_path, f"csv:{data}")):
        monkeypatch.chdir(cwd)
        r = cli("evaluate", run / "model.onnx", "--data", source, "-o", tmp_path / "m.json")
        assert r.code == 0 and "(52 of 344 rows; the split the model was tested on)" in r.out, r
        assert _strict_json(tmp_path / "m.json")["accuracy"] == pytest.approx(tested)
    shutil.copy(data, tmp_path / "copy.csv")
    r = cli("evaluate", run / "model.onnx", "--data", tmp_path / "copy.csv")
    assert r.code == 0 and r.out.startswith(f"scored: all 344 rows of {tmp_path}"), r


# ---- 5: task.labels name exactly the target's values -------------------------------------------
def _labelled(tmp_path, cells, labels):
    rows = ["a,b,stance"] + [f"{i % 7},{i % 3},{cells[i % len(cells)]}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    spec = tmp_path / "s.yaml"
    units = len(labels) if labels else len(set(cells))
    spec.write_text(f"dlc: 1\nname: csv\ninput: {{shape: [2]}}\nlayers:\n  - {{type: dense, "
                    f"units: {units}}}\ntask: {{kind: classification"
                    f"{', labels: ' + json.dumps(labels) if labels else ''}}}\ndata:\n"
                    "  source: csv:d.csv\n  split: {val: 0.0, test: 0.0}\ntrain: {epochs: 1}\n")
    return spec


def test_a_typo_in_task_labels_is_an_error_naming_it(cli, tmp_path):
    spec = _labelled(tmp_path, ["independent", "aligned"], ["independant", "aligned"])
    line = _one_error_line(cli("train", spec, "--out", tmp_path / "run", "-q"))
    assert "the data has 'independent', not in task.labels" in line, line
    assert "task.labels has 'independant', not in the data" in line, line
    assert not (tmp_path / "run").exists()


def test_task_labels_in_another_order_than_sorted_are_kept(cli, tmp_path):
    spec = _labelled(tmp_path, ["independent", "aligned"], ["independent", "aligned"])
    assert cli("train", spec, "--out", tmp_path / "run", "-q").code == 0
    r = cli("predict", tmp_path / "run" / "model.onnx", tmp_path / "d.csv")
    assert r.code == 0 and r.out.splitlines()[0].endswith("p_independent,p_aligned"), r


def test_duplicate_task_labels_are_a_spec_error(cli, tmp_path):
    spec = _labelled(tmp_path, ["x", "y"], ["x", "y", "x"])
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 2 and "task.labels: items must be unique" in r.err, r


def test_one_class_written_two_ways_is_an_error(cli, tmp_path):
    spec = _labelled(tmp_path, ["0", "1", "1e0"], None)
    line = _one_error_line(cli("train", spec, "--out", tmp_path / "run", "-q"))
    assert "'1e0' and '1' are both class 1" in line, line
