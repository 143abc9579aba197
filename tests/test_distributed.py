"""Data-parallel training (dlc.distributed) through the real CLI under torchrun: 2 worker
processes on this machine, gloo over loopback. `--workers 2` with train.batch_size B trains
like one process with batch 2B: same shuffles, same updates up to summation order."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SPECS, run_dlc

from dlc.train.checkpoint import epoch_of

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="needs torch.distributed: pip install 'dlc[distributed]'")


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
# uneven class weights: the weighted mean's normaliser differs between the workers' rows
WEIGHTED = [*SGD, "--set", "task.class_weights=[0.2, 5, 1, 3, 0.5, 2, 1, 4, 0.3, 1.5]"]
# global-norm clipping, active (test_split_step: digits MLP norms > 0.05): the averaged
# gradient's norm, not each worker's, decides the scale
CLIPPED = [*SGD, "--set", "train.clip_norm=0.05"]


@needs_torch
@pytest.mark.parametrize("spec,batch,options", [("digits_mlp.yaml", 64, []),
                                                ("digits_cnn.yaml", 32, SGD),
                                                ("digits_mlp.yaml", 64, WEIGHTED),
                                                ("digits_mlp.yaml", 64, CLIPPED)],
                         ids=["mlp", "cnn", "mlp-class-weights", "mlp-clipped"])
def test_two_workers_equal_one_process_with_the_doubled_batch(tmp_path, spec, batch, options):
    common = ["--epochs", "1", "--set", "data.split.val=0", "-q", *options]
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
    # rank 0's metrics are the whole global batch's: every worker's loss in the sum (rank 1's
    # once landed beside its slot, leaving stale memory in the loss: 1e24 now and then)
    one, two = (np.genfromtxt(tmp_path / run / "metrics.csv", delimiter=",", names=True)
                for run in ("one", "two"))
    for column in ("train_loss", "train_accuracy"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-5, err_msg=column)


@needs_torch
def test_resume_with_another_worker_count_says_so(tmp_path):
    args = ["--epochs", "1", "--set", "data.split.val=0", "-q"]
    r = torchrun("train", SPECS / "iris.yaml", "--out", tmp_path / "run", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun("train", "--resume", tmp_path / "run", "--epochs", "2", workers=3)
    assert r.returncode != 0
    assert "trained with 2 worker(s)" in r.stderr and "--workers 2" in r.stderr, r.stderr[-2000:]
    r = torchrun("train", "--resume", tmp_path / "run", "--epochs", "2", "-q")
    assert r.returncode == 0, r.stderr[-3000:]


@needs_torch
def test_ray_train_workers_equal_one_process(tmp_path, monkeypatch):
    """`train.distributed: {workers: 3, cpus_per_worker: 2}` in the spec: Ray Train starts the
    workers (a local Ray, with a CPU slot for each even on 2 cores: it waited for a 3rd CPU
    before), gloo between them. Without -q, stdout is dlc's own (the run and its metrics),
    and rank 0's epoch lines reach stderr once each, unprefixed (Ray forwarded them as
    `(RayTrainWorker pid=...) epoch ...`, twice: its print patch logs them again). Each worker
    runs the CPUs Ray gave it (`cpus_per_worker`, which Ray passes on as OMP_NUM_THREADS), not
    every core of the machine."""
    pytest.importorskip("ray.train")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a user's own value would win
    common = ["--epochs", "2", "--set", "data.split.val=0"]
    r = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "three", "--set",
                "train.distributed={workers: 3, cpus_per_worker: 2}", "--set",
                "train.batch_size=8", *common,
                timeout=240)
    assert r.code == 0, r
    assert [line.split(":")[0] for line in r.out.splitlines()] == ["run", "test"], r.out
    assert (tmp_path / "three" / "model.onnx").is_file()  # rank 0 wrote the run folder
    info = json.loads((tmp_path / "three" / "run.json").read_text())  # what a resume reuses
    assert (info["workers"], info["address"], info["gpus_per_worker"],
            info["cpus_per_worker"]) == (3, None, 0, 2), info  # a resume asks Ray alike
    summary = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert summary["threads"] == 2, summary
    epochs = [line for line in r.err.splitlines() if "epoch " in line and "train_loss" in line]
    assert [line.split()[:2] for line in epochs] == [["epoch", "1/2"], ["epoch", "2/2"]], r.err
    r = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "one",
                "--set", "train.batch_size=24", *common, "-q")
    assert r.code == 0, r
    a, b = weights(tmp_path / "one"), weights(tmp_path / "three")
    for name in a:
        assert np.linalg.norm(a[name] - b[name]) / np.linalg.norm(a[name]) < 1e-5, name


@needs_torch
def test_ray_launch_refuses_what_it_cannot_run_before_it_waits(cli, tmp_path):
    """Before any worker starts, one line: a resume with another worker count than the run's
    (Ray would start them all to say so), and more GPUs than this machine's Ray has (Ray Train
    would wait for them for ever)."""
    pytest.importorskip("ray.train")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"workers": 2}')
    r = cli("train", "--resume", run, "--workers", "3")
    assert r.code == 1 and "trained with 2 worker(s)" in r.err and "--workers 2," in r.err, r
    r = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "gpus", "--workers", "2",
                "--gpus-per-worker", "64", "-q", timeout=180)
    assert r.code == 1, r
    assert r.err.startswith("error: data-parallel training failed: --workers 2 "
                            "--gpus-per-worker 64 needs 128 GPUs; this machine's Ray has "), r
    assert len(r.err.strip().splitlines()) == 1, r


TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")  # srun's names for the same


def start_workers(args, workers: int = 2, names=TORCHRUN) -> list[subprocess.Popen]:
    """`dlc ARGS` as processes started here with a launcher's environment (torchrun's or
    SLURM's `names` for rank, world size and local rank; MASTER_ADDR/PORT), so that the test
    knows each worker's pid."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(workers):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore",
               **dict(zip(names, (str(rank), str(workers), str(rank)))),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "dlc", *map(str, args)], env=env,
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


