"""Run lifecycle: interrupt and resume to the same result, kill -9 leaves a loadable checkpoint,
divergence stops with the last good checkpoint kept."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from conftest import SPECS, interrupt_in_epoch
from onnx import numpy_helper

ARGS = ["-q", "--epochs", "8", "--set", "train.schedule.type=cosine",
        "--set", "train.schedule.warmup_epochs=1"]


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


@pytest.mark.parametrize("name", ["iris", "penguins_multitask"])  # one output; several
def test_interrupt_then_resume_equals_uninterrupted(cli, tmp_path, monkeypatch, name):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert cli("train", SPECS / f"{name}.yaml", "--out", straight, *ARGS).code == 0
    restore = interrupt_in_epoch(monkeypatch, 5)
    r = cli("train", SPECS / f"{name}.yaml", "--out", broken, *ARGS)
    assert r.code == 130 and f"resume with: dlc train --resume {broken}" in r.err, r
    assert len((broken / "metrics.csv").read_text().splitlines()) == 5  # header + 4 epochs
    restore()
    r = cli("train", "--resume", broken, "-q")
    assert r.code == 0, r
    assert (broken / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    a, b = _weights(straight / "model.onnx"), _weights(broken / "model.onnx")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_kill_9_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "dlc", "train", str(SPECS / "iris.yaml"),
                                 "--out", str(out), "-q", "--epochs", "100000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (out / "checkpoint.npz").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
        assert meta["epoch"] >= 1
        leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) <= 1  # at most the file being written when killed
        subprocess.run([sys.executable, "-m", "dlc", "train", "--resume", str(out), "-q",
                        "--epochs", str(meta["epoch"] + 1)], check=True, capture_output=True)
        assert (out / "model.onnx").is_file()


def test_divergence_stops_and_keeps_last_good_checkpoint(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", SPECS / "diabetes.yaml", "--out", out, "-q", "--epochs", "2").code == 0
    before = (out / "checkpoint.npz").read_bytes()
    r = cli("train", "--resume", out, "-q", "--epochs", "4", "--set", "train.optimizer.type=sgd",
            "--set", "train.optimizer.lr=1e30")
    assert r.code == 1, r
    assert "training diverged at epoch 3, step" in r.err and "epoch 2" in r.err, r
    assert (out / "checkpoint.npz").read_bytes() == before


def test_checkpoint_every_keep_and_best(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", SPECS / "iris.yaml", "--out", out, "-q", "--epochs", "7",
            "--set", "train.checkpoint={every: 2, keep: 2, best: true}")
    assert r.code == 0, r
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["best.npz", "epoch-0006.npz", "epoch-0007.npz"], kept
    with np.load(out / "checkpoint.npz") as z:
        assert json.loads(z["meta"].tobytes())["epoch"] == 7
    with np.load(out / "checkpoints" / "best.npz") as z:
        meta = json.loads(z["meta"].tobytes())
    assert meta["best"]["epoch"] == meta["epoch"]


def test_divergence_skip_drops_only_bad_steps(cli, tmp_path, monkeypatch):
    from dlc.runtime.stepper import BoundStepper

    run, calls = BoundStepper.run, []

    def every_third_step_nan(self, feeds):
        out = run(self, feeds)
        calls.append(1)
        return {**out, "loss": np.float32("nan")} if len(calls) % 3 == 0 else out

    monkeypatch.setattr(BoundStepper, "run", every_third_step_nan)
    r = cli("train", SPECS / "diabetes.yaml", "--out", tmp_path / "skip", "-q", "--epochs", "2",
            "--set", "train.on_divergence.action=skip")
    assert r.code == 0, r
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["skipped_steps"] == len(calls) // 3 > 0
    assert np.isfinite(summary["test"]["r2"])
    calls.clear()
    r = cli("train", SPECS / "diabetes.yaml", "--out", tmp_path / "stop", "-q", "--epochs", "2")
    assert r.code == 1 and "training diverged at epoch 1, step 3: loss nan" in r.err, r


def test_divergence_retry_halves_the_learning_rate(cli, tmp_path):
    common = ["-q", "--epochs", "2", "--set", "train.optimizer.type=sgd"]
    r = cli("train", SPECS / "diabetes.yaml", "--out", tmp_path / "retry", *common,
            "--set", "train.optimizer.lr=1e30", "--set", "train.on_divergence={action: retry, "
            "retries: 2}")
    assert r.code == 1 and "training diverged" in r.err, r
    r = cli("train", SPECS / "diabetes.yaml", "--out", tmp_path / "retry2", *common,
            "--set", "train.optimizer.lr=0.3", "--set", "train.on_divergence={action: retry, "
            "retries: 8}")
    assert r.code == 0, r
