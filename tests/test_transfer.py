"""Transfer learning: frozen layers (`trainable: false`), `train.init_from` and
`train.optimizer.lr_scale`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, SPECS, straight_and_resumed
from onnx import numpy_helper
from stepio import pack_feeds

from dlc.errors import SpecError
from dlc.model.network import build_network
from dlc.model.spec import load_spec, load_spec_text
from dlc.train.step import build_train_step
from dlc.model.names import matches

MLP = """\
dlc: 1
name: digits-small
input: {shape: [64]}
layers:
  - {type: dense, name: fc1, units: 32, activation: relu}
  - {type: dense, name: fc2, units: 16, activation: relu}
  - {type: dense, name: out, units: %(units)d}
task: {kind: classification, loss: cross_entropy, metrics: [accuracy]}
data:
  source: %(source)s
  split: {val: 0.1, test: 0.2, stratify: true, seed: 0}
  normalize: standard
train:
  epochs: 2
  batch_size: 64
  optimizer: {type: adam, lr: 0.01}
  seed: 0
"""


def _spec_file(tmp_path, name="spec.yaml", units=10, source="builtin:digits", extra=""):
    path = tmp_path / name
    path.write_text(MLP % {"units": units, "source": source} + extra)
    return path


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """The small digits MLP trained for 2 epochs: the model to fine-tune from."""
    from dlc.train.run import train

    folder = tmp_path_factory.mktemp("source")
    train(load_spec(_spec_file(folder)), str(folder / "run"), force=True, quiet=True)
    return folder / "run" / "model.onnx"


def _sgd_step(net, params, lr=0.5, seed=0):
    """One SGD train step of `net` from `params` on a fixed batch: every output by name."""
    step = build_train_step(net)
    rng = np.random.default_rng(seed)
    feeds = {**pack_feeds(step, params), "x": rng.standard_normal((8, 64)).astype(np.float32),
             "y": rng.integers(0, 10, 8), "lr": np.array(lr, np.float32),
             "step": np.array(1, np.float32)}
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    return step, {**out, **step.unpack(out["params.new"])}


def _net(sets=()):
    return build_network(load_spec(SPECS / "digits_mlp.yaml", [*sets,
                                                               "train.optimizer.type=sgd"]))


# ---- frozen layers --------------------------------------------------------------------------
def test_frozen_layer_leaves_the_flat_vector_and_the_gradient_graph():
    full, frozen = _net(), _net(["layers.0.trainable=false"])
    assert frozen.frozen == {"fc1.weight", "fc1.bias"}
    assert [p.name for p in frozen.buffers] == []
    a, b = build_train_step(full), build_train_step(frozen)
    assert b.frozen == ["fc1.weight", "fc1.bias"]
    assert [n for n, _, _ in b.layout] == ["fc2.weight", "fc2.bias", "out.weight", "out.bias"]
    assert b.total == a.total - 64 * 256 - 256
    inputs = {i.name for i in b.model.graph.input}
    outputs = {o.name for o in b.model.graph.output}
    assert {"fc1.weight", "fc1.bias"} <= inputs and not any(o.startswith("fc1") for o in outputs)
    assert len(b.model.graph.node) < len(a.model.graph.node)
    matmuls = lambda s: sum(n.op_type in ("Gemm", "MatMul") for n in s.model.graph.node)  # noqa
    assert matmuls(b) == matmuls(a) - 3  # neither dW1, db1 (a GEMV) nor dX1 is computed


def test_readme_figures_of_a_frozen_fc1():
    """The README's figures for the digits MLP as specified (Adam): train-graph nodes, flat
    trainable values and matrix products, with fc1 trainable and frozen."""
    full, frozen = (build_train_step(build_network(load_spec(SPECS / "digits_mlp.yaml", sets)))
                    for sets in ([], ["layers.0.trainable=false"]))
    text = " ".join((ROOT / "README.md").read_text().split())
    nodes = [len(s.model.graph.node) for s in (full, frozen)]
    assert f"from {nodes[0]} to {nodes[1]} nodes" in text, nodes
    assert f"from {full.total:,} to {frozen.total:,} values" in text
    matmuls = [sum(n.op_type in ("Gemm", "MatMul") for n in s.model.graph.node)
               for s in (full, frozen)]
    assert matmuls[0] - matmuls[1] == 3 and "three fewer matrix products" in text


def test_frozen_step_moves_the_rest_exactly_as_the_full_step():
    full, frozen = _net(), _net(["layers.0.trainable=false"])
    params = full.init_params(0)
    _, a = _sgd_step(full, params)
    _, b = _sgd_step(frozen, params)
    assert a["loss"] == b["loss"]
    for name in ("fc2.weight", "fc2.bias", "out.weight", "out.bias"):
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6)
        assert not np.array_equal(b[name], params[name])
    assert not np.array_equal(a["fc1.weight"], params["fc1.weight"])  # the full step moves it


def test_frozen_layer_keeps_its_bytes_through_training(cli, tmp_path):
    spec = _spec_file(tmp_path)
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--set", "layers.1.trainable=false")
    assert r.code == 0, r
    net = build_network(load_spec(spec, ["layers.1.trainable=false"]))
    init = net.init_params(0)
    trained = _weights(tmp_path / "run" / "model.onnx")
    for name in ("fc2.weight", "fc2.bias"):
        assert trained[name].tobytes() == init[name].tobytes()
    assert not np.array_equal(trained["fc1.weight"], init["fc1.weight"])


def test_frozen_batchnorm_keeps_gamma_beta_but_tracks_statistics():
    spec = load_spec_text(json.dumps({
        "dlc": 1, "name": "bn", "input": {"shape": [4]},
        "layers": [{"type": "dense", "name": "fc", "units": 6},
                   {"type": "batchnorm", "name": "bn", "trainable": False},
                   {"type": "dense", "name": "out", "units": 3}],
        "task": {"kind": "classification"}, "train": {"optimizer": {"type": "sgd", "lr": 0.1}}}))
    net = build_network(spec)
    assert net.frozen == {"bn.gamma", "bn.beta"}
    assert [p.name for p in net.buffers] == ["bn.running_mean", "bn.running_var"]
    step = build_train_step(net)
    outputs = {o.name for o in step.model.graph.output}
    assert "bn.running_mean.new" in outputs and "bn.gamma.new" not in outputs


def test_trainable_false_inside_a_block_freezes_every_copy():
    text = """\
