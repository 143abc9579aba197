"""Magnitude pruning (train.prune): the schedule, the mask in the train graph (no gradient, no
update, exact zeros), resume with the mask, the exported zeros, and accuracy on digits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import SPECS, straight_and_resumed
from onnx import numpy_helper

from dlc.train.features.prune import due, prune_tensor, sparsity_at
from dlc.train.trainer import Trainer

PRUNE = "train.prune={sparsity: 0.8, start_epoch: 1, end_epoch: 10, every: 1}"


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_schedule_is_tf_mot_polynomial_decay_power_3():
    cfg = {"sparsity": 0.8, "start_epoch": 2, "end_epoch": 8, "every": 2}
    for epoch in range(1, 12):
        p = min(1.0, max(0.0, (epoch - 2) / 6))
        expected = 0.0 if epoch < 2 else 0.8 + (0.0 - 0.8) * (1 - p) ** 3  # TF-MOT's formula
        assert sparsity_at(cfg, epoch) == pytest.approx(expected)
    assert [e for e in range(1, 12) if due(cfg, e)] == [2, 4, 6, 8]
    odd = {**cfg, "every": 4}  # end_epoch is always an update, so the final sparsity is reached
    assert [e for e in range(1, 12) if due(odd, e)] == [2, 6, 8]
    assert sparsity_at({**cfg, "start_epoch": 3, "end_epoch": 3}, 3) == 0.8


def test_prune_tensor_counts_and_keeps_pruned_weights_pruned():
    w = np.array([0.5, -0.1, 0.0, 2.0, -3.0, 0.2, 0.05, 1.0], np.float32)
    keep = np.ones(8, np.float32)
    m1 = prune_tensor(w, keep, 0.25)
    assert m1.tolist() == [1, 1, 0, 1, 1, 1, 0, 1]  # the two smallest |w|
    w2 = w * m1
    w2[2] = 10.0  # even a pruned entry that somehow grew stays pruned
    m2 = prune_tensor(w2, m1, 0.5)
    assert m2[[2, 6]].tolist() == [0, 0] and m2.sum() == 4
    assert m2.tolist() == [1, 0, 0, 1, 1, 0, 0, 1]


def _trainer(spec_overrides):
    from dlc.model.spec import load_spec
    from dlc.train.run import prepare

    spec = load_spec(SPECS / "digits_mlp.yaml", spec_overrides)
    net, data, _ = prepare(spec, SPECS)
    return Trainer(net, data), data


def test_masked_weights_get_no_gradient_and_no_update():
    """One sgd step and one adam step through the train graph with half of fc1's weights masked:
    masked entries come out exactly 0 with zero gradient (adam's first moment stays 0), and the
    unmasked gradient is torch's gradient of the loss of the masked weights."""
    torch = pytest.importorskip("torch")
    trainer, data = _trainer([PRUNE, "train.optimizer.type=sgd", "task.label_smoothing=0"])
    step, stepper = trainer.step_graph, trainer.stepper
    assert "mask" in step.states and stepper.get("state.mask").min() == 1.0
    flat = stepper.get("params").copy()
    rng = np.random.default_rng(0)
    mask = (rng.random(step.total) < 0.5).astype(np.float32)
    x, y = data.train.x[:64], data.train.y[:64]
    lr = np.float32(0.1)
    out = dict(zip([o.name for o in trainer.sess.get_outputs()], trainer.sess.run(None, {
        "x": x, "y": y, "lr": np.array(lr), "step": np.array(1.0, np.float32),
        "params": flat, "state.mask": mask})))
    new = out["params.new"]
    assert np.all(new[mask == 0] == 0.0)
    assert np.array_equal(out["state.mask.new"], mask)
    w = {k: torch.tensor(v * m, requires_grad=True) for (k, v), m in
         zip(step.unpack(flat).items(), step.unpack(mask).values())}
    h = torch.relu(torch.tensor(x) @ w["fc1.weight"] + w["fc1.bias"])
    h = torch.relu(h @ w["fc2.weight"] + w["fc2.bias"])
    loss = torch.nn.functional.cross_entropy(h @ w["out.weight"] + w["out.bias"], torch.tensor(y))
    loss.backward()
    g = np.concatenate([w[n].grad.numpy().ravel() for n, _, _ in step.layout]) * mask
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-5)
    np.testing.assert_allclose(((flat - new) / lr)[mask == 1], g[mask == 1], atol=2e-6)


def test_adam_moments_of_masked_weights_stay_zero():
    trainer, data = _trainer([PRUNE])
    mask = np.zeros(trainer.step_graph.total, np.float32)
    mask[::3] = 1.0
    trainer.stepper.set("state.mask", mask)
    trainer.stepper.set("params", trainer.stepper.get("params") * mask)
    trainer.train_epoch()
    states = trainer.opt_states
    assert np.all(states["m"][mask == 0] == 0) and np.all(states["v"][mask == 0] == 0)
    assert np.all(trainer.stepper.get("params")[mask == 0] == 0)
    assert np.count_nonzero(trainer.stepper.get("params")[mask == 1]) > 0.99 * mask.sum()


def test_digits_mlp_pruned_to_80_percent_stays_accurate(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", SPECS / "digits_mlp.yaml", "--out", out, "-q", "--set", PRUNE)
    assert r.code == 0, r
    summary = json.loads((out / "summary.json").read_text())
    weights = _weights(out / "model.onnx")
    zeros = {k: float(np.mean(weights[k] == 0)) for k in ("fc1.weight", "fc2.weight",
                                                           "out.weight")}
    print(f"pruned digits MLP: zeros {zeros}, test accuracy {summary['test']['accuracy']:.4f}")
    assert all(z >= 0.79 for z in zeros.values()), zeros
    assert summary["sparsity"] == pytest.approx(zeros)
    assert np.count_nonzero(weights["fc1.bias"]) > 0  # biases are not pruned
    assert summary["test"]["accuracy"] >= 0.9
    with np.load(out / "checkpoint.npz") as z:
        assert z["state/mask"].mean() < 0.25  # the mask travels with the checkpoint


def test_resume_with_pruning_equals_uninterrupted(cli, tmp_path, monkeypatch):
    args = ["-q", "--epochs", "6", "--set", "train.prune={sparsity: 0.7, start_epoch: 2, "
            "end_epoch: 5, every: 1}"]
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path, SPECS / "iris.yaml",
                                            args, epoch=4)
    assert (broken / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    a, b = _weights(straight / "model.onnx"), _weights(broken / "model.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.mean(a["hidden.weight"] == 0) == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize("setting, where, message", [
    ("train.prune={end_epoch: 30}", "end_epoch", "is after the last epoch"),
    ("train.prune={start_epoch: 9, end_epoch: 5}", "start_epoch", "is after end_epoch 5"),
    ("train.prune={layers: [fc9]}", "train.prune", "no layer named 'fc9'"),
])
def test_prune_settings_are_checked_at_their_line(cli, tmp_path, setting, where, message):
    spec = tmp_path / "s.yaml"
    spec.write_text((SPECS / "digits_mlp.yaml").read_text().replace(
        "  seed: 0\n", "  seed: 0\n  prune: {sparsity: 0.5}\n"))
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--set", setting)
    assert r.code == 2 and message in r.err and f"{spec}:" in r.err and where in r.err, r
    r = cli("train", spec, "--out", tmp_path / "run2", "-q", "--set",
            "train.early_stopping={patience: 2}")
    assert r.code == 2 and "does not combine with train.prune" in r.err, r
