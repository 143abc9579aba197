"""Provider choice (no GPU needed), the IOBinding ping-pong stepper (run here on the CPU), and
GPU checks that run only where CUDA is usable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SPECS

from dlc.errors import DlcError, UsageError
from dlc.runtime.session import CUDA, cuda_usable, parse_device, resolve_device

USABLE = lambda i: (True, "")  # noqa: E731
BROKEN = lambda i: (False, "libcublasLt.so.13: cannot open shared object file")  # noqa: E731


@pytest.mark.parametrize("device,available,usable,expected", [
    ("cpu", [CUDA, "CPUExecutionProvider"], USABLE, ("cpu", 0, None)),
    ("auto", [CUDA, "CPUExecutionProvider"], USABLE, ("cuda", 0, None)),
    ("cuda:1", [CUDA, "CPUExecutionProvider"], USABLE, ("cuda", 1, None)),
    ("auto", ["CPUExecutionProvider"], USABLE,
     ("cpu", 0, "device auto: using CPU (onnxruntime has no CUDA provider)")),
    ("auto", [CUDA, "CPUExecutionProvider"], BROKEN,
     ("cpu", 0, "device auto: using CPU (libcublasLt.so.13: cannot open shared object file)")),
])
def test_resolve_device(device, available, usable, expected):
    assert resolve_device(device, available, usable) == expected


def test_cuda_requested_but_unusable_is_an_error():
    with pytest.raises(DlcError, match="device cuda requested but CUDA is unusable: libcublas"):
        resolve_device("cuda", [CUDA, "CPUExecutionProvider"], BROKEN)


@pytest.mark.parametrize("bad", ["tpu", "cpu:1", "cuda:x", "CUDA", ""])
def test_bad_device_names(bad):
    with pytest.raises(UsageError):
        parse_device(bad)


def test_auto_falls_back_quietly_through_the_cli(tmp_path):
    from conftest import run_dlc

    if cuda_usable(0)[0]:
        pytest.skip("CUDA is usable here")
    r = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "-q", "--epochs", "1",
                "--device", "auto")
    assert r.code == 0, r
    assert "[E:onnxruntime" not in r.err and "[W:onnxruntime" not in r.err, r.err
    r = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "run2", "-q", "--device", "cuda")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r


def _trainer(device=("cpu", 0), overrides=()):
    from dlc.data import load_dataset
    from dlc.model.network import build_network
    from dlc.train.trainer import Trainer
    from dlc.model.spec import load_spec

    spec = load_spec(SPECS / "digits_cnn.yaml", ["train.epochs=1", "train.batch_size=128",
                                                 *overrides])
    net = build_network(spec)
    data = load_dataset(spec.data, SPECS)
    data.train.x, data.train.y = data.train.x[:512], data.train.y[:512]
    return Trainer(net, data, device, seed=0)


@pytest.mark.parametrize("overrides", [[], ["layers.0.trainable=false"]], ids=["all", "frozen"])
def test_bound_stepper_ping_pong_equals_host_stepper(overrides):
    """IOBinding with two buffer sets (bound on the CPU here) gives the same parameters as
    plain session.run, step for step; a skipped (uncommitted) step leaves them unchanged.
    Frozen parameters are bound once as constants (uploaded to the device at start)."""
    from dlc.runtime.stepper import BoundStepper, HostStepper

    host, bound = _trainer(overrides=overrides), _trainer(overrides=overrides)
    assert bool(host.frozen) == bool(overrides) and type(bound.stepper) is BoundStepper
    persistent = {name: bound.stepper.get(name) for name in bound.stepper.sets[0]}
    host.stepper = HostStepper(host.sess, persistent, host.frozen)
    host.train_epoch()
    bound.train_epoch()
    for name, value in host.params.items():
        np.testing.assert_array_equal(bound.params[name], value, err_msg=name)
    before = bound.params
    bound.stepper.run({"x": bound.data.train.x[:8], "y": bound.data.train.y[:8],
                       "lr": np.array(1.0, np.float32), "step": np.array(9, np.float32)})
    for name, value in before.items():
        np.testing.assert_array_equal(bound.params[name], value, err_msg=name)


gpu = pytest.mark.skipif(not cuda_usable(0)[0], reason="CUDA is not usable here")


@pytest.mark.gpu
@gpu
def test_cpu_and_cuda_agree_on_one_train_step():
    cpu, cuda = _trainer(), _trainer(("cuda", 0))
    assert type(cuda.stepper).__name__ == "BoundStepper"
    feeds = {"x": cpu.data.train.x[:64], "y": cpu.data.train.y[:64],
             "lr": np.array(1e-3, np.float32), "step": np.array(1, np.float32)}
    a, b = cpu.stepper.run(feeds), cuda.stepper.run(feeds)
    cpu.stepper.commit()
    cuda.stepper.commit()
    assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"])
    for name, value in cpu.params.items():
        other = cuda.params[name]
        assert np.abs(other - value).max() <= 1e-4 * max(np.abs(value).max(), 1e-6), name


@pytest.mark.gpu
@gpu
def test_cuda_training_reaches_cpu_accuracy(tmp_path):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = train(load_spec(SPECS / "digits_mlp.yaml"), str(tmp_path / "run"), device="cuda",
                quiet=True)
    import json

    assert json.loads(Path(out, "summary.json").read_text())["test"]["accuracy"] >= 0.97
