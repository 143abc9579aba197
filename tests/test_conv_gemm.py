"""The train graph's im2col lowering of a convolution (dlc.model.layers.conv_gemm): it computes
what Conv computes, its gradients (through the VJP table: Gemm, Concat, Slice, Pad, Transpose)
match central finite differences in float64, it is used exactly where its rule says (narrow
per-image GEMMs), and the exported model keeps the plain Conv. One SGD step against torch for
specs whose convs it lowers: tests/test_cnn.py (its stride-2, asymmetric-padding and conv1d
specs, checked to be lowered here)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT
from test_cnn import make_spec
from test_vjp_rules import TOL64, Case, Evaluator, build_model, err, fd_grad, make_feeds

from dlc.graph import Builder
from dlc.model.layers import conv_gemm
from dlc.model.network import build_network
from dlc.model.spec import load_spec
from dlc.train.step import build_eval_step, build_train_step

# (x shape, w shape, stride, dilation, pads [begin..., end...], bias): small outputs, as lowered
GEOMETRIES = {
    "3x3-pad1": ((2, 3, 4, 4), (5, 3, 3, 3), [1, 1], [1, 1], [1, 1, 1, 1], True),
    "stride2-valid": ((2, 2, 7, 7), (3, 2, 3, 3), [2, 2], [1, 1], [0, 0, 0, 0], True),
    "stride2-asym-pads": ((2, 2, 6, 5), (4, 2, 3, 2), [2, 1], [1, 1], [0, 1, 1, 0], False),
    "dilation2": ((1, 2, 6, 6), (3, 2, 3, 3), [1, 1], [2, 2], [2, 1, 2, 1], False),
    "1x1": ((2, 4, 3, 3), (2, 4, 1, 1), [1, 1], [1, 1], [0, 0, 0, 0], True),
    "conv1d-stride2-dilation2": ((2, 3, 9), (4, 3, 3), [2], [2], [2, 1], True),
}


def _out(xs, ws, s, d, p):
    r = len(s)
    return [(xs[2 + i] + p[i] + p[r + i] - d[i] * (ws[2 + i] - 1) - 1) // s[i] + 1
            for i in range(r)]


def _lowered(geometry):
    xs, ws, s, d, p, bias = GEOMETRIES[geometry]
    return lambda b, x, w, *bb: conv_gemm.lower(b, x, w, bb[0] if bb else None, ws, s, d, p,
                                                _out(xs, ws, s, d, p))


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_lowered_forward_equals_conv(geometry):
    xs, ws, s, d, p, bias = GEOMETRIES[geometry]
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(xs, np.float32), "w": rng.standard_normal(ws, np.float32)}
    if bias:
        feeds["bias"] = rng.standard_normal(ws[:1], np.float32)
    ys = {}
    for form in ("conv", "im2col"):
        b = Builder()
        names = [b.input(k, "float32", v.shape) for k, v in feeds.items()]
        y = b.Conv(*names, kernel_shape=list(ws[2:]), strides=s, dilations=d, pads=p) \
            if form == "conv" else _lowered(geometry)(b, *names)
        b.output(y, "y", "float32")
        sess = ort.InferenceSession(b.model(form).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        ys[form] = sess.run(None, feeds)[0]
    assert ys["im2col"].shape == (xs[0], ws[0], *_out(xs, ws, s, d, p))
    np.testing.assert_allclose(ys["im2col"], ys["conv"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_lowered_gradients_match_finite_differences(geometry):
    """dX, dW (and dB) of the lowered graph in float64: every op it emits, and every op of its
    gradient, has a float64 kernel in onnxruntime."""
    xs, ws, s, d, p, bias = GEOMETRIES[geometry]
    shapes = (xs, ws, ws[:1]) if bias else (xs, ws)
    case = Case("Conv", _lowered(geometry), shapes, tag=f"im2col-{geometry}")
    feeds = make_feeds(case)
    ev = Evaluator(build_model(case, "float64"), allow_reference=False)
    out = ev(feeds)
    for name in feeds:
        assert err(out[f"d{name}"], fd_grad(ev, feeds, name)) < TOL64, f"d{name}"


@pytest.mark.parametrize("out,groups,lowered", [
    ([4, 4], 1, True), ([2, 2], 1, True), ([16], 1, True), ([1, 1], 1, True),
    ([5, 4], 1, False), ([8, 8], 1, False), ([17], 1, False), ([2, 2], 2, False)])
def test_rule_lowers_only_narrow_group1_convs(out, groups, lowered):
    assert conv_gemm.lowers("cpu", groups, out) is lowered
    assert not conv_gemm.lowers("cuda", groups, out)  # measured on CPU only


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", ["conv2d_valid_stride2", "conv2d_same_stride2_asym",
                                  "conv1d_pools", "batchnorm_conv1d_regression"])
def test_train_graph_lowers_test_cnn_specs_and_eval_graph_keeps_conv(name):
    """The torch parity of test_cnn covers the lowering through these specs: their train graphs
    have no Conv left; their eval graphs keep one Conv per conv layer."""
    net = build_network(make_spec(name))
    convs = sum(c["type"].startswith("conv") for c in net.spec["layers"])
    assert "Conv" not in _ops(build_train_step(net).model)
    assert _ops(build_eval_step(net).model).count("Conv") == convs


@pytest.mark.parametrize("spec,lowered", [("specs/digits_cnn.yaml", 0),
                                          ("bench/specs/resnet20.yaml", 0),
                                          ("bench/specs/vgg_small.yaml", 3)])
def test_forward_convs_kept_and_lowered(spec, lowered):
    """The digits CNN's and ResNet-20's convs (8x8 outputs and more), where the lowering
    measured slower (bench/grad_forms.py --cases im2col_digits2,im2col_8x8,...), stay Conv;
    the bench's small VGG has its 4x4 and 2x2 convs lowered (--cases step_vgg_small)."""
    net = build_network(load_spec(ROOT / spec))
    convs = sum(n.layer.cfg["type"] == "conv2d" for n in net.nodes)
    forward = [n.op_type for n in build_train_step(net).model.graph.node if ".grad/" not in n.name]
    assert convs and forward.count("Conv") == convs - lowered
    cuda = build_train_step(net, device="cuda").model.graph.node
    assert [n.op_type for n in cuda if ".grad/" not in n.name].count("Conv") == convs


SPEC = {"dlc": 1, "name": "narrow-cnn", "input": {"shape": [1, 8, 8]},
        "layers": [{"type": "conv2d", "filters": 8, "kernel": 3, "stride": 2, "padding": "same",
                    "activation": "relu"},  # 4x4 outputs: lowered in the train graph
                   {"type": "flatten"}, {"type": "dense", "units": 10}],
        "task": {"kind": "classification", "loss": "cross_entropy", "metrics": ["accuracy"]},
        "data": {"source": "builtin:digits", "split": {"val": 0.1, "test": 0.2, "seed": 0},
                 "normalize": "minmax"},
        "train": {"epochs": 3, "batch_size": 64, "optimizer": {"type": "adam", "lr": 0.01},
                  "seed": 0}}


def test_dlc_train_exports_plain_conv_and_learns(cli, tmp_path):
    """`dlc train` of a spec whose conv is lowered: train.onnx holds the im2col GEMM, the
    exported model.onnx a Conv node, and it learns the digits (chance is 0.1)."""
    spec = tmp_path / "narrow.yaml"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "run"
    r = cli("train", spec, "--out", out, "--quiet")
    assert r.code == 0, r
    assert "Conv" not in _ops(onnx.load(out / "train.onnx"))
    assert "Conv" in _ops(onnx.load(out / "model.onnx"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.8, summary