dlc: 1
name: blocks
input: {shape: [8]}
blocks:
  mlp:
    params: {train_a: true}
    layers:
      - {type: dense, name: a, units: 8, activation: relu, trainable: "${train_a}"}
      - {type: dense, name: b, units: 8, trainable: false}
layers:
  - {type: block, use: mlp, name: res, repeat: 2, train_a: false}
  - {type: dense, name: out, units: 3}
task: {kind: classification}
"""
    net = build_network(load_spec_text(text))
    assert net.frozen == {f"res{k}.{l}.{w}" for k in (1, 2) for l in "ab" for w in
                          ("weight", "bias")}
    assert [n for n, _, _ in build_train_step(net).layout] == ["out.weight", "out.bias"]


def test_shared_layers_must_agree_on_trainable():
    text = json.dumps({"dlc": 1, "name": "s", "input": {"shape": [4]}, "layers": [
        {"type": "dense", "name": "a", "units": 4, "trainable": False},
        {"type": "dense", "name": "b", "units": 4, "share": "a"},
        {"type": "dense", "name": "out", "units": 2}], "task": {"kind": "classification"}})
    with pytest.raises(SpecError, match="shares the parameters of 'a', whose trainable is false"):
        build_network(load_spec_text(text))


def test_nothing_left_to_train_is_a_spec_error(cli, tmp_path):
    spec = _spec_file(tmp_path)
    sets = [a for i in range(3) for a in ("--set", f"layers.{i}.trainable=false")]
    r = cli("train", spec, "--out", tmp_path / "run", "-q", *sets)
    assert r.code == 2 and "nothing would train" in r.err, r


# ---- init_from ------------------------------------------------------------------------------
def test_fine_tune_from_a_trained_model(cli, tmp_path, digits_model):
    spec = _spec_file(tmp_path, extra=f"  init_from: {digits_model}\n")
    r = cli("train", spec, "--out", tmp_path / "run", "--set", "layers.0.trainable=false",
            "--set", "train.epochs=1")
    assert r.code == 0, r
    assert f"init_from {digits_model}: loaded 6 of 6 parameters" in r.err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    report = summary["init_from"]
    assert report["matched"] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                 "out.weight", "out.bias"]
    assert report["new"] == report["shape_mismatch"] == report["unused"] == []
    source, tuned = _weights(digits_model), _weights(tmp_path / "run" / "model.onnx")
    for name in ("fc1.weight", "fc1.bias"):  # frozen: the loaded bytes, exactly
        assert tuned[name].tobytes() == source[name].tobytes()
    assert not np.array_equal(tuned["fc2.weight"], source["fc2.weight"])  # fine-tuned
    # starting from the trained model: the first epoch is already far better than chance
    assert summary["val"]["accuracy"] > 0.85


def test_head_with_other_units_is_reported_as_shape_mismatch(cli, tmp_path, digits_model):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    keep = y < 5  # a new task: digits 0-4, a 5-unit head
    np.savez(tmp_path / "five.npz", x=x[keep].astype(np.float32), y=y[keep])
    spec = _spec_file(tmp_path, units=5, source="npz:five.npz",
                      extra="  init_from: model.onnx\n")
    (tmp_path / "model.onnx").write_bytes(digits_model.read_bytes())  # relative to the spec
    r = cli("train", spec, "--out", tmp_path / "run", "--set", "train.epochs=1")
    assert r.code == 0, r
    assert "shape differs, skipped: out.weight [16, 5] here, [16, 10] in the file" in r.err
    report = json.loads((tmp_path / "run" / "summary.json").read_text())["init_from"]
    assert report["path"] == str((tmp_path / "model.onnx").resolve())
    assert report["matched"] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert report["shape_mismatch"] == [
        {"name": "out.weight", "model": [16, 5], "file": [16, 10]},
        {"name": "out.bias", "model": [5], "file": [10]}]
    assert report["new"] == []


def test_new_layers_keep_their_fresh_init(tmp_path, digits_model):
    from dlc.data import load_dataset
    from dlc.train.trainer import Trainer
    from dlc.train.features.finetune import init_from

    text = MLP.replace("  - {type: dense, name: out", "  - {type: dense, name: extra, units: 16}\n"
                                                     "  - {type: dense, name: out")
    spec = load_spec_text(text % {"units": 10, "source": "builtin:digits"} +
                          f"  init_from: {digits_model}\n")
    net = build_network(spec)
    trainer = Trainer(net, load_dataset(spec.data, tmp_path))
    fresh, notes = trainer.params, []
    report = init_from(trainer, notes.append)
    assert report["new"] == ["extra.weight", "extra.bias"] and len(report["matched"]) == 6
    after, source = trainer.params, _weights(digits_model)
    assert after["extra.weight"].tobytes() == fresh["extra.weight"].tobytes()
    assert after["fc2.weight"].tobytes() == source["fc2.weight"].tobytes()
    assert notes and notes[0].startswith(f"init_from {digits_model}: loaded 6 of 8 parameters")


def test_resume_keeps_the_checkpoint_and_the_report(cli, tmp_path, monkeypatch, digits_model):
    spec = _spec_file(tmp_path, extra=f"  init_from: {digits_model}\n")
    args = ["-q", "--set", "layers.0.trainable=false", "--set", "train.epochs=3"]
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path, spec, args, epoch=2)
    assert (broken / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    a, b = _weights(straight / "model.onnx"), _weights(broken / "model.onnx")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    summary = json.loads((broken / "summary.json").read_text())
    assert len(summary["init_from"]["matched"]) == 6


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"\x08\x07garbage not onnx \xff\xff", "is not a valid ONNX model"),
    ("plain", "is not a dlc model"),
])
def test_missing_or_corrupt_init_from_is_one_line(cli, tmp_path, content, message):
    target = tmp_path / "source.onnx"
    if content == "plain":
        g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
        onnx.save(onnx.helper.make_model(g), target)
    elif content is not None:
        target.write_bytes(content)
    spec = _spec_file(tmp_path, extra="  init_from: source.onnx\n")
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 1, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "train.init_from" in lines[0] and message in lines[0], r
    assert not (tmp_path / "run").exists()  # checked before the run folder is made


# ---- lr_scale -------------------------------------------------------------------------------
def test_lr_scale_key_matching():
    assert matches("fc1", "fc1.weight") and matches("fc1.weight", "fc1.weight")
    assert matches("res1", "res1.a.weight") and matches("res*", "res2.b.bias")
    assert matches("*.bias", "fc1.bias") and not matches("fc", "fc1.weight")


def test_lr_scale_zero_freezes_and_half_halves_an_sgd_step_exactly():
    scaled = _net(["train.optimizer.lr_scale={fc1: 0, fc2.weight: 0.5}"])
    params = scaled.init_params(0)
    _, s = _sgd_step(scaled, params, lr=0.5)
    _, full = _sgd_step(_net(), params, lr=0.5)
    _, half = _sgd_step(_net(), params, lr=0.25)
    for name in ("fc1.weight", "fc1.bias"):  # scale 0: exactly where it was
        assert s[name].tobytes() == params[name].tobytes()
    assert s["fc2.weight"].tobytes() == half["fc2.weight"].tobytes()  # lr * 0.5 == lr / 2
    for name in ("fc2.bias", "out.weight", "out.bias"):  # unselected: factor 1
        assert s[name].tobytes() == full[name].tobytes()
        assert not np.array_equal(s[name], params[name])


def test_lr_scale_costs_one_mul_and_zero_holds_under_adam():
    plain = build_train_step(build_network(load_spec(SPECS / "digits_mlp.yaml")))
    net = build_network(load_spec(SPECS / "digits_mlp.yaml", ["train.optimizer.lr_scale={out: 0}"]))
    scaled = build_train_step(net)
    assert len(scaled.model.graph.node) == len(plain.model.graph.node) + 1
    params = net.init_params(0)
    rng = np.random.default_rng(1)
    feeds = {**pack_feeds(scaled, params), "x": rng.standard_normal((8, 64)).astype(np.float32),
             "y": rng.integers(0, 10, 8), "lr": np.array(0.01, np.float32),
             "step": np.array(1, np.float32)}
    sess = ort.InferenceSession(scaled.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    new = scaled.unpack(out["params.new"])
    assert new["out.weight"].tobytes() == params["out.weight"].tobytes()
    assert not np.array_equal(new["fc1.weight"], params["fc1.weight"])


@pytest.mark.parametrize("sets,message", [
    (["train.optimizer.lr_scale={fc9: 0.1}"], "'fc9' selects no trainable parameter"),
    (["train.optimizer.lr_scale={fc1: 0.1}", "layers.0.trainable=false"],
     "only frozen ones"),
])
def test_lr_scale_keys_must_select_trainable_parameters(tmp_path, sets, message):
    from dlc.train.features.finetune import check

    spec = load_spec(SPECS / "digits_mlp.yaml", sets)
    with pytest.raises(SpecError, match=message):
        check(spec, build_network(spec), tmp_path)