@needs_torch
def test_killing_a_worker_ends_the_run_with_a_resumable_checkpoint(tmp_path):
    run = tmp_path / "run"
    rank0, rank1 = start_workers(["train", SPECS / "digits_cnn.yaml", "--out", run, "--epochs",
                                  "30", "--set", "data.split.val=0", "-q"])
    deadline = time.monotonic() + 60
    while not epoch_of(run / "checkpoint.npz"):
        assert time.monotonic() < deadline and rank0.poll() is None, rank0.communicate()
        time.sleep(0.2)  # rank 0 has written epoch 1's checkpoint: training is under way
    rank1.send_signal(signal.SIGKILL)
    rank1.wait()
    _, err = rank0.communicate(timeout=60)  # no hang: the all-reduce fails, rank 0 stops
    assert rank0.returncode == 1, err
    lines = err.strip().splitlines()
    print(lines[0])
    assert len(lines) == 1 and "a worker stopped" in lines[0], err
    assert f"resume with: dlc train --resume {run}" in lines[0], err
    r = torchrun("train", "--resume", run, "--epochs", "2", "-q")
    assert r.returncode == 0, r.stderr[-3000:]


def test_train_distributed_in_the_spec_is_checked_and_read(cli, tmp_path):
    from dlc.commands.train import distributed_config
    from dlc.model.spec import load_spec

    spec = load_spec(SPECS / "iris.yaml", ["train.distributed={workers: 3, address: auto}"])
    cfg = distributed_config(spec, None)
    assert (cfg["workers"], cfg["address"], cfg.get("gpus_per_worker", 0)) == (3, "auto", 0)
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "--set",
            "train.distributed.workers=0")
    assert r.code == 2 and "workers" in r.err, r


@needs_torch
@pytest.mark.parametrize("names", [TORCHRUN, SLURM], ids=["torchrun", "slurm"])
def test_a_launcher_environment_without_master_address_is_one_line(cli, monkeypatch, tmp_path,
                                                                   names):
    """Several workers by the environment (torchrun's or SLURM's names: an `sbatch --ntasks 2`
    script running dlc once sets SLURM_NTASKS) but no MASTER_ADDR: one line naming what said so."""
    for name in (*TORCHRUN, *SLURM, "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(names[1], "2")
    monkeypatch.setenv(names[0], "0")
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "-q")
    assert r.code == 1 and "export MASTER_ADDR and MASTER_PORT" in r.err, r
    assert f"{names[1]}=2 makes this one of several workers" in r.err, r
    assert len(r.err.strip().splitlines()) == 1, r


