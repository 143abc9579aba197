"""Class imbalance: `task.class_weights` (weighted cross-entropy / BCE against torch's `weight=`
and `pos_weight`, `balanced` against scikit-learn) and `data.sampling: balanced`."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SPECS, straight_and_resumed
from oracles import F, needs_torch, torch
from stepio import pack_feeds

from dlc.errors import DlcError, SpecError
from dlc.train.features.imbalance import balanced_weights, class_ids, epoch_order
from dlc.model.network import build_network
from dlc.model.spec import load_spec_text
from dlc.train.step import build_train_step


LR = 1024.0  # gradient read-back from an SGD step: g = (p - new) / lr (see test_train_step)
TOL = 1e-4


def _spec(task, shape=(4,), units=3, data=None):
    doc = {"dlc": 1, "name": "imb", "input": {"shape": list(shape)},
           "layers": [{"type": "dense", "name": "h", "units": 6, "activation": "tanh"},
                      {"type": "dense", "name": "out", "units": units}],
           "task": task, "train": {"optimizer": {"type": "sgd", "lr": 0.1}}}
    if data:
        doc["data"] = data
    return load_spec_text(json.dumps(doc))


def _step(net, x, y, seed=0):
    """loss and gradients (by parameter name) of one dlc train step; the initial parameters."""
    step = build_train_step(net)
    params = net.init_params(seed)
    feeds = {**pack_feeds(step, params), "x": x, "y": y, "lr": np.array(LR, np.float32),
             "step": np.array(1, np.float32)}
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    new = step.unpack(out["params.new"])
    grads = {k: (params[k].astype(np.float64) - new[k]) / LR for k in new}
    return float(out["loss"]), grads, params


def _torch_logits(params, x):
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    h = torch.tanh(torch.tensor(x, dtype=torch.float64) @ t["h.weight"] + t["h.bias"])
    return h @ t["out.weight"] + t["out.bias"], t


def _compare(loss, grads, ref, t):
    ref.backward()
    assert abs(loss - ref.item()) <= TOL * max(1.0, abs(ref.item()))
    for k, g in grads.items():
        expect = t[k].grad.numpy()
        np.testing.assert_allclose(g, expect, rtol=0, atol=TOL * max(1e-3, np.abs(expect).max()))


# ---- weighted losses against torch ----------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_weighted_cross_entropy_matches_torch(eps):
    weights = [0.2, 1.0, 3.5]
    net = build_network(_spec({"kind": "classification", "class_weights": weights,
                               "label_smoothing": eps}))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    loss, grads, params = _step(net, x, y)
    logits, t = _torch_logits(params, x)
    w = torch.tensor(weights, dtype=torch.float64)
    ref = F.cross_entropy(logits, torch.tensor(y), weight=w, label_smoothing=eps)
    _compare(loss, grads, ref, t)
    unweighted, _, _ = _step(build_network(_spec({"kind": "classification",
                                                  "label_smoothing": eps})), x, y)
    assert abs(unweighted - loss) > 1e-3  # the weights do change the loss


@needs_torch
def test_weighted_cross_entropy_per_token_matches_torch():
    weights = [2.0, 0.5, 1.0]
    net = build_network(_spec({"kind": "classification", "class_weights": weights},
                              shape=(5, 4)))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 5, 4)).astype(np.float32), rng.integers(0, 3, (6, 5))
    loss, grads, params = _step(net, x, y)
    logits, t = _torch_logits(params, x)  # [N, T, C]; torch wants the classes on axis 1
    ref = F.cross_entropy(logits.permute(0, 2, 1), torch.tensor(y),
                          weight=torch.tensor(weights, dtype=torch.float64))
    _compare(loss, grads, ref, t)


@needs_torch
def test_weighted_bce_matches_torch_weight_and_pos_weight():
    w0, w1 = 1.0, 4.0
    net = build_network(_spec({"kind": "binary", "class_weights": [w0, w1]}, units=1))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = (rng.random((16, 1)) < 0.3).astype(np.float32)
    loss, grads, params = _step(net, x, y)
    logits, t = _torch_logits(params, x)
    yt = torch.tensor(y, dtype=torch.float64)
    wi = w0 + (w1 - w0) * yt
    ref = F.binary_cross_entropy_with_logits(logits, yt, weight=wi, reduction="sum") / wi.sum()
    # class weights [1, p] are pos_weight=p up to the normaliser: mean over N vs sum of weights
    pos = F.binary_cross_entropy_with_logits(logits.detach(), yt,
                                             pos_weight=torch.tensor([w1], dtype=torch.float64))
    assert abs(loss * float(wi.sum()) / len(y) - pos.item()) <= TOL * abs(pos.item())
    _compare(loss, grads, ref, t)


# ---- balanced weights -----------------------------------------------------------------------
def test_balanced_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    rng = np.random.default_rng(0)
    y = rng.choice(4, size=500, p=[0.7, 0.2, 0.07, 0.03])
    expect = compute_class_weight("balanced", classes=np.arange(4), y=y)
    np.testing.assert_allclose(balanced_weights(y, 4), expect, rtol=1e-12)
    binary = (rng.random((300, 1)) < 0.1).astype(np.float32)
    ids = class_ids(binary, "binary")
    np.testing.assert_allclose(balanced_weights(ids, 2),
                               compute_class_weight("balanced", classes=np.arange(2), y=ids))
    with pytest.raises(DlcError, match="class 3 has no sample"):
        balanced_weights(np.array([0, 1, 2, 1]), 4)


def _imbalanced_digits(tmp_path, counts=(300, 60, 15)):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.concatenate([np.flatnonzero(y == c)[:n] for c, n in enumerate(counts)])
    np.savez(tmp_path / "imb.npz", x=x[idx].astype(np.float32), y=y[idx])
    spec = tmp_path / "imb.yaml"
    spec.write_text("""\
