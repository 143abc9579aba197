"""bench/suite.py compares like with like: each PyTorch twin (bench/torch_models.py), given
dlc's initial weights by suite.copy_weights, computes the same logits as dlc's compiled model
(inference mode: batchnorm on running statistics, no dropout); and its worker command lines."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from oracles import needs_torch, torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import suite  # noqa: E402


@needs_torch
@pytest.mark.parametrize("model", list(suite.MODELS))
def test_torch_twin_with_dlc_weights_computes_dlc_logits(model, tmp_path):
    import onnxruntime as ort
    import torch_models

    from dlc.model.compile import compile_spec

    weights = str(tmp_path / "w.npz")
    init = suite.init_worker(Namespace(model=model, weights=weights))
    assert init["train_flops_per_sample"] > 0
    spec, _ = suite.load_net(model)
    x, _ = suite.synthetic(model, 4)
    sess = ort.InferenceSession(compile_spec(spec, seed=0).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {sess.get_inputs()[0].name: x})[0]
    net = torch_models.build(model)
    suite.copy_weights(net, weights)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(logits - expected).max()) < 1e-4 * max(scale, 1.0)


@needs_torch
def test_copy_weights_refuses_a_twin_of_another_shape(tmp_path):
    import torch_models

    weights = str(tmp_path / "w.npz")
    suite.init_worker(Namespace(model="mlp", weights=weights))
    with pytest.raises(SystemExit, match="parameters"):
        suite.copy_weights(torch_models.build("textcls"), weights)


@needs_torch
def test_suite_runs_both_sides_end_to_end():
    """One short run of the smallest model through the real command: each side in its own
    worker process, the profiler breakdown, the markdown table (numbers not checked: timing)."""
    import json
    import subprocess

    r = subprocess.run([sys.executable, str(BENCH / "suite.py"), "--models", "mlp", "--threads",
                        "1", "--repeats", "1", "--steps", "1", "--warmup", "1", "--markdown",
                        "--json-only"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.splitlines()[0])
    for side in ("dlc", "torch"):
        assert result[side]["samples_per_s"] > 0 and result[side]["peak_rss_mb"] > 0
    assert "Gemm" in result["dlc"]["profile"]["top_ops"]
    assert "| MLP 784-1024-1024-10, batch 256, Adam | 1 |" in r.stdout


def test_cuda_suite_passes_the_device_to_every_worker():
    """`--device cuda --dry-run` needs no GPU: each side's worker (init, dlc, torch, the
    baseline's dlc with DLC_SRC) gets --device cuda and the thread count, in the environment
    too, and nothing is run."""
    import subprocess

    r = subprocess.run([sys.executable, str(BENCH / "suite.py"), "--device", "cuda",
                        "--dry-run", "--models", "mlp,lstm", "--threads", "1,2", "--baseline",
                        str(BENCH.parent)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 2 * 2 * 4  # threads x models x (init, dlc, torch, baseline)
    sides = [line.split("--worker ")[1].split()[0] for line in lines]
    assert sides == ["init", "dlc", "torch", "dlc"] * 4
    for line, threads in zip(lines, [1] * 8 + [2] * 8):
        assert f"OMP_NUM_THREADS={threads} " in line and f"--threads {threads} " in line
        assert "--device cuda " in line
    assert sum("DLC_SRC=" in line for line in lines) == 4


def _digits_logits(spec: str):
    """(network, dlc's initial values, a batch x, dlc's eval-step logits of x)."""
    import onnxruntime as ort

    from dlc.model.network import build_network
    from dlc.model.spec import load_spec
    from dlc.train.step import build_eval_step

    net = build_network(load_spec(BENCH.parent / "specs" / f"{spec}.yaml"))
    init = net.init_params(0)
    x = np.random.default_rng(0).normal(size=(4, *net.nodes[0].in_shapes[0])).astype(np.float32)
    step = build_eval_step(net)
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"x": x, "y": np.zeros(4, np.int64),
                                   **{n: init[n] for n in step.params}})[0]
    return net, init, x, logits


@pytest.mark.parametrize("spec", ["digits_mlp", "digits_cnn"])
def test_jax_twin_with_dlc_weights_computes_dlc_logits(spec):
    """bench/train_speed.py's JAX side (bench/jax_twin.py) runs the digits MLP and CNN dlc
    trains: the same logits from the same initial weights as dlc's eval step."""
    pytest.importorskip("jax")
    import jax_twin
    import train_speed

    net, init, x, logits = _digits_logits(spec)
    params, forward = jax_twin.twin(train_speed._chain(net), init)
    expected = np.asarray(forward(params, x))
    assert float(np.abs(logits - expected).max()) < 1e-4 * float(np.abs(expected).max())


@needs_torch
@pytest.mark.parametrize("spec", ["digits_mlp", "digits_cnn"])
def test_train_speed_torch_twin_computes_dlc_logits(spec):
    """bench/train_speed.py's PyTorch side mirrors conv2d (padding same), maxpool2d and flatten
    as well as dense layers, with dlc's initial weights: the digits CNN's >= 1.2x target is
    measured against the same network."""
    import train_speed

    net, init, x, logits = _digits_logits(spec)
    with torch.no_grad():
        expected = train_speed.torch_model(net, init).eval()(torch.from_numpy(x)).numpy()
    assert float(np.abs(logits - expected).max()) < 1e-4 * float(np.abs(expected).max())


def test_pin_cores_pins_every_thread_before_and_after():
    """`--cores 1`: the threads already running and those started later all run on one CPU."""
    import subprocess

    code = ("import os, sys, threading; sys.path.insert(0, sys.argv[1]); import train_speed\n"
            "ev = threading.Event(); before = threading.Thread(target=ev.wait); before.start()\n"
            "cpus = train_speed.pin_cores(1)\n"
            "after = threading.Thread(target=ev.wait); after.start()\n"
            "masks = {t: os.sched_getaffinity(int(t)) for t in os.listdir('/proc/self/task')}\n"
            "ev.set(); print(len(masks), set(map(frozenset, masks.values())) == {frozenset(cpus)},"
            " cpus == sorted(os.sched_getaffinity(0))[:1])")
    r = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    threads, same, first = r.stdout.split()
    assert int(threads) >= 3 and same == "True" and first == "True"


def test_train_speed_refuses_more_cores_than_it_may_use():
    import os
    import subprocess

    n = len(os.sched_getaffinity(0)) + 1
    r = subprocess.run([sys.executable, str(BENCH / "train_speed.py"), "--cores", str(n)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and f"--cores {n}: this process may use 1 to" in r.stderr
    assert "Traceback" not in r.stderr