def test_the_last_global_batch_needs_a_row_per_worker():
    from dlc.distributed.stepper import shard
    from dlc.distributed.trainer import ParallelTrainer
    from dlc.model.network import build_network
    from dlc.model.spec import load_spec

    assert [shard(5, r, 2) for r in (0, 1)] == [slice(0, 2), slice(2, 5)]

    class Three:
        rank, world = 0, 3

    class Data:
        class train:
            x = [0] * 13  # 13 % (3 x 4) == 1 row for 3 workers

    net = build_network(load_spec(SPECS / "iris.yaml", ["train.batch_size=4"]))
    with pytest.raises(Exception, match="fewer than the 3 workers"):
        ParallelTrainer.factory(Three())(net, Data())


@needs_torch
def test_a_ray_worker_error_is_one_line(tmp_path):
    """A worker's DlcError (here its data file) comes back through Ray Train as one line."""
    pytest.importorskip("ray.train")
    r = run_dlc("train", SPECS / "iris.yaml", "--workers", "2", "-q", "--out", tmp_path / "run",
                "--set", "data.source=csv:/nonexistent.csv", timeout=180)
    assert r.code == 1, r
    assert r.err.strip() == ("error: data-parallel training failed: data file not found: "
                             "/nonexistent.csv (from data.source in spec)"), r


