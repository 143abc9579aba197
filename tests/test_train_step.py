"""Whole-spec parity of the train-step graph with torch autograd.

For each spec, the same model is written independently in torch (float64, from the same initial
weights `net.init_params(0)`), its loss and gradients come from autograd, and dlc's one-step ONNX
train graph (run in onnxruntime, fp32) must agree on: the loss, the logits (before the output
head), `grad_norm`, and the gradients. The gradient is read back from an SGD step with weight
decay 0: new = p - lr * g, so g = (p - new) / lr. A large power-of-two lr keeps that read-back
accurate to a few fp32 ulps of g itself (with lr = 1, p - new would lose the low bits of small
gradients to the rounding of p).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from oracles import F, needs_torch, torch
from stepio import assert_close, named, pack_feeds

from dlc.model.network import build_network
from dlc.model.spec import load_spec_text
from dlc.train.step import build_train_step


LR = 1024.0  # the gradient read-back lr (see the module docstring)


# --- specs ------------------------------------------------------------------------------------

def dense(units, **kw):
    return {"type": "dense", "units": units, **kw}


def make_spec(layers, task, shape=(4,), train=None, name="parity"):
    data = {"dlc": 1, "name": name, "input": {"shape": list(shape)}, "layers": layers,
            "task": task, "train": {"optimizer": {"type": "sgd", "lr": 0.1}, **(train or {})}}
    return load_spec_text(json.dumps(data))


CE = {"kind": "classification", "loss": "cross_entropy"}

ACTIVATIONS = {  # id -> the activation, as a dense shorthand or as a layer of its own
    "relu": [dense(6, activation="relu")],
    "leaky_relu_0.2": [dense(6), {"type": "leaky_relu", "alpha": 0.2}],
    "elu": [dense(6, activation="elu")],
    "elu_0.5": [dense(6), {"type": "elu", "alpha": 0.5}],
    "selu": [dense(6, activation="selu")],
    "gelu_none": [dense(6), {"type": "gelu", "approximate": "none"}],
    "gelu_tanh": [dense(6), {"type": "gelu", "approximate": "tanh"}],
    "gelu_shorthand": [dense(6, activation="gelu")],
    "silu": [dense(6, activation="silu")],
    "sigmoid": [dense(6), {"type": "sigmoid"}],
    "tanh": [dense(6, activation="tanh")],
    "softplus": [dense(6, activation="softplus")],
    "linear": [dense(6, activation="linear")],
}

SPECS = {
    **{f"act_{k}": dict(layers=[*v, dense(3)], task=CE) for k, v in ACTIVATIONS.items()},
    "deep_no_bias": dict(layers=[dense(5, activation="tanh", use_bias=False),
                                 dense(5, activation="relu"), dense(3, use_bias=False)], task=CE),
    "ce_label_smoothing": dict(layers=[dense(6, activation="relu"), dense(4)],
                               task={**CE, "label_smoothing": 0.1}),
    "ce_softmax_layer": dict(layers=[dense(6, activation="tanh"), dense(3), {"type": "softmax"}],
                             task=CE),
    "ce_softmax_layer_smoothing": dict(
        layers=[dense(6, activation="elu"), dense(3), {"type": "softmax"}],
        task={**CE, "label_smoothing": 0.2}),
    "ce_softmax_shorthand": dict(layers=[dense(6, activation="relu"),
                                         dense(3, activation="softmax")], task=CE),
    "bce": dict(layers=[dense(6, activation="relu"), dense(1)],
                task={"kind": "binary", "loss": "binary_cross_entropy"}),
    "bce_sigmoid_layer": dict(layers=[dense(6, activation="silu"), dense(1), {"type": "sigmoid"}],
                              task={"kind": "binary", "loss": "binary_cross_entropy"}),
    "bce_sigmoid_shorthand": dict(layers=[dense(6, activation="tanh"),
                                          dense(1, activation="sigmoid")],
                                  task={"kind": "binary", "loss": "binary_cross_entropy"}),
    "mse": dict(layers=[dense(6, activation="relu"), dense(2)],
                task={"kind": "regression", "loss": "mse"}),
    "mae": dict(layers=[dense(6, activation="tanh"), dense(2)],
                task={"kind": "regression", "loss": "mae"}),
    "huber_0.5": dict(layers=[dense(6, activation="gelu"), dense(2)],
                      task={"kind": "regression", "loss": "huber", "huber_delta": 0.5}),
    "huber_default": dict(layers=[dense(6, activation="relu"), dense(2)],
                          task={"kind": "regression", "loss": "huber"}),
    "dropout": dict(layers=[dense(8, activation="relu"), {"type": "dropout", "rate": 0.3},
                            dense(6, activation="tanh"), {"type": "dropout", "rate": 0.5},
                            dense(3)], task=CE),
    "dropout_rate0": dict(layers=[dense(6, activation="relu"), {"type": "dropout", "rate": 0.0},
                                  dense(2)], task={"kind": "regression", "loss": "mse"}),
    "flatten_2x3": dict(shape=(2, 3), layers=[{"type": "flatten"}, dense(5, activation="relu"),
                                              dense(3)], task=CE),
    "reshape_dropout_2x3": dict(
        shape=(2, 3),
        layers=[{"type": "dropout", "rate": 0.25}, {"type": "reshape", "shape": [3, 2]},
                {"type": "flatten"}, dense(4, activation="silu"),
                {"type": "reshape", "shape": [2, -1]}, {"type": "flatten"}, dense(2)],
        task={"kind": "regression", "loss": "huber", "huber_delta": 0.5}),
    "reshape_flat_2x3": dict(shape=(2, 3),
                             layers=[{"type": "reshape", "shape": [-1]},
                                     dense(4, activation="sigmoid", use_bias=False), dense(1)],
                             task={"kind": "binary", "loss": "binary_cross_entropy"}),
}


# --- the torch side ---------------------------------------------------------------------------

TORCH_ACT = {
    "linear": lambda x, c: x,
    "relu": lambda x, c: F.relu(x),
    "leaky_relu": lambda x, c: F.leaky_relu(x, c.get("alpha", 0.01)),
    "elu": lambda x, c: F.elu(x, c.get("alpha", 1.0)),
    "selu": lambda x, c: F.selu(x),
    "gelu": lambda x, c: F.gelu(x, approximate=c.get("approximate", "none")),
    "silu": lambda x, c: F.silu(x),
    "sigmoid": lambda x, c: torch.sigmoid(x),
    "tanh": lambda x, c: torch.tanh(x),
    "softplus": lambda x, c: F.softplus(x),
    "softmax": lambda x, c: torch.softmax(x, -1),
}


def torch_head_stripped(layers: list[dict], kind: str) -> list[dict]:
    """The layers up to the logits: a trailing softmax (classification) or sigmoid (binary),
    as a layer or as the last dense layer's activation, is the output head, not part of the loss."""
    head = {"classification": "softmax", "binary": "sigmoid"}.get(kind)
    last = layers[-1]
    if head and last["type"] == head:
        return layers[:-1]
    if head and last.get("activation") == head:
        return [*layers[:-1], {**last, "activation": "linear"}]
    return layers


