"""Data-parallel training (dlc.distributed) through the real CLI under torchrun: 2 worker
processes on this machine, gloo over loopback. `--workers 2` with train.batch_size B trains
like one process with batch 2B: same shuffles, same updates up to summation order."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SPECS, run_dlc

pytest.importorskip("torch.distributed")


def torchrun(*args, workers: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """`dlc ARGS` as `workers` processes started by torchrun (the checkout's dlc in each)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={workers}", "-m", "dlc", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


def weights(run) -> dict[str, np.ndarray]:
    with np.load(run / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files if k.startswith(("param/", "state/"))}


SGD = ["--set", "train.optimizer={type: momentum, lr: 0.05}"]  # scale-sensitive, unlike Adam


@pytest.mark.parametrize("spec,batch,optimizer", [("digits_mlp.yaml", 64, []),
                                                  ("digits_cnn.yaml", 32, SGD)])
def test_two_workers_equal_one_process_with_the_doubled_batch(tmp_path, spec, batch, optimizer):
    common = ["--epochs", "1", "--set", "data.split.val=0", "-q", *optimizer]
    two = torchrun("train", SPECS / spec, "--out", tmp_path / "two", *common,
                   "--set", f"train.batch_size={batch}")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_dlc("train", SPECS / spec, "--out", tmp_path / "one", *common,
                  "--set", f"train.batch_size={2 * batch}")
    assert one.code == 0, one
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys() and a
    for name in a:  # relative in norm: Adam's first steps divide tiny gradients by their own
        # size, so a few entries carry the summation-order noise at 1e-5 of the largest weight
        error = np.linalg.norm(a[name] - b[name]) / np.linalg.norm(a[name])
        print(f"{spec} {name}: relative error {error:.3g}")
        assert error < 1e-5, f"{name}: relative error {error:.3g}"


def test_resume_with_another_worker_count_says_so(tmp_path):
    args = ["--epochs", "1", "--set", "data.split.val=0", "-q"]
    r = torchrun("train", SPECS / "iris.yaml", "--out", tmp_path / "run", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun("train", "--resume", tmp_path / "run", "--epochs", "2", workers=3)
    assert r.returncode != 0
    assert "trained with 2 worker(s)" in r.stderr and "--workers 2" in r.stderr, r.stderr[-2000:]
    r = torchrun("train", "--resume", tmp_path / "run", "--epochs", "2", "-q")
    assert r.returncode == 0, r.stderr[-3000:]
