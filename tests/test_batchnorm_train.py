"""A batchnorm CNN trained through the CLI: it learns the digits, its running statistics reach the
exported model, and an interrupted run resumes bit for bit (weights and running statistics)."""

from __future__ import annotations

import json

import numpy as np
import onnx
from conftest import straight_and_resumed
from onnx import numpy_helper

SPEC = """\
dlc: 1
name: digits-bn
input: {shape: [1, 8, 8]}
layers:
  - {type: conv2d, name: conv, filters: 16, kernel: 3, padding: same, use_bias: false}
  - {type: batchnorm, name: bn1}
  - {type: relu}
  - {type: maxpool2d, pool: 2}
  - {type: flatten}
  - {type: dense, name: fc, units: 32, use_bias: false}
  - {type: batchnorm, name: bn2, momentum: 0.8}
  - {type: relu}
  - {type: dense, name: head, units: 10}
task: {kind: classification, loss: cross_entropy, metrics: [accuracy]}
data:
  source: builtin:digits
  split: {val: 0.1, test: 0.2, stratify: true, seed: 0}
  normalize: minmax
train: {epochs: 4, batch_size: 64, optimizer: {type: adam, lr: 0.003}, seed: 0}
"""


def _weights(model) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(model).graph.initializer}


def test_batchnorm_cnn_learns_the_digits(cli, tmp_path):
    spec = tmp_path / "bn.yaml"
    spec.write_text(SPEC)
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test"]["accuracy"] > 0.9
    model = onnx.load(tmp_path / "run" / "model.onnx")
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bn) == 2 and all(n.input[3].endswith("running_mean") for n in bn), bn
    stats = _weights(tmp_path / "run" / "model.onnx")
    assert not np.allclose(stats["bn1.running_mean"], 0.0)  # moved from their initial values
    assert not np.allclose(stats["bn2.running_var"], 1.0)


def test_batchnorm_run_resumes_bit_for_bit(cli, tmp_path, monkeypatch):
    spec = tmp_path / "bn.yaml"
    spec.write_text(SPEC)
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path, spec,
                                            ["-q", "--set", "train.epochs=3"], epoch=2)
    assert (broken / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    a, b = _weights(straight / "model.onnx"), _weights(broken / "model.onnx")
    assert {"bn1.running_mean", "bn2.running_var"} <= set(a)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