def torch_forward(layers, x, params, noise):
    n = x.shape[0]
    for c in layers:
        t = c["type"]
        if t == "dense":
            x = x @ params[c["name"] + ".weight"]
            if c["name"] + ".bias" in params:
                x = x + params[c["name"] + ".bias"]
            x = TORCH_ACT[c.get("activation", "linear")](x, c)
        elif t == "dropout":
            rate = c["rate"]
            if rate:
                u = noise[c["name"] + ".noise"]
                keep = torch.from_numpy((u >= np.float32(rate)).astype(np.float64))
                x = x * keep / (1.0 - rate)
        elif t == "flatten":
            x = x.reshape(n, -1)
        elif t == "reshape":
            x = x.reshape(n, *c["shape"])
        else:
            x = TORCH_ACT[t](x, c)
    return x


def torch_loss(task, logits, y):
    loss = task["loss"]
    if loss == "cross_entropy":
        return F.cross_entropy(logits, torch.from_numpy(y),
                               label_smoothing=task.get("label_smoothing", 0.0))
    y = torch.from_numpy(y.astype(np.float64))
    if loss == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(logits, y)
    if loss == "mse":
        return F.mse_loss(logits, y)
    if loss == "mae":
        return F.l1_loss(logits, y)
    if loss == "huber":
        return F.huber_loss(logits, y, delta=task.get("huber_delta", 1.0))
    raise AssertionError(loss)


def torch_reference(net, values, x, y, noise):
    """float64 loss, logits and gradients by autograd, from the same weights and noise."""
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in values.items()}
    layers = torch_head_stripped(net.spec["layers"], net.kind)
    logits = torch_forward(layers, torch.from_numpy(x.astype(np.float64)), params, noise)
    loss = torch_loss(net.spec["task"], logits, y)
    loss.backward()
    return params, logits.detach().numpy(), float(loss.detach())


