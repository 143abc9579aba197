"""Convolutional specs end to end: one train step against torch autograd, batchnorm's running
statistics, the exported inference model, and `dlc train` / `dlc predict` of specs/digits_cnn.yaml.

Every spec below is written independently in torch (float64, from the same initial weights:
dlc conv weights are [F, C/G, k...] like torch's, dense weights are [in, out] = torch weight.T).
dlc's train-step graph (onnxruntime, fp32) takes one SGD step; the gradient is read back as
(p - new) / lr. The lr is a large power of two (as in test_train_step) rather than 1, so that the
read-back keeps the low bits of small gradients; it is the same SGD step otherwise.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SPECS
from oracles import F, needs_torch, torch
from stepio import assert_close
from test_compile import numpy_forward, window_pads

from dlc.model.compile import compile_spec, inference_model
from dlc.model.network import build_network
from dlc.model.spec import load_spec, load_spec_text
from dlc.train.step import build_eval_step, build_train_step


LR = 1024.0
TOL = 1e-4  # fp32 vs float64, relative to the largest |value| of the torch tensor


# ---- specs ------------------------------------------------------------------------------------
def conv(filters, kernel, rank=2, **kw):
    return {"type": f"conv{rank}d", "filters": filters, "kernel": kernel, **kw}


def dense(units, **kw):
    return {"type": "dense", "units": units, **kw}


FLAT = {"type": "flatten"}
CE = {"kind": "classification", "loss": "cross_entropy"}
MSE = {"kind": "regression", "loss": "mse"}

CNN_SPECS = {  # name: (input shape, layers, task)
    "conv2d_same_relu_maxpool": ([2, 6, 6], [
        conv(4, 3, padding="same", activation="relu"), {"type": "maxpool2d", "pool": 2},
        FLAT, dense(3)], CE),
    "conv2d_valid_stride2": ([3, 7, 7], [
        conv(4, 3, stride=2, activation="tanh"), FLAT, dense(3)], CE),
    "conv2d_same_stride2_asym": ([2, 6, 6], [  # same with stride 2 on 6: pads [0, 0, 1, 1]
        conv(3, 3, stride=2, padding="same", activation="elu"), FLAT, dense(3)], CE),
    "conv2d_dilation2_same": ([2, 7, 7], [
        conv(3, 3, dilation=2, padding="same", activation="relu"),
        {"type": "global_avg_pool"}, dense(3)], CE),
    "conv2d_groups2": ([4, 5, 5], [
        conv(6, 3, groups=2, padding="same", activation="relu"),
        conv(4, [2, 3], stride=[1, 2], groups=2, use_bias=False), FLAT, dense(3)], CE),
    "depthwise_pointwise": ([3, 6, 6], [
        conv(6, 3, groups=3, padding="same", activation="relu"),  # depth multiplier 2
        conv(4, 1), {"type": "global_max_pool"}, dense(3)], CE),
    "conv2d_explicit_padding": ([2, 5, 6], [
        conv(3, 3, padding=[1, 0], activation="relu"), conv(3, 2, padding=[0, 1, 1, 2]),
        FLAT, dense(3)], CE),
    "conv1d_pools": ([3, 12], [
        conv(4, 3, rank=1, padding="same", activation="relu"), {"type": "maxpool1d", "pool": 2},
        conv(4, 3, rank=1, stride=2, dilation=2, padding="same", activation="silu"),
        {"type": "avgpool1d", "pool": 2, "padding": "same"}, FLAT, dense(3)], CE),
    "avgpool2d_same": ([2, 7, 7], [  # 7 -> 4: pads [0, 0, 1, 1], the padding not counted
        conv(3, 3, padding="same", activation="relu"),
        {"type": "avgpool2d", "pool": 2, "padding": "same"}, FLAT, dense(3)], CE),
    "maxpool2d_same_stride2": ([2, 7, 7], [  # 5 -> 3: pads [1, 1, 1, 1]
        conv(3, 3, activation="relu"),
        {"type": "maxpool2d", "pool": 3, "stride": 2, "padding": "same"}, FLAT, dense(3)], CE),
    "global_max_pool_regression": ([2, 5, 5], [
        conv(4, 3, padding="same", activation="tanh"), {"type": "global_max_pool"},
        dense(2)], MSE),
    "zero_padding": ([2, 5, 5], [
        {"type": "zero_padding", "padding": 1}, conv(3, 3, activation="relu"),
        {"type": "zero_padding", "padding": [1, 2]},
        {"type": "zero_padding", "padding": [0, 1, 2, 0]}, conv(2, 3), FLAT, dense(3)], CE),
    "batchnorm_conv_and_dense": ([2, 6, 6], [
        conv(4, 3, padding="same"), {"type": "batchnorm"}, {"type": "relu"},
        {"type": "maxpool2d", "pool": 2}, FLAT, dense(8),
        {"type": "batchnorm", "momentum": 0.8, "epsilon": 1e-3}, {"type": "relu"}, dense(3)], CE),
    "batchnorm_conv1d_regression": ([2, 10], [
        conv(3, 3, rank=1, padding="same", use_bias=False),
        {"type": "batchnorm", "momentum": 0.5}, {"type": "tanh"}, {"type": "global_avg_pool"},
        dense(2)], MSE),
    "layernorm_conv_and_dense": ([2, 5, 5], [
        conv(3, 3, padding="same"), {"type": "layernorm"}, {"type": "relu"}, FLAT, dense(8),
        {"type": "layernorm", "epsilon": 1e-3}, {"type": "tanh"}, dense(3)], CE),
}
HAS_DENSE_BATCHNORM = {"batchnorm_conv_and_dense"}  # a batch of 1 has no variance there
ZERO_GRAD = {  # biases that a following normalisation removes: their gradient is exactly zero
    "batchnorm_conv_and_dense": {"conv2d_0.bias", "dense_5.bias"},
    "layernorm_conv_and_dense": {"conv2d_0.bias"},  # per channel, so constant along the W axis
}


def make_spec(name):
    shape, layers, task = CNN_SPECS[name]
    data = {"dlc": 1, "name": name.replace("_", "-"), "input": {"shape": shape},
            "layers": layers, "task": task, "train": {"optimizer": {"type": "sgd", "lr": 0.1}}}
    return load_spec_text(json.dumps(data))


# ---- torch ------------------------------------------------------------------------------------
TORCH_ACT = {
    "linear": lambda x, c: x,
    "relu": lambda x, c: F.relu(x),
    "elu": lambda x, c: F.elu(x, c.get("alpha", 1.0)),
    "silu": lambda x, c: F.silu(x),
    "tanh": lambda x, c: torch.tanh(x),
}


def _ints(v, r):
    return [v] * r if isinstance(v, int) else list(v)


def _pad(x, pads, value=0.0):
    """ONNX-style [begin..., end...] pads over the trailing spatial dims, via F.pad."""
    r = len(pads) // 2
    spec = []
    for i in reversed(range(r)):
        spec += [pads[i], pads[r + i]]
    return F.pad(x, spec, value=value)


def _pool(x, c):
    r = x.dim() - 2
    k = _ints(c["pool"], r)
    s = _ints(c.get("stride") or k, r)
    pads = window_pads(c.get("padding", "valid"), x.shape[2:], k, s, [1] * r)
    if c["type"].startswith("max"):
        return getattr(F, f"max_pool{r}d")(_pad(x, pads, -float("inf")), k, s)
    avg = getattr(F, f"avg_pool{r}d")
    return avg(_pad(x, pads), k, s) / avg(_pad(torch.ones_like(x), pads), k, s)  # excl. padding


def torch_forward(layers, x, params, training=True, buffers=None):
    """float64 forward; `buffers` holds batchnorm running statistics (updated in place when
    training, as torch does)."""
    for c in layers:
        t, name = c["type"], c.get("name")
        if t == "dense":
            x = x @ params[f"{name}.weight"]
            x = x + params[f"{name}.bias"] if f"{name}.bias" in params else x
            x = TORCH_ACT[c.get("activation", "linear")](x, c)
        elif t in ("conv1d", "conv2d"):
            r = x.dim() - 2
            k, s, d = _ints(c["kernel"], r), _ints(c["stride"], r), _ints(c["dilation"], r)
            pads = window_pads(c["padding"], x.shape[2:], k, s, d)
            x = getattr(F, f"conv{r}d")(_pad(x, pads), params[f"{name}.weight"],
                                        params.get(f"{name}.bias"), stride=s, dilation=d,
                                        groups=c["groups"])
            x = TORCH_ACT[c.get("activation", "linear")](x, c)
        elif t in ("maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d"):
            x = _pool(x, c)
        elif t == "global_avg_pool":
            x = x.mean(dim=tuple(range(2, x.dim())))
        elif t == "global_max_pool":
            x = x.amax(dim=tuple(range(2, x.dim())))
        elif t == "zero_padding":
            r, p = x.dim() - 2, c["padding"]
            x = _pad(x, window_pads([p] * r if isinstance(p, int) else p, x.shape[2:],
                                    [1] * r, [1] * r, [1] * r))
        elif t == "batchnorm":
            x = F.batch_norm(x, buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"],
                             params[f"{name}.gamma"], params[f"{name}.beta"], training=training,
                             momentum=1.0 - c["momentum"], eps=c["epsilon"])
        elif t == "layernorm":
            x = F.layer_norm(x, (x.shape[-1],), params[f"{name}.gamma"], params[f"{name}.beta"],
                             eps=c["epsilon"])
        elif t == "flatten":
            x = x.reshape(len(x), -1)
        else:
            x = TORCH_ACT[t](x, c)
    return x


def torch_loss(task, logits, y):
    if task["loss"] == "cross_entropy":
        return F.cross_entropy(logits, torch.from_numpy(y))
    return F.mse_loss(logits, torch.from_numpy(y.astype(np.float64)))


def torch_step(net, values, x, y):
    """Loss, logits, gradients and the updated running statistics, by torch autograd."""
    trainable = {p.name for p in net.params if p.trainable}
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in trainable)
              for k, v in values.items()}
    buffers = {k: v.detach().clone() for k, v in params.items() if k not in trainable}
    logits = torch_forward(net.spec["layers"], torch.from_numpy(x.astype(np.float64)), params,
                           buffers=buffers)
    loss = torch_loss(net.spec["task"], logits, y)
    loss.backward()
    grads = {k: params[k].grad.numpy() for k in trainable}
    return float(loss.detach()), logits.detach().numpy(), grads, {k: v.numpy() for k, v in buffers.items()}


# ---- dlc --------------------------------------------------------------------------------------
def batch(net, n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *net.input_shape)).astype(np.float32)
    if net.kind == "classification":
        return x, rng.integers(0, net.output_shape[0], size=n).astype(np.int64)
    return x, rng.normal(size=(n, net.output_shape[0])).astype(np.float32)


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_train_step(net, values, x, y, lr=LR):
    """One SGD step; returns (outputs, new value of every parameter, gradients by read-back).
    Takes either train-step layout: one input per parameter, or the flat `params` vector."""
    step = build_train_step(net)
    sess = session(step.model)
    inputs = {i.name for i in sess.get_inputs()}
    feeds = {"x": x, "y": y, "lr": np.array(lr, np.float32), "step": np.array(1.0, np.float32),
             **values}
    if "params" in inputs:
        feeds["params"] = step.pack(values)
        feeds.update({f"state.{s}": np.zeros(step.total, np.float32) for s in step.states})
    assert not step.noise and not step.states, "a plain SGD step with no dropout"
    out = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {k: v for k, v in feeds.items() if k in inputs})))
    new = step.unpack(out["params.new"]) if "params.new" in out else \
        {k: out[f"{k}.new"] for k in step.params}
    new.update({p.name: out[f"{p.name}.new"] for p in net.params if not p.trainable})
    grads = {k: (values[k].astype(np.float64) - new[k].astype(np.float64)) / lr
             for k in step.params}
    return out, new, grads




# ---- train step parity ------------------------------------------------------------------------
CASES = [(name, n) for name in CNN_SPECS for n in (5, 1)
         if not (n == 1 and name in HAS_DENSE_BATCHNORM)]


@needs_torch
@pytest.mark.parametrize("name,n", CASES, ids=[f"{a}-n{b}" for a, b in CASES])
def test_train_step_matches_torch(name, n):
    net = build_network(make_spec(name))
    values = net.init_params(0)
    x, y = batch(net, n)
    out, new, grads = run_train_step(net, values, x, y)
    loss, logits, tgrads, tbuffers = torch_step(net, values, x, y)

    assert_close(out["loss"], loss, "loss")
    assert_close(out["logits"], logits, "logits")
    assert set(grads) == set(tgrads)
    scale = max(float(np.abs(g).max()) for g in tgrads.values())
    zero = {k for k, g in tgrads.items() if np.abs(g).max() < 1e-12 * scale}
    assert zero == ZERO_GRAD.get(name, set()), "unexpected (non-)zero torch gradients"
    for k, g in tgrads.items():
        if k in zero:
            assert np.abs(grads[k]).max() < TOL * scale, f"d loss / d {k} should be ~0"
        else:
            assert_close(grads[k], g, f"d loss / d {k}")
    assert_close(out["grad_norm"], np.sqrt(sum((g ** 2).sum() for g in tgrads.values())),
                 "grad_norm")
    for k, v in tbuffers.items():  # batchnorm: running = m * running + (1 - m) * batch
        assert not np.allclose(v, values[k]), f"{k}: torch did not update it"
        assert_close(new[k], v, f"{k} after one step")


@needs_torch
@pytest.mark.parametrize("name", ["batchnorm_conv_and_dense", "batchnorm_conv1d_regression"])
def test_batchnorm_eval_uses_running_statistics(name):
    """Two train steps update the running statistics (matching torch after each); the eval
    graph and the exported model then normalise with them, not with the batch's."""
    spec = make_spec(name)
    net = build_network(spec)
    values = net.init_params(0)
    trainable = {p.name for p in net.params if p.trainable}
    tvalues = dict(values)
    for seed in (1, 2):
        x, y = batch(net, 6, seed=seed)
        _, new, _ = run_train_step(net, values, x, y, lr=0.05)
        *_, tbuffers = torch_step(net, tvalues, x, y)
        for k, v in tbuffers.items():
            assert_close(new[k], v, f"{k} after step (seed {seed})")
        values = {**values, **{k: v for k, v in new.items() if k not in trainable}}
        tvalues = {**tvalues, **tbuffers}
    x, y = batch(net, 4, seed=3)
    params = {k: torch.from_numpy(v.astype(np.float64)) for k, v in values.items()}
    expected = torch_forward(net.spec["layers"], torch.from_numpy(x.astype(np.float64)),
                             params, training=False, buffers=params).numpy()
    train_mode = torch_forward(net.spec["layers"], torch.from_numpy(x.astype(np.float64)),
                               params, training=True,
                               buffers={k: v.clone() for k, v in params.items()}).numpy()
    assert not np.allclose(expected, train_mode, rtol=1e-2), "running stats == batch stats"

    ev = build_eval_step(net)
    sess = session(ev.model)
    feeds = {"x": x, "y": y, **values}
    inputs = {i.name for i in sess.get_inputs()}
    logits = sess.run(["logits"], {k: v for k, v in feeds.items() if k in inputs})[0]
    assert_close(logits, expected, "eval-step logits")

    model = inference_model(spec, net, values)
    onnx.checker.check_model(model, full_check=True)
    out = dict(zip([o.name for o in session(model).get_outputs()],
                   session(model).run(None, {"input": x})))
    assert_close(out["logits" if net.kind != "regression" else "prediction"], expected,
                 "inference-model output")
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}