def ray_workers(pid: int) -> list[int]:
    """The pids of the Ray Train workers under process `pid` (its local Ray's raylet starts
    them), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that has just ended
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                command = (Path("/proc") / str(child) / "cmdline").read_bytes()
            except OSError:
                continue
            found += [child] * command.startswith(b"ray::RayTrainWorker")
    return found


@needs_torch
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_killing_a_ray_worker_ends_the_run_with_a_resumable_checkpoint(tmp_path):
    """`dlc train --workers 2` (Ray Train): rank 1's process killed mid-run ends the run in one
    line with the checkpoint to resume from, within a timeout (a hang fails the test). Without
    -q, in jsonl: stdout holds rank 0's epoch events, relayed unprefixed, and nothing of Ray's
    (its driver printed the dead worker's paragraph there)."""
    pytest.importorskip("ray.train")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(  # its own session: a hung Ray is killed as a group below
        [sys.executable, "-m", "dlc", "train", str(SPECS / "iris.yaml"), "--workers", "2",
         "--out", str(run), "--epochs", "100000", "--set", "data.split.val=0",
         "--log-format", "jsonl"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # Ray's start takes most of it
        while not epoch_of(run / "checkpoint.npz"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        rank0 = int((run / ".dlc.lock").read_text())  # rank 0 holds the run folder's lock
        victim = [pid for pid in ray_workers(proc.pid) if pid != rank0]
        assert len(victim) == 1, (rank0, ray_workers(proc.pid))
        os.kill(victim[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # hung: fail, leaving no Ray behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    events = [json.loads(line) for line in out.splitlines()]  # every line one JSON object
    assert events and {e["event"] for e in events} == {"epoch"}, out[-2000:]
    last = err.strip().splitlines()[-1]
    print(last)
    found = re.fullmatch(r"error: data-parallel training failed: worker 1 of 2 died \(its "
                         r"process ended\); checkpoint.npz holds epoch (\d+); resume with: "
                         rf"dlc train --resume {re.escape(str(run))}", last)
    assert found, err[-3000:]
    epoch = int(found.group(1))
    assert epoch_of(run / "checkpoint.npz") == epoch and events[-1]["epoch"] >= epoch
    r = torchrun("train", "--resume", run, "--epochs", epoch + 1, "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    assert epoch_of(run / "checkpoint.npz") == epoch + 1


@needs_torch
@pytest.mark.parametrize("spec", ["digits_mlp.yaml", "digits_cnn.yaml"])
def test_one_worker_step_is_the_fused_step_and_reduces_onnxruntime_memory_in_place(spec):
    """The data-parallel step all-reduces the OrtValue the gradient graph wrote (torch's DLPack
    view shares its memory: same address) and its update reads it: 1 worker == the fused step."""
    import torch
    import torch.distributed as dist

    from dlc.distributed.collective import Collective
    from dlc.distributed.stepper import ParallelStepper
    from dlc.model.network import build_network
    from dlc.model.spec import load_spec
    from dlc.runtime.session import make_session
    from dlc.runtime.stepper import BoundStepper
    from dlc.train.step import build_split_step, build_train_step, persistent_values

    net = build_network(load_spec(SPECS / spec))
    params, rng = net.init_params(0), np.random.default_rng(0)
    fused = build_train_step(net)
    one = BoundStepper(make_session(fused.model, threads=1), persistent_values(net, fused, params))
    grad, update = build_split_step(net)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        split = ParallelStepper(make_session(grad.model, threads=1),
                                make_session(update.model, threads=1),
                                persistent_values(net, update, params), {}, Collective(torch))
        (shape, _), = net.inputs.values()
        for step in range(1, 4):
            feeds = {"x": rng.standard_normal((16, *shape)).astype(np.float32),
                     "y": rng.integers(0, 10, 16).astype(np.int64),
                     "lr": np.array(0.01, np.float32), "step": np.array(step, np.float32)}
            a, b = one.run(feeds), split.run(feeds)
            one.commit(), split.commit()
            for name in a:
                np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(split.get("params"), one.get("params"), rtol=1e-5, atol=1e-7)
    finally:
        dist.destroy_process_group()
    wire = split.wires[16]
    assert wire.tensor.data_ptr() == wire.value.data_ptr()  # zero copy: DLPack shares memory
    assert np.array_equal(wire.tensor[:grad.total].numpy(), wire.value.numpy()[:grad.total])


@needs_torch
def test_the_prepared_gpu_check_runs_its_comparison_on_cpu():
    """bench/distributed_gpu.py, the check a session with a GPU runs, does its comparison and
    zero-copy check on the CPU too (gloo), so it is known to work before a GPU is lent."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "distributed_gpu.py"), "--device",
                           "cpu", "--steps", "3", "--batch", "16"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["zero_copy"] and result["wire_device"] == "cpu"
    assert max(result["relative_error"].values()) < 1e-5 and "| 1 worker, gloo" in done.stderr


def test_a_worker_copies_a_run_folder_without_its_passing_hidden_files(tmp_path):
    """Found by CI: rank 1 copies rank 0's run folder while rank 0 resumes in it, and a write
    probe that vanished mid-copy ended the resume with exit 3. Hidden files (lock, probes,
    atomic temporaries) are not copied: here one that no longer exists (a dangling link)."""
    from dlc.distributed.run import copy_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(b"weights")
    (run / ".dlc-probe.x").symlink_to(tmp_path / "gone")  # listed, then unreadable
    copy_run(run, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["checkpoint.npz"]


@needs_torch
def test_a_worker_ends_the_process_group_it_started_and_only_that(monkeypatch):
    """join() under a torchrun/SLURM environment starts the process group, and close() ends it
    (left to the interpreter's exit, gloo ended a finished worker with exit 134 now and then);
    a launcher's group (Ray Train's TorchConfig) stays the launcher's."""
    import torch.distributed as dist

    from dlc.distributed.collective import join

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    comm = join()
    assert dist.is_initialized() and comm.world == 1
    comm.close()
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        join().close()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_the_relay_carries_whole_lines_in_order():
    """A worker's stream in the relay (dlc.distributed.relay.Lines): print's pieces travel as
    whole lines, in order, with the stream they were written to; a line not yet ended waits."""
    from dlc.distributed.relay import Lines

    class Queue(list):
        put = list.append

    queue = Queue()
    out, err = Lines(queue, "out"), Lines(queue, "err")
    print('{"event": "epoch"', end="", file=out)
    print("epoch 1/2  train_loss 0.5", file=err)
    assert queue == [("err", "epoch 1/2  train_loss 0.5\n")]
    print(', "epoch": 1}\n{"event": "end"}', file=out)
    print("half", end="", file=err)
    assert queue[1:] == [("out", '{"event": "epoch", "epoch": 1}\n'),
                         ("out", '{"event": "end"}\n')]  # "half" waits for its end