# --- the dlc side -----------------------------------------------------------------------------

def batch(net, n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *net.input_shape)).astype(np.float32)
    out = net.output_shape[0]
    if net.kind == "classification":
        y = rng.integers(0, out, size=n).astype(np.int64)
    elif net.kind == "binary":
        y = rng.integers(0, 2, size=(n, 1)).astype(np.float32)
    else:
        y = rng.normal(size=(n, out)).astype(np.float32)
    return x, y


def run_step(net, step, values, x, y, lr=LR, noise_seed=2):
    rng = np.random.default_rng(noise_seed)
    noise = {name: rng.random(size=(len(x), *shape)).astype(np.float32)
             for name, shape in step.noise}
    feeds = {"x": x, "y": y, "lr": np.array(lr, np.float32), "step": np.array(1.0, np.float32),
             **pack_feeds(step, values), **noise}
    sess = ort.InferenceSession(step.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return named(step, dict(zip(names, sess.run(None, feeds)))), noise


def read_grads(values, out, lr=LR):
    return {k: (v.astype(np.float64) - out[k + ".new"].astype(np.float64)) / lr
            for k, v in values.items()}




def build(name, train=None):
    cfg = SPECS[name]
    spec = make_spec(cfg["layers"], cfg["task"], shape=cfg.get("shape", (4,)), train=train)
    net = build_network(spec)
    return net, build_train_step(net)


# --- tests ------------------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("name", list(SPECS))
def test_loss_logits_and_grads_match_torch(name, n):
    net, step = build(name)
    values = net.init_params(0)
    assert sorted(step.params) == sorted(values)
    x, y = batch(net, n)
    out, noise = run_step(net, step, values, x, y)
    params, logits, loss = torch_reference(net, values, x, y, noise)

    assert out["loss"].shape == () and out["logits"].shape == (n, net.output_shape[0])
    assert_close(out["loss"], loss, "loss")
    assert_close(out["logits"], logits, "logits")
    grads = read_grads(values, out)
    for k, p in params.items():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, f"{k}: torch gradient is zero"
        assert_close(grads[k], p.grad.numpy(), f"d loss / d {k}")
    norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params.values())))
    assert_close(out["grad_norm"], norm, "grad_norm")


@needs_torch
def test_trailing_softmax_is_stripped_for_the_loss():
    """The loss of a spec that ends in softmax is CE over the pre-softmax logits (not over
    probabilities), the same as the spec without the softmax layer."""
    with_head, step_h = build("ce_softmax_layer")
    spec = SPECS["ce_softmax_layer"]
    without = build_network(make_spec(spec["layers"][:-1], spec["task"]))
    values = with_head.init_params(0)
    assert {k: v.shape for k, v in values.items()} == \
        {k: v.shape for k, v in without.init_params(0).items()}
    x, y = batch(with_head, 6)
    out, _ = run_step(with_head, step_h, values, x, y)
    out2, _ = run_step(without, build_train_step(without), values, x, y)
    np.testing.assert_array_equal(out["loss"], out2["loss"])
    np.testing.assert_array_equal(out["logits"], out2["logits"])
    # CE over the logits, by hand and by torch; not CE over softmax probabilities.
    z = torch.from_numpy(out["logits"].astype(np.float64))
    ce = float(F.cross_entropy(z, torch.from_numpy(y)))
    assert_close(out["loss"], ce, "loss")
    twice = float(F.cross_entropy(torch.softmax(z, -1), torch.from_numpy(y)))
    assert abs(twice - ce) > 1e-3
    # the logits are not normalised
    assert not np.allclose(out["logits"].sum(-1), 1.0)


@needs_torch
def test_dropout_noise_is_the_mask():
    """Noise inputs are named `<layer>.noise` with shape [N, *per-sample shape]; u >= rate keeps
    (u == rate included) and scales by 1 / (1 - rate), u < rate drops."""
    net, step = build("reshape_dropout_2x3")
    assert step.noise == [("dropout_0.noise", (2, 3))]
    values = net.init_params(0)
    x, y = batch(net, 3)
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    assert inputs["dropout_0.noise"].shape[1:] == [2, 3]
    u = np.full((3, 2, 3), 0.25, np.float32)
    u[:, 0, 1] = np.nextafter(np.float32(0.25), np.float32(0))
    feeds = {"x": x, "y": y, "lr": np.array(LR, np.float32), "step": np.array(1.0, np.float32),
             "dropout_0.noise": u, **pack_feeds(step, values)}
    logits = sess.run(["logits"], feeds)[0]
    x_masked = x.astype(np.float64) / 0.75
    x_masked[:, 0, 1] = 0.0
    layers = net.spec["layers"]
    assert layers[0]["type"] == "dropout"
    params = {k: torch.from_numpy(v.astype(np.float64)) for k, v in values.items()}
    ref = torch_forward(layers[1:], torch.from_numpy(x_masked), params, {})
    assert_close(logits, ref.numpy(), "logits with a hand-made mask")


