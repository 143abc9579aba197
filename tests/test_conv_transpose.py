"""conv_transpose2d: the ConvTranspose VJP rule against central finite differences (float64, with
test_vjp_conv's harness: onnx's reference evaluator, then the float32 graph in onnxruntime), the
layer's shape rule, and one train step against torch.nn.ConvTranspose2d."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracles import needs_torch, torch
from stepio import assert_close
from test_cnn import batch, run_train_step, torch_forward, torch_loss
from test_vjp_conv import Evaluator, check_against_finite_differences
from test_vjp_rules import C, Case

from dlc.autodiff import VJP, gradients
from dlc.graph import Builder
from dlc.model.layers import LAYERS, ShapeError
from dlc.model.network import build_network
from dlc.model.spec import load_spec_text


def ct(shape_x, shape_w, bias=True, tag="", **attrs):
    """ConvTranspose case, W [C_in, C_out / group, k...]; bias=None: an empty bias slot."""
    shapes = (shape_x, shape_w) + (([shape_w[1] * attrs.get("group", 1)],) if bias else ())
    empty = (None,) if bias is None else ()
    return C("ConvTranspose", lambda b, *xs: b.ConvTranspose(*xs, *empty, **attrs), *shapes,
             tag=tag)


CASES = [
    ct([2, 3, 4, 4], [3, 2, 3, 3], tag="k3"),
    ct([2, 3, 4, 4], [3, 2, 3, 3], bias=False, tag="k3-nobias"),
    ct([1, 2, 3, 4], [2, 3, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1],
       tag="s2-p1-op1 (padding same)"),
    ct([2, 2, 3, 3], [2, 2, 2, 3], strides=[3, 2], pads=[1, 0, 0, 2], tag="s3x2-asym-pads"),
    ct([2, 4, 3, 3], [4, 2, 3, 3], group=2, strides=[2, 2], tag="groups2-s2"),
    ct([1, 4, 3, 4], [4, 1, 2, 2], group=4, strides=[2, 2], dilations=[1, 2], bias=None,
       tag="depthwise-empty-bias-slot"),
    ct([2, 3, 5], [3, 2, 3], strides=[2], pads=[1, 0], tag="1d"),
]


def test_the_rule_is_registered():
    assert "ConvTranspose" in VJP


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vjp_matches_finite_differences(case: Case):
    check_against_finite_differences(case, float32=True)


@needs_torch
def test_output_padding_past_the_stride_crops_dx():
    """output_padding >= stride (allowed below the dilation): the Conv of dY sees a row more
    than X has, which the rule crops. onnx's reference evaluator cannot run this ConvTranspose,
    so the float32 gradient graph (onnxruntime) is checked against torch autograd in float64."""
    rng = np.random.default_rng(3)
    x, w, r = (rng.standard_normal(s) for s in ([2, 2, 3, 4], [2, 3, 3, 2], [2, 3, 8, 9]))
    attrs = {"strides": [1, 2], "dilations": [2, 1], "output_padding": [1, 1]}
    b = Builder()
    xi, wi = b.input("x", "float32", list(x.shape)), b.input("w", "float32", list(w.shape))
    y = b.ConvTranspose(xi, wi, **attrs)
    grads = gradients(b, b.ReduceSum(b.Mul(y, b.const(r.astype(np.float32))), keepdims=0),
                      [xi, wi])
    for name, g in grads.items():
        b.output(g, f"d{name}", "float32", list((x if name == "x" else w).shape))
    ops = [n.op_type for n in b.model("crop").graph.node]
    got = Evaluator(b.model("crop"), allow_reference=False)(
        {"x": x.astype(np.float32), "w": w.astype(np.float32)})
    tx, tw = (torch.tensor(v, requires_grad=True) for v in (x, w))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, stride=[1, 2], dilation=[2, 1],
                                              output_padding=[1, 1])
    assert list(ty.shape) == list(r.shape)
    (ty * torch.from_numpy(r)).sum().backward()
    assert "Slice" in ops
    assert_close(got["dx"], tx.grad, "dx")
    assert_close(got["dw"], tw.grad, "dw")


def test_implicit_output_shape_is_refused():
    b = Builder(float_type="float64")
    x, w = b.input("x", "float64", [1, 1, 3, 3]), b.input("w", "float64", [1, 1, 2, 2])
    y = b.ConvTranspose(x, w, strides=[2, 2], output_shape=[6, 6])
    with pytest.raises(NotImplementedError, match="explicit pads"):
        gradients(b, b.ReduceSum(y, keepdims=0), [x])


# ---- the layer's shape rule -----------------------------------------------------------------
def layer(**cfg):
    return LAYERS["conv_transpose2d"]("t", {"type": "conv_transpose2d", "filters": 4, **cfg})


@pytest.mark.parametrize("cfg,in_shape,out", [
    ({"kernel": 3}, (2, 5, 5), (4, 7, 7)),  # valid: (5 - 1) + 2 + 1
    ({"kernel": 2, "stride": 2}, (2, 4, 3), (4, 8, 6)),
    ({"kernel": 3, "stride": 2, "padding": "same"}, (2, 4, 5), (4, 8, 10)),
    ({"kernel": 3, "stride": 2, "padding": "same", "output_padding": 1}, (2, 4, 4), (4, 8, 8)),
    ({"kernel": 4, "stride": 2, "padding": [1, 0, 2, 1]}, (2, 3, 3), (4, 5, 7)),
    ({"kernel": [3, 1], "stride": [2, 1], "dilation": [2, 1], "output_padding": [1, 0]},
     (2, 3, 3), (4, 10, 3)),
])
def test_output_shape(cfg, in_shape, out):
    assert layer(**cfg).output_shape(in_shape) == out


@pytest.mark.parametrize("cfg,in_shape,message", [
    ({"kernel": 3, "stride": 2, "output_padding": 2}, (2, 4, 4), "smaller than the stride"),
    ({"kernel": 3, "dilation": 2, "output_padding": 1}, (2, 4, 4), "smaller than the stride"),
    ({"kernel": 1, "stride": 2, "padding": "same"}, (2, 4, 4), "padding same needs"),
    ({"kernel": 2, "padding": [2, 2]}, (2, 2, 2), "crops the whole output"),
    ({"kernel": 3, "groups": 3}, (2, 4, 4), "groups 3 must divide"),
    ({"kernel": 3}, (16,), "add {type: reshape"),
])
def test_shape_errors(cfg, in_shape, message):
    with pytest.raises(ShapeError, match=message):
        layer(**cfg).output_shape(in_shape)


def test_weight_layout_is_torch_s():
    params = layer(kernel=[3, 2], groups=2).params((6, 4, 4))
    assert [(p.name, p.shape) for p in params] == [("t.weight", (6, 2, 3, 2)), ("t.bias", (4,))]


def test_validate_rejects_a_negative_output_padding(cli, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: s\ninput: {shape: [1, 4, 4]}\nlayers:\n"
                    "  - {type: conv_transpose2d, filters: 2, kernel: 3, output_padding: -1}\n"
                    "task: {kind: regression}\n")
    result = cli("validate", spec)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert f"{spec}:5:" in result.err and "output_padding" in result.err


# ---- one train step against torch.nn.ConvTranspose2d ----------------------------------------
def tconv(filters, kernel, **kw):
    return {"type": "conv_transpose2d", "filters": filters, "kernel": kernel, **kw}


SPECS = {  # name: (input shape, layers, task)
    "same-s2-op1-relu": ([2, 3, 3], [tconv(3, 3, stride=2, padding="same", output_padding=1,
                                           activation="relu"), {"type": "flatten"},
                                     {"type": "dense", "units": 3}], "classification"),
    "groups2-d2-asym-nobias": ([4, 3, 4], [
        tconv(4, [2, 3], stride=[1, 2], dilation=2, groups=2, padding=[1, 0, 0, 2],
              output_padding=[0, 1], use_bias=False, activation="tanh"),
        {"type": "global_avg_pool"}, {"type": "dense", "units": 2}], "regression"),
    "conv-then-upsample": ([2, 6, 6], [
        {"type": "conv2d", "filters": 3, "kernel": 3, "stride": 2, "padding": "same",
         "activation": "relu"},
        tconv(2, 4, stride=2, padding=[1, 1]), {"type": "flatten"},
        {"type": "dense", "units": 3}], "classification"),
}


def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _crop(c, y, in_sizes, strides):
    """dlc's padding cut from torch's uncropped output: same keeps in * stride, its surplus
    split as TensorFlow does (the smaller half first); explicit: [h, w] or [begin..., end...]."""
    if c["padding"] == "valid":
        return y
    if c["padding"] == "same":
        total = [y.shape[2 + i] - in_sizes[i] * strides[i] for i in range(2)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        pads = c["padding"] * 2 if len(c["padding"]) == 2 else c["padding"]
    return y[:, :, pads[0]:y.shape[2] - pads[2], pads[1]:y.shape[3] - pads[3]]


def torch_layers(layers, x, params):
    """test_cnn's float64 torch forward, with conv_transpose2d as torch's conv_transpose2d
    (padding 0 there, the spec's padding then cropped from its output)."""
    for c in layers:
        if c["type"] != "conv_transpose2d":
            x = torch_forward([c], x, params)
            continue
        s = _pair(c["stride"])
        y = torch.nn.functional.conv_transpose2d(  # what torch.nn.ConvTranspose2d.forward runs
            x, params[f"{c['name']}.weight"], params.get(f"{c['name']}.bias"), stride=s,
            dilation=_pair(c["dilation"]), groups=c["groups"],
            output_padding=_pair(c["output_padding"]))
        y = _crop(c, y, x.shape[2:], s)
        x = torch_forward([{"type": c["activation"]}], y, params)
    return x


@needs_torch
@pytest.mark.parametrize("name", SPECS)
def test_train_step_matches_torch(name):
    shape, layers, kind = SPECS[name]
    spec = load_spec_text(json.dumps({
        "dlc": 1, "name": name, "input": {"shape": shape}, "layers": layers,
        "task": {"kind": kind}, "train": {"optimizer": {"type": "sgd", "lr": 0.1}}}))
    net = build_network(spec)
    values = net.init_params(0)
    x, y = batch(net, 4)
    out, _, grads = run_train_step(net, values, x, y)

    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in values.items()}
    logits = torch_layers(net.spec["layers"], torch.from_numpy(x.astype(np.float64)), params)
    loss = torch_loss(net.spec["task"], logits, y)
    loss.backward()
    assert_close(out["loss"], loss, "loss")
    assert_close(out["logits"], logits, "logits")
    assert set(grads) == set(params)
    for k, p in params.items():
        assert float(p.grad.abs().max()) > 1e-6, f"{k}: a degenerate case"
        assert_close(grads[k], p.grad, f"d loss / d {k}")