# ---- the exported inference model -------------------------------------------------------------
def _inference_outputs(model, x):
    sess = session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


@needs_torch
@pytest.mark.parametrize("name", list(CNN_SPECS))
def test_inference_model_matches_torch_eval_and_numpy(name):
    """The exported model (random running statistics, so that batchnorm's inference path is not
    the identity) passes the full checker and matches torch's eval forward and the numpy oracle
    of test_compile."""
    spec = make_spec(name)
    net = build_network(spec)
    rng = np.random.default_rng(5)
    values = net.init_params(3)
    for p in net.params:
        if p.name.endswith("running_mean"):
            values[p.name] = rng.normal(0, 0.5, p.shape).astype(np.float32)
        elif p.name.endswith("running_var"):
            values[p.name] = rng.uniform(0.5, 2.0, p.shape).astype(np.float32)
    model = inference_model(spec, net, values)
    onnx.checker.check_model(model, full_check=True)
    x, _ = batch(net, 3, seed=4)
    out = _inference_outputs(model, x)
    params = {k: torch.from_numpy(v.astype(np.float64)) for k, v in values.items()}
    expected = torch_forward(net.spec["layers"], torch.from_numpy(x.astype(np.float64)),
                             params, training=False, buffers=params).numpy()
    key = "prediction" if net.kind == "regression" else "logits"
    assert_close(out[key], expected, "torch eval forward")
    assert_close(out[key], numpy_forward(spec, values, x), "numpy oracle")