@needs_torch
def test_gradient_flows_only_through_kept_units():
    """A unit dropped for every sample gives a zero gradient to the weights it feeds."""
    net, step = build("dropout")
    values = net.init_params(0)
    x, y = batch(net, 5)
    rng = np.random.default_rng(3)
    noise = {"dropout_1.noise": rng.random((5, 8)).astype(np.float32),
             "dropout_3.noise": rng.random((5, 6)).astype(np.float32)}
    noise["dropout_1.noise"][:, 2] = 0.0  # unit 2 of the first hidden layer: always dropped
    feeds = {"x": x, "y": y, "lr": np.array(LR, np.float32), "step": np.array(1.0, np.float32),
             **pack_feeds(step, values), **noise}
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = named(step, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))
    grads = read_grads(values, out)
    assert np.all(grads["dense_0.weight"][:, 2] == 0) and grads["dense_0.bias"][2] == 0
    assert np.all(grads["dense_2.weight"][2, :] == 0)
    params, _, _ = torch_reference(net, values, x, y, noise)
    for k, p in params.items():
        assert_close(grads[k], p.grad.numpy(), f"d loss / d {k}")


@needs_torch
@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("name", ["mse", "dropout", "ce_label_smoothing", "deep_no_bias"])
def test_clip_norm_matches_torch(name, n):
    clip = 0.1
    net, step = build(name, train={"clip_norm": clip})
    values = net.init_params(0)
    x, y = batch(net, n)
    x = x * 4  # larger gradients: the global norm must exceed clip_norm for the test to bite
    out, noise = run_step(net, step, values, x, y)
    params, _, loss = torch_reference(net, values, x, y, noise)
    assert_close(out["loss"], loss, "loss")
    raw = torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
    assert float(raw) > 2 * clip, "test data too tame: clipping would not apply"
    assert_close(out["grad_norm"], float(raw), "grad_norm (before clipping)")
    grads = read_grads(values, out)
    for k, p in params.items():
        assert_close(grads[k], p.grad.numpy(), f"clipped d loss / d {k}")
    total = np.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert abs(total - clip) < 1e-4 * clip


def test_clip_norm_above_the_norm_is_a_no_op():
    net, step = build("mse", train={"clip_norm": 1e6})
    net0, step0 = build("mse")
    values = net.init_params(0)
    x, y = batch(net, 5)
    out, _ = run_step(net, step, values, x, y)
    out0, _ = run_step(net0, step0, values, x, y)
    assert out["grad_norm"] < 1e6
    for k in values:
        np.testing.assert_allclose(out[k + ".new"], out0[k + ".new"], rtol=0, atol=1e-6)


@needs_torch
def test_sgd_step_at_lr_0_1():
    """The plain reading of the step: new = p - 0.1 * torch's gradient."""
    net, step = build("dropout")
    values = net.init_params(0)
    x, y = batch(net, 4)
    out, noise = run_step(net, step, values, x, y, lr=0.1)
    params, _, _ = torch_reference(net, values, x, y, noise)
    for k, p in params.items():
        expected = values[k].astype(np.float64) - 0.1 * p.grad.numpy()
        np.testing.assert_allclose(out[k + ".new"], expected, rtol=0, atol=1e-6)


def test_huber_and_mae_cover_both_branches():
    """The regression data puts residuals on both sides of huber_delta (and of 0 for mae), so
    the parity tests above exercise both pieces of each loss."""
    for name in ["huber_0.5", "mae", "reshape_dropout_2x3"]:
        net, step = build(name)
        values = net.init_params(0)
        x, y = batch(net, 7)
        out, _ = run_step(net, step, values, x, y)
        d = out["logits"] - y
        assert (d > 0).any() and (d < 0).any()
        if net.spec["task"]["loss"] == "huber":
            assert (np.abs(d) < 0.5).any() and (np.abs(d) > 0.5).any()
