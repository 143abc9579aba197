"""The split train step (gradient graph, then update graph, dlc.train.step.build_split_step)
gives the fused step's result: what data-parallel training relies on, since it all-reduces the
flat gradient between the two runs. Several steps of Adam with global-norm clipping and a
train.prune keep-mask, on the digits MLP and the digits CNN."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from conftest import SPECS

from dlc.model.network import build_network
from dlc.model.spec import load_spec_text
from dlc.train.step import build_split_step, build_train_step, persistent_values

PRUNE = {"sparsity": 0.5, "start_epoch": 1, "end_epoch": 2, "every": 1}


def network(name: str, **train):
    data = yaml.safe_load((SPECS / name).read_text())
    data["train"].update(train)
    return build_network(load_spec_text(json.dumps(data)))


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(sess, values: dict) -> dict:
    names = {i.name for i in sess.get_inputs()}
    out = sess.run(None, {k: v for k, v in values.items() if k in names})
    return dict(zip([o.name for o in sess.get_outputs()], out))


def carry(values: dict, out: dict) -> dict:
    """The next step's persistent tensors: every `<name>.new` output replaces `<name>`."""
    return {**values, **{k[:-4]: v for k, v in out.items() if k.endswith(".new")}}


def start(net, fused, rng):
    values = persistent_values(net, fused, net.init_params(0))
    if "state.mask" in values:  # a keep-mask with half the weights pruned
        values["state.mask"] = (rng.random(fused.total) < 0.5).astype(np.float32)
        values["params"] = values["params"] * values["state.mask"]
    return values


@pytest.mark.parametrize("spec", ["digits_mlp.yaml", "digits_cnn.yaml"])
@pytest.mark.parametrize("train", [{}, {"clip_norm": 0.05, "prune": PRUNE}],
                         ids=["adam", "adam-clip-prune"])
def test_split_equals_fused(spec, train):
    net, rng = network(spec, **train), np.random.default_rng(0)
    fused, (grad, update) = build_train_step(net), build_split_step(net)
    assert update.states == fused.states and grad.layout == fused.layout
    fs, gs, us = session(fused.model), session(grad.model), session(update.model)
    a = b = start(net, fused, rng)
    for t in range(1, 4):  # one step, then several: optimizer states carried
        x = rng.standard_normal((16, *net.inputs[next(iter(net.inputs))][0])).astype(np.float32)
        batch = {"x": x, "y": rng.integers(0, 10, 16), "lr": np.array(0.01, np.float32),
                 "step": np.array(t, np.float32)}
        ref = run(fs, {**batch, **a})
        g = run(gs, {**batch, **b})
        out = run(us, {**b, **batch, "grad": g["grad"]})
        for name in ("loss", "logits"):
            np.testing.assert_allclose(g[name], ref[name], rtol=1e-6, atol=1e-6)
        for name in ("grad_norm", "params.new", *(f"state.{s}.new" for s in fused.states)):
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-6, atol=1e-6, err_msg=name)
        a, b = carry(a, ref), carry(carry(b, g), out)
    if train:
        assert np.all(b["params"][b["state.mask"] == 0] == 0)  # pruned weights stayed zero
        assert ref["grad_norm"] > 0.05  # clipping was active


@pytest.mark.parametrize("spec,weights", [
    ("digits_mlp.yaml", [0.2, 5, 1, 3, 0.5, 2, 1, 4, 0.3, 1.5]), ("breast_cancer.yaml", [1.0, 4.0])])
def test_weighted_loss_of_worker_rows_adds_up_to_the_whole_batch(spec, weights):
    """A class-weighted loss on a data-parallel worker's rows is normalised by the whole
    batch's weights (its `.all` targets), so the workers' gradients and losses, weighted by
    their share of the rows as dlc.distributed.stepper adds them up, are the whole batch's.
    Uneven shares, so each worker's own normaliser would not do (cross-entropy and BCE)."""
    data = yaml.safe_load((SPECS / spec).read_text())
    data["task"]["class_weights"] = weights
    net, rng = build_network(load_spec_text(json.dumps(data))), np.random.default_rng(0)
    grad, _ = build_split_step(net)
    sess, n = session(grad.model), 16
    x = rng.standard_normal((n, *net.inputs[next(iter(net.inputs))][0])).astype(np.float32)
    y = rng.integers(0, len(weights), n)
    batch = {"x": x, "y": y if len(weights) > 2 else y[:, None].astype(np.float32),
             **{name: rng.random((n, *shape)).astype(np.float32) for name, shape in grad.noise}}
    values = {**persistent_values(net, grad, net.init_params(0)), "y.all": batch["y"]}
    whole = run(sess, {**values, **batch})
    parts = [(rows.stop - rows.start) / n * np.asarray(run(sess, {**values, **{
        k: v[rows] for k, v in batch.items()}})[name]) for rows in (slice(0, 5), slice(5, n))
        for name in ("grad", "loss")]
    np.testing.assert_allclose(parts[0] + parts[2], whole["grad"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(parts[1] + parts[3], whole["loss"], rtol=1e-6)