@needs_torch
def test_digits_cnn_compiles_and_matches_torch():
    spec = load_spec(SPECS / "digits_cnn.yaml")
    net = build_network(spec)
    model = compile_spec(spec)
    onnx.checker.check_model(model, full_check=True)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 8, 8]
    values = net.init_params(spec.data["train"]["seed"])
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    out = _inference_outputs(model, x)
    params = {k: torch.from_numpy(v.astype(np.float64)) for k, v in values.items()}
    expected = torch_forward(net.spec["layers"], torch.from_numpy(x.astype(np.float64)),
                             params, training=False).numpy()
    assert_close(out["logits"], expected, "logits")
    np.testing.assert_array_equal(out["class_index"], expected.argmax(1))


# ---- the CLI ----------------------------------------------------------------------------------
DIGITS_SAMPLE_LABELS = [8, 8, 4, 9, 0, 8, 9, 8]  # sklearn digits rows 1789..1796


@pytest.mark.slow
def test_train_digits_cnn_and_predict_csv(cli, tmp_path):
    """`dlc train` of the CNN spec as it is (20 epochs) reaches the README's target, accuracy
    >= 0.985; `dlc predict` feeds it the 64-column csv, each row reshaped to the spec's 1x8x8
    input (row-major, pixel_r_c)."""
    out = tmp_path / "run"
    r = cli("train", SPECS / "digits_cnn.yaml", "--out", out, "--quiet")
    assert r.code == 0, r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 20 and summary["test"]["accuracy"] >= 0.985, summary
    model_path = out / "model.onnx"
    onnx.checker.check_model(onnx.load(model_path), full_check=True)

    sample = SPECS / "data" / "digits_sample.csv"
    r = cli("predict", model_path, sample)
    assert r.code == 0, r
    rows = r.out.strip().splitlines()
    assert rows[0].split(",")[:2] == ["class_index", "label"] and len(rows) == 9
    predicted = [int(row.split(",")[0]) for row in rows[1:]]
    probs = np.array([[float(v) for v in row.split(",")[2:]] for row in rows[1:]])
    assert probs.shape == (8, 10) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert sum(p == t for p, t in zip(predicted, DIGITS_SAMPLE_LABELS)) >= 7, predicted

    pixels = np.loadtxt(sample, delimiter=",", skiprows=1, dtype=np.float32)
    direct = _inference_outputs(onnx.load(model_path), pixels.reshape(-1, 1, 8, 8))
    assert predicted == direct["class_index"].tolist()
    np.testing.assert_allclose(probs, direct["probabilities"], rtol=1e-4, atol=1e-6)
