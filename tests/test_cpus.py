"""onnxruntime's default thread count: OMP_NUM_THREADS, else the CPUs the process may use
(affinity, capped by a cgroup CPU quota), never simply os.cpu_count()."""

import json
import os
from pathlib import Path

import pytest

from conftest import SPECS, trained_model
from dlc.errors import UsageError
from dlc.runtime.cpus import cgroup_quota, default_threads


def _files(root: Path, files: dict) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("value, threads", [("3", 3), ("4,2", 4), (" 1 ", 1)])
def test_omp_num_threads_decides(value, threads, tmp_path):
    assert default_threads({"OMP_NUM_THREADS": value}, tmp_path, "0::/") == threads


@pytest.mark.parametrize("value", ["0", "-2", "many", "2.5"])
def test_a_bad_omp_num_threads_is_one_usage_line(value, tmp_path):
    with pytest.raises(UsageError, match=f"OMP_NUM_THREADS must be a positive whole number, "
                                         f"got '{value}'"):
        default_threads({"OMP_NUM_THREADS": value}, tmp_path, "0::/")


def test_without_a_quota_the_affinity_counts(tmp_path):
    """Not os.cpu_count(): taskset or a cpuset may leave fewer CPUs."""
    assert default_threads({}, tmp_path, "0::/") == len(os.sched_getaffinity(0))


def test_cgroup_v2_quota_caps_the_threads_tightest_ancestor_first(tmp_path):
    root = _files(tmp_path, {"pod/cpu.max": "50000 100000\n",  # half a CPU: 1 thread
                             "pod/job/cpu.max": "max 100000\n"})
    assert cgroup_quota(root, "0::/pod/job\n") == 0.5
    assert default_threads({}, root, "0::/pod/job\n") == 1


def test_cgroup_v2_quota_rounds_up(tmp_path):
    root = _files(tmp_path, {"cpu.max": "150000 100000"})
    assert cgroup_quota(root, "0::/") == 1.5
    assert default_threads({}, root, "0::/") == min(2, len(os.sched_getaffinity(0)))


def test_cgroup_v1_quota(tmp_path):
    root = _files(tmp_path, {"cpu,cpuacct/x/cpu.cfs_quota_us": "100000",
                             "cpu,cpuacct/x/cpu.cfs_period_us": "100000",
                             "cpu,cpuacct/cpu.cfs_quota_us": "-1",
                             "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    membership = "9:name=systemd:/\n4:memory:/x\n3:cpu,cpuacct:/x\n0::/\n"
    assert cgroup_quota(root, membership) == 1.0
    assert default_threads({}, root, membership) == 1


@pytest.mark.parametrize("files", [{}, {"cpu.max": "max 100000"}, {"cpu.max": "garbage"},
                                   {"cpu/cpu.cfs_quota_us": "-1",
                                    "cpu/cpu.cfs_period_us": "100000"}])
def test_no_quota(files, tmp_path):
    assert cgroup_quota(_files(tmp_path, files), "1:cpu:/\n0::/\n") is None


def test_sessions_take_the_default(monkeypatch):
    from dlc.runtime.session import session_options

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert session_options().intra_op_num_threads == 1
    assert session_options(2).intra_op_num_threads == 2  # a command's own count wins


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trained_model(tmp_path_factory, "iris.yaml", "train.epochs=1")


def test_cli_reports_a_bad_omp_num_threads_in_one_line(cli, monkeypatch, model):
    rows = SPECS / "data" / "iris_sample.csv"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli("predict", model, rows).code == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "all")
    r = cli("predict", model, rows)
    assert r.code == 2, r.err
    assert r.err.strip().splitlines() == [
        "error: OMP_NUM_THREADS must be a positive whole number, got 'all'"]


def test_a_run_records_and_uses_the_threads(cli, monkeypatch, tmp_path):
    """summary.json says how many threads the samples/s were measured on: OMP_NUM_THREADS when
    set, else every usable CPU."""
    from dlc.runtime.cpus import usable_cpus

    for omp, threads in (("1", 1), (None, usable_cpus())):
        if omp is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", omp)
        out = tmp_path / f"run-{omp}"
        assert cli("train", SPECS / "iris.yaml", "--out", out, "--epochs", "1", "-q").code == 0
        assert json.loads((out / "summary.json").read_text())["threads"] == threads
