"""The rules of a data-parallel run that the doubled-batch equality alone does not show, each on
2 workers through the real CLI: a divergence caused by one worker's rows is decided on every
worker alike, batchnorm statistics are the workers' average at checkpoints (here under SLURM's
environment), `train.distributed` in the spec launches as the flags do, and a resume as its
run was launched."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import SPECS, run_dlc
from test_distributed import SLURM, needs_torch, start_workers, torchrun, weights

def npz_data(path, x: np.ndarray, seed: int = 0) -> list[str]:
    """iris.yaml's overrides for `x` (and seeded classes of its 3) as its data: every row a
    training row (no split), no normalisation."""
    y = np.random.default_rng(seed).integers(0, 3, len(x))
    np.savez(path, x=x.astype(np.float32), y=y)
    return ["--set", f"data.source=npz:{path}", "--set", "data.normalize=none",
            "--set", "data.split={val: 0, test: 0}"]


@needs_torch
def test_a_divergence_in_one_workers_rows_is_decided_on_every_worker(tmp_path):
    """One row of 1e38s (finite data) makes the step holding it non-finite on the worker that
    has it. The decision comes from the all-reduced loss and gradient norm, so every worker
    decides alike: with on_divergence skip, 2 workers skip the same steps as one process with
    the doubled batch and end with its weights; with stop, both workers stop at the same step
    with the divergence message (neither at a failed all-reduce)."""
    x = np.random.default_rng(1).standard_normal((64, 4))
    x[37] = 1e38
    common = [*npz_data(tmp_path / "bad.npz", x), "--epochs", "2", "-q"]
    skip = ["--set", "train.on_divergence={action: skip}"]
    two = torchrun("train", SPECS / "iris.yaml", "--out", tmp_path / "two", *common, *skip,
                   "--set", "train.batch_size=8")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "one", *common, *skip,
                  "--set", "train.batch_size=16")
    assert one.code == 0, one
    summaries = [(tmp_path / run / "summary.json").read_text() for run in ("one", "two")]
    assert all('"skipped_steps": 2' in s for s in summaries), summaries  # once an epoch
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        assert np.linalg.norm(a[name] - b[name]) <= 1e-5 * np.linalg.norm(a[name]), name
    procs = start_workers(["train", SPECS / "iris.yaml", "--out", tmp_path / "stop", *common,
                           "--set", "train.batch_size=8"])
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], errors
    steps = [re.findall(r"^error: training diverged at epoch 1, step (\d+): ", e, re.M)
             for e in errors]
    assert len(steps[0]) == 1 and steps[0] == steps[1], errors


@needs_torch
def test_batchnorm_statistics_are_the_workers_average_under_slurm(tmp_path):
    """Workers started with SLURM's variables (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID;
    MASTER_ADDR/PORT exported). Batchnorm first, on the raw input: its running mean follows the
    data alone, and the average of the workers' running means (equal shares of every batch) is
    the running mean of one process with the doubled batch; rank 0's own rows' (were the
    statistics not averaged at the epoch's end) would differ."""
    x = np.random.default_rng(2).normal(5.0, 3.0, (128, 4))
    common = [*npz_data(tmp_path / "data.npz", x), "--epochs", "1", "-q", "--set",
              "layers=[{type: batchnorm, name: bn}, {type: dense, name: out, units: 3}]"]
    procs = start_workers(["train", SPECS / "iris.yaml", "--out", tmp_path / "two", *common,
                           "--set", "train.batch_size=16"], names=SLURM)
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    r = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "one", *common,
                "--set", "train.batch_size=32")
    assert r.code == 0, r
    with np.load(tmp_path / "one" / "checkpoint.npz") as one, \
            np.load(tmp_path / "two" / "checkpoint.npz") as two:
        name = "param/bn.running_mean"
        assert np.abs(one[name]).min() > 1  # the data's means (about 5), not the initial 0
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5)


@pytest.fixture
def launches(monkeypatch, tmp_path):
    """Ray Train's launch replaced by a stub that records its arguments: (the calls, the run
    folder the stub returns, its summary.json empty)."""
    import dlc.distributed.launch

    calls, done = [], tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text("{}")
    monkeypatch.setattr(dlc.distributed.launch, "launch", lambda *args: calls.append(args) or done)
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):  # not under a launcher
        monkeypatch.delenv(name, raising=False)
    return calls, done


def test_the_spec_section_launches_as_the_flags_do(cli, launches, tmp_path):
    """`train.distributed: {workers, address, gpus_per_worker, cpus_per_worker}` hands Ray
    Train's launch the same arguments as `--workers --address --gpus-per-worker
    --cpus-per-worker`; a flag overrides the section (`--workers 1`: one process, no launch)."""
    calls, done = launches
    out = ["--out", tmp_path / "run", "-q"]
    section = ("train.distributed={workers: 3, address: 'ray://head:10001', gpus_per_worker: 1, "
               "cpus_per_worker: 8}")
    for args in (["--set", section], ["--workers", "3", "--address", "ray://head:10001",
                                      "--gpus-per-worker", "1", "--cpus-per-worker", "8"]):
        r = cli("train", SPECS / "iris.yaml", *out, *args)
        assert r.code == 0 and r.out == f"run: {done}\n", r
    assert len(calls) == 2, calls
    same = [(*c[:1], *c[2:]) for c in calls]  # all but the overrides (the section is one)
    assert same[0] == same[1], calls
    assert calls[0][-4:] == (3, "ray://head:10001", 1, 8)
    r = cli("train", SPECS / "iris.yaml", *out, "--set", section, "--workers", "1",
            "--epochs", "1")
    assert r.code == 0 and len(calls) == 2, r


def test_a_resume_is_launched_as_its_run_was(cli, launches, tmp_path):
    """`dlc train --resume DIR` of a Ray run: the worker count, Ray's address and the GPUs and
    CPUs per worker from run.json (a resumed cluster or GPU run went to a local Ray on CPUs: only the
    count was kept); a flag still overrides them."""
    calls, _ = launches
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"workers": 2, "address": "ray://head:10001", '
                                  '"gpus_per_worker": 1, "cpus_per_worker": 16}')
    assert cli("train", "--resume", run).code == 0
    assert cli("train", "--resume", run, "--address", "auto", "--cpus-per-worker", "4").code == 0
    assert [c[-4:] for c in calls] == [(2, "ray://head:10001", 1, 16), (2, "auto", 1, 4)], calls


def test_each_local_ray_worker_gets_its_share_of_the_cpus(monkeypatch):
    """Ray sets a worker's OMP_NUM_THREADS to the CPUs it was given, and dlc's sessions run
    that many threads: on a Ray of dlc's own, N workers split the machine's usable CPUs (at
    least 1 each) instead of each taking all of them; on a cluster, Ray's default of 1."""
    import dlc.distributed.launch as launch

    monkeypatch.setattr(launch, "usable_cpus", lambda: 8)
    assert [launch.worker_cpus(n, local=True) for n in (1, 2, 3, 8, 12)] == [8, 4, 2, 1, 1]
    assert launch.worker_cpus(2, local=False) == 1