dlc: 1
name: imbalanced
input: {shape: [64]}
layers:
  - {type: dense, name: fc1, units: 16, activation: relu}
  - {type: dense, name: out, units: 3}
task: {kind: classification, metrics: [accuracy, recall], class_weights: balanced}
data:
  source: npz:imb.npz
  split: {val: 0.2, test: 0.0, stratify: true, seed: 0}
  sampling: balanced
train: {epochs: 2, batch_size: 32, optimizer: {type: adam, lr: 0.01}}
""")
    return spec


def test_balanced_class_weights_come_from_the_training_split(cli, tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    from dlc.data import load_dataset
    from dlc.model.spec import load_spec

    spec = _imbalanced_digits(tmp_path)
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    train_y = load_dataset(load_spec(spec).data, tmp_path).train.y
    expect = compute_class_weight("balanced", classes=np.arange(3), y=train_y)
    used = json.loads((tmp_path / "run" / "summary.json").read_text())["class_weights"]
    np.testing.assert_allclose(used, expect, rtol=1e-12)
    assert "balanced" in (tmp_path / "run" / "spec.yaml").read_text()  # the spec as written


def test_balanced_weights_without_the_trainer_are_an_error():
    net = build_network(_spec({"kind": "classification", "class_weights": "balanced"}))
    with pytest.raises(DlcError, match="balanced is computed from the training data"):
        build_train_step(net)


# ---- balanced sampling ----------------------------------------------------------------------
def test_balanced_sampling_draws_classes_uniformly():
    y = np.repeat([0, 1, 2], [900, 90, 10])
    spec = {"task": {"kind": "classification"}, "data": {"sampling": "balanced"}}
    counts = np.zeros(3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts += np.bincount(y[epoch_order(rng, y, spec)], minlength=3)
    share = counts / counts.sum()
    np.testing.assert_allclose(share, 1 / 3, atol=0.02)
    plain = epoch_order(np.random.default_rng(0), y, {"task": {"kind": "classification"}})
    np.testing.assert_array_equal(plain, np.random.default_rng(0).permutation(len(y)))
    binary = np.repeat([[0.0], [1.0]], [950, 50], axis=0)
    drawn = binary[epoch_order(rng, binary, {"task": {"kind": "binary"},
                                              "data": {"sampling": "balanced"}})]
    assert 0.45 < drawn.mean() < 0.55


def test_balanced_sampling_in_the_trainer_uses_its_generator(tmp_path):
    from dlc.data import load_dataset
    from dlc.train.trainer import Trainer
    from dlc.model.spec import load_spec

    spec = load_spec(_imbalanced_digits(tmp_path))
    net, data = build_network(spec), load_dataset(spec.data, tmp_path)
    trainer = Trainer(net, data)
    drawn = []
    original = trainer.stepper.run
    trainer.stepper.run = lambda feeds: (drawn.append(feeds["y"]), original(feeds))[1]
    state = trainer.state.rng.bit_generator.state
    trainer.train_epoch()
    share = np.bincount(np.concatenate(drawn), minlength=3) / len(data.train.y)
    assert np.bincount(data.train.y).min() / len(data.train.y) < 0.1  # imbalanced data
    assert share.min() > 0.25  # balanced batches
    trainer.state.rng.bit_generator.state = state  # same generator state: same draws
    again = epoch_order(trainer.state.rng, data.train.y, net.spec)
    np.testing.assert_array_equal(np.concatenate(drawn), data.train.y[again])


def test_resume_with_balanced_sampling_equals_uninterrupted(cli, tmp_path, monkeypatch):
    args = ["-q", "--epochs", "4", "--set", "data.sampling=balanced",
            "--set", "task.class_weights=balanced"]
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path, SPECS / "iris.yaml",
                                            args, epoch=3)
    assert (broken / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()


# ---- spec checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("task,data,shape,message", [
    ({"kind": "regression", "class_weights": [1, 2]}, None, (4,), "need a classification"),
    ({"kind": "classification", "class_weights": [1, 2]}, None, (4,), "2 class weights for 3"),
    ({"kind": "binary", "class_weights": [1, 2, 3]}, None, (4,), "binary: [negative, positive]"),
    ({"kind": "regression"}, {"source": "builtin:iris", "sampling": "balanced"}, (4,),
     "balanced sampling needs a classification"),
    ({"kind": "classification"}, {"source": "builtin:iris", "sampling": "balanced"}, (5, 4),
     "per-token outputs"),
])
def test_spec_checks(task, data, shape, message):
    units = 1 if task["kind"] == "binary" else 3
    with pytest.raises(SpecError) as e:
        build_network(_spec(task, shape=shape, units=units, data=data))
    assert message in str(e.value)


@pytest.mark.parametrize("value", ['"uniform"', "[1, 0, 2]", "[2]"])
def test_schema_rejects_bad_class_weights(value):
    text = f"""\
dlc: 1
name: s
input: {{shape: [4]}}
layers: [{{type: dense, units: 3}}]
task: {{kind: classification, class_weights: {value}}}
"""
    with pytest.raises(SpecError, match="class_weights"):
        load_spec_text(text)
