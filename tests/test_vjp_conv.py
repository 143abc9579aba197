"""The convolution / pooling rules of the VJP table (Conv, MaxPool, AveragePool, Pad, ReduceMax),
checked against central finite differences in float64 with the harness of test_vjp_rules.

onnxruntime 1.31 CPU has no float64 kernel for Conv, ConvTranspose or AveragePool: those graphs
run in onnx's ReferenceEvaluator in float64, and the float32 build of the same gradient graph must
then run in onnxruntime and agree with the float64 result to ~1e-4 (the emitted ONNX is what
training runs). MaxUnpool (the gradient of a pool whose windows do not overlap) has no float64
kernel either. MaxPool (with Indices), ScatterElements (the overlapping pools' gradient), Pad and
ReduceMax have float64 kernels, so those cases run in onnxruntime directly. The finite differences evaluate a loss-only graph
(no backward nodes), which keeps the reference evaluator cheap.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
import test_vjp_rules
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _ReferenceConvTranspose
from test_vjp_rules import TOL32, TOL64, C, Case, Erf, build_model, err, fd_grad, sample

from dlc.autodiff.driver import gradients, infer_shapes
from dlc.autodiff.rules import VJP
from dlc.graph import Builder

NEW_OPS = ("Conv", "MaxPool", "AveragePool", "Pad", "ReduceMax")


def _i64(*v):
    return np.array(v, np.int64)


def conv(shape_x, shape_w, bias=True, tag="", **attrs):
    """Conv case: x and w (and b) are all differentiable inputs. bias=None: an empty input slot
    (`b.Conv(x, w, None)`, as dlc's conv layer emits with use_bias: false)."""
    shapes = (shape_x, shape_w) + (([shape_w[0]],) if bias else ())
    empty = (None,) if bias is None else ()
    return C("Conv", lambda b, *xs: b.Conv(*xs, *empty, **attrs), *shapes,
             tag=tag or "-".join(f"{k}{v}" for k, v in attrs.items()) + ("" if bias else "-nobias"))


def maxpool(shape, tag, y_only=False, **attrs):
    """y_only: the node has no Indices output (what exporters write); the rule pools again."""
    def build(b, x):
        return b.MaxPool(x, **attrs) if y_only else b.MaxPool(x, outputs=2, **attrs)[0]
    return C("MaxPool", build, shape, domain="distinct", tag=tag)


def avgpool(shape, tag, **attrs):
    return C("AveragePool", lambda b, x: b.AveragePool(x, **attrs), shape, tag=tag)


def pad(shape, pads, tag, value=None, axes=None):
    def build(b, x):
        extra = [b.const(value) if value is not None else None] if value is not None or axes else []
        if axes is not None:
            extra.append(b.const(_i64(*axes)))
        return b.Pad(x, b.const(_i64(*pads)), *extra, mode="constant")
    return C("Pad", build, shape, tag=tag)


def reduce_max(shape, axes, keepdims):
    def build(b, x):
        return b.ReduceMax(x, *([b.const(_i64(*axes))] if axes else []), keepdims=keepdims)
    return C("ReduceMax", build, shape, domain="distinct",
             tag=f"axes{list(axes) if axes else 'None'}-keepdims{keepdims}")


CASES = [
    # ---- Conv 2-D ----
    conv([2, 3, 5, 5], [4, 3, 3, 3], tag="k3"),
    conv([2, 3, 5, 5], [4, 3, 3, 3], bias=False, tag="k3-nobias"),
    conv([1, 2, 5, 4], [3, 2, 3, 3], pads=[1, 1, 1, 1], tag="batch1-p1"),
    conv([2, 2, 7, 6], [3, 2, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1], tag="s2-p1-odd"),
    conv([2, 2, 6, 6], [2, 2, 3, 3], strides=[2, 2], tag="s2-dropped-tail"),  # output_padding 1
    conv([1, 2, 7, 5], [2, 2, 2, 2], strides=[3, 2], tag="stride-gt-kernel"),  # output_padding 2/1
    conv([2, 2, 5, 6], [3, 2, 3, 3], pads=[1, 0, 0, 2], tag="asym-pads"),
    conv([1, 2, 7, 7], [2, 2, 3, 3], dilations=[2, 2], tag="d2"),
    conv([1, 2, 8, 7], [3, 2, 3, 2], dilations=[2, 1], strides=[1, 2], pads=[2, 0, 1, 1],
         tag="d2x1-s1x2-asym"),
    conv([2, 2, 5, 7], [3, 2, 2, 3], strides=[2, 1], tag="kernel2x3-s2x1"),
    conv([2, 4, 5, 5], [6, 2, 3, 3], group=2, tag="groups2"),
    conv([1, 4, 7, 6], [4, 2, 3, 3], group=2, strides=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 2],
         tag="groups2-s2-d2-asym"),
    conv([2, 4, 5, 5], [6, 2, 3, 3], bias=False, group=2, tag="groups2-nobias"),
    conv([2, 4, 5, 5], [4, 2, 3, 3], bias=None, group=2, tag="groups2-empty-bias-slot"),
    conv([2, 3, 6], [2, 3, 2], bias=None, strides=[2], tag="1d-empty-bias-slot"),
    conv([2, 3, 5, 5], [3, 1, 3, 3], group=3, pads=[1, 1, 1, 1], tag="depthwise"),
    conv([1, 3, 6, 5], [6, 1, 3, 3], group=3, strides=[2, 2], tag="depthwise-x2-s2"),
    conv([2, 3, 4, 4], [5, 3, 1, 1], tag="pointwise"),
    # stride 1 with a pad past the kernel's reach d (k - 1): dX by ConvTranspose, not the
    # flipped Conv (its pads would be negative)
    conv([1, 2, 5, 4], [2, 2, 3, 3], pads=[3, 0, 1, 2], tag="pads-past-reach"),
    conv([2, 3, 4, 4], [2, 3, 1, 1], pads=[0, 1, 0, 0], tag="pointwise-padded"),
    conv([1, 4, 7, 6], [4, 2, 3, 2], group=2, dilations=[2, 1], pads=[2, 0, 1, 1],
         tag="groups2-d2x1-asym"),
    # C * prod(kernel) >= 64: dW by one GEMM per kernel offset, batch axis last (the cases
    # above, with few input channels, take the batched per-image GEMM)
    conv([2, 8, 5, 5], [3, 8, 3, 3], pads=[1, 1, 1, 1], tag="taps-same"),
    conv([1, 8, 8, 7], [2, 8, 3, 3], strides=[2, 2], dilations=[2, 2], pads=[1, 0, 2, 1],
         tag="taps-s2-d2-asym"),
    conv([1, 11, 9, 6], [2, 11, 3, 2], strides=[2, 1], dilations=[1, 2], pads=[0, 2, 1, 0],
         bias=False, tag="taps-kernel3x2-s2x1-d1x2-asym"),
    conv([1, 64, 3, 2], [2, 64, 1, 1], tag="taps-pointwise"),
    conv([1, 8, 5, 18], [2, 8, 3, 3], strides=[2, 1], dilations=[1, 2], pads=[1, 0, 0, 2],
         tag="taps-wide-s2x1-d1x2-asym"),  # output rows >= 16 wide: [C, N, *S] layout
    # >= 256 output positions and C * prod(kernel) >= 64: dW by batched per-image MatMuls, one
    # per kernel offset
    conv([2, 8, 16, 16], [2, 8, 3, 3], pads=[1, 1, 1, 1], bias=False, tag="per-image-same"),
    conv([1, 8, 33, 17], [2, 8, 3, 3], strides=[2, 1], pads=[0, 1, 1, 0],
         tag="per-image-s2x1-asym"),
    conv([1, 24, 260], [2, 24, 3], dilations=[2], pads=[1, 1], tag="1d-per-image-d2"),
    # ---- Conv 1-D ----
    conv([2, 3, 9], [4, 3, 3], tag="1d-k3"),
    conv([2, 3, 10], [4, 3, 3], strides=[2], pads=[1, 2], dilations=[2], tag="1d-s2-d2-asym"),
    conv([1, 16, 11], [2, 16, 4], strides=[2], pads=[2, 1], dilations=[2],
         tag="1d-taps-s2-d2-asym"),
    conv([1, 4, 8], [4, 2, 2], group=2, strides=[3], tag="1d-groups2-s3"),
    conv([2, 2, 7], [2, 1, 3], bias=False, group=2, pads=[1, 1], tag="1d-depthwise-nobias"),
    # ---- MaxPool (values distinct so that the argmax is stable under +-EPS) ----
    maxpool([2, 2, 6, 6], "k2s2", kernel_shape=[2, 2], strides=[2, 2]),
    maxpool([2, 2, 5, 5], "k2s2-odd", kernel_shape=[2, 2], strides=[2, 2]),
    maxpool([2, 2, 7, 6], "k3s2p1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    maxpool([1, 2, 5, 5], "k3s1p1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),  # overlapping
    maxpool([2, 3, 7, 5], "k2x3-s1x2-asym", kernel_shape=[2, 3], strides=[1, 2],
            pads=[0, 1, 1, 0]),
    maxpool([1, 2, 7, 7], "k2-d2", kernel_shape=[2, 2], dilations=[2, 2]),
    maxpool([2, 3, 9], "1d-k3s2p1", kernel_shape=[3], strides=[2], pads=[1, 1]),
    maxpool([2, 2, 8], "1d-k2s2", kernel_shape=[2], strides=[2]),
    maxpool([2, 2, 7, 6], "k3s2p1-y-only", y_only=True, kernel_shape=[3, 3], strides=[2, 2],
            pads=[1, 1, 1, 1]),
    maxpool([2, 3, 9], "1d-k3s2-y-only", y_only=True, kernel_shape=[3], strides=[2]),
    # ---- AveragePool ----
    avgpool([2, 2, 6, 6], "k2s2", kernel_shape=[2, 2], strides=[2, 2]),
    avgpool([2, 2, 5, 5], "k2s2-odd", kernel_shape=[2, 2], strides=[2, 2]),
    avgpool([1, 2, 7, 5], "k2s3", kernel_shape=[2, 2], strides=[3, 3]),  # inputs no window sees
    avgpool([2, 2, 5, 6], "k3s1p1-cip0", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
            count_include_pad=0),
    avgpool([2, 2, 5, 6], "k3s1p1-cip1", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
            count_include_pad=1),
    avgpool([2, 2, 7, 6], "k3s2p1-cip0", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
            count_include_pad=0),
    avgpool([1, 2, 5, 5], "k2s2-same-cip0", kernel_shape=[2, 2], strides=[2, 2],
            pads=[0, 0, 1, 1], count_include_pad=0),  # what dlc's padding: same gives at 5x5
    avgpool([2, 2, 6, 5], "k2x3-asym-cip1", kernel_shape=[2, 3], pads=[1, 0, 0, 2],
            count_include_pad=1),
    avgpool([2, 3, 9], "1d-k3s2p1-cip0", kernel_shape=[3], strides=[2], pads=[1, 1],
            count_include_pad=0),
    avgpool([2, 3, 8], "1d-k2", kernel_shape=[2], strides=[2]),
    # ---- Pad (constant mode) ----
    pad([2, 3, 4, 5], [0, 0, 1, 2, 0, 0, 2, 1], "spatial"),
    pad([2, 3, 4], [0, 0, 1, 0, 0, 0], "1d-begin-only"),
    pad([2, 3, 4], [0, 1, 0, 1, 0, 3], "channels-and-end"),
    pad([2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 0, 0], "zero"),
    pad([2, 3, 4, 5], [0, 0, 1, 1, 0, 0, 1, 1], "value", value=0.5),
    pad([2, 3, 4, 5], [1, 2, 0, 1], "axes", axes=[2, 3]),
    pad([2, 3, 4, 5], [2, 0, 1, 1], "axes-negative", axes=[-1, 1]),
    # ---- ReduceMax ----
    *[reduce_max([3, 4, 2], ax, kd) for kd in (0, 1) for ax in ((1,), (-1, 0), (0, 1, 2), None)],
]
CASES_BY_OP: dict[str, list[Case]] = {}
for _c in CASES:
    CASES_BY_OP.setdefault(_c.op, []).append(_c)


# ---- harness ------------------------------------------------------------------------------------
class ConvTranspose(_ReferenceConvTranspose):
    """onnx 1.23's reference ConvTranspose is wrong for group > 1 (it splits W by output instead
    of input channels and writes one channel per group): run it per group with group=1."""

    op_domain = ""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None,  # noqa: N803
             kernel_shape=None, output_padding=None, output_shape=None, pads=None, strides=None):
        kw = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
                  output_padding=output_padding, output_shape=output_shape, pads=pads,
                  strides=strides)
        if not group or group == 1:
            return super()._run(X, W, B, group=1, **kw)
        c = X.shape[1] // group
        y = np.concatenate([super(ConvTranspose, self)._run(
            X[:, i * c:(i + 1) * c], W[i * c:(i + 1) * c], None, group=1, **kw)[0]
            for i in range(group)], axis=1)
        if B is not None:
            y = y + B.reshape(1, -1, *[1] * (y.ndim - 2))
        return (y,)


class Evaluator(test_vjp_rules.Evaluator):
    """test_vjp_rules' evaluator, with the grouped ConvTranspose fix on the reference path."""

    def __init__(self, model: onnx.ModelProto, allow_reference: bool = True):
        super().__init__(model, allow_reference)
        if self.reference:
            self.sess = ReferenceEvaluator(model, new_ops=[Erf, ConvTranspose])


def make_feeds(case: Case) -> dict[str, np.ndarray]:
    """As test_vjp_rules.make_feeds, plus `distinct`: a permutation of an evenly spaced grid, so
    every max is unique and at least 3 / size away from the runner-up (>> EPS)."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    feeds = {}
    for i, s in enumerate(case.shapes):
        if case.domain == "distinct":
            n = int(np.prod(s))
            feeds[f"x{i}"] = (rng.permutation(n) / n * 3.0 - 1.5).reshape(s)
        else:
            feeds[f"x{i}"] = sample(case.domain, s, rng)
    return feeds


def build_loss_model(case: Case, float_type: str) -> onnx.ModelProto:
    """build_model's forward and loss without the backward pass (for the finite differences)."""
    b = Builder(float_type=float_type)
    xs = [b.input(f"x{i}", float_type, s) for i, s in enumerate(case.shapes)]
    y = case.build(b, *xs)
    r = np.random.default_rng(7).uniform(-1.0, 1.0, infer_shapes(b, [y])[0][y])
    b.output(b.ReduceSum(b.Mul(y, b.const(r)), keepdims=0), "loss", float_type, [])
    return b.model(f"loss_{case.id}")


# ---- the checks ----------------------------------------------------------------------------------
def test_every_new_rule_has_a_case():
    assert set(NEW_OPS) <= set(VJP)
    assert set(CASES_BY_OP) == set(NEW_OPS)


def check_against_finite_differences(case: Case, float32: bool = False) -> None:
    """The float64 gradient graph against central differences of the loss-only graph; then the
    float32 graph in onnxruntime itself against it, when `float32` or when float64 needed the
    reference evaluator (no double kernel in onnxruntime)."""
    feeds = make_feeds(case)
    ev = Evaluator(build_model(case, "float64"))
    out = ev(feeds)
    loss_ev = Evaluator(build_loss_model(case, "float64"))
    assert float(loss_ev(feeds)["loss"]) == pytest.approx(float(out["loss"]), rel=1e-12)
    for name in feeds:
        analytic, fd = out[f"d{name}"], fd_grad(loss_ev, feeds, name)
        assert analytic.shape == fd.shape
        assert np.abs(fd).max() > 1e-3, f"d{name}: degenerate case, zero gradient"
        assert err(analytic, fd) < TOL64, f"d{name}: analytic\n{analytic}\nfd\n{fd}"
    if float32 or ev.reference:
        out32 = Evaluator(build_model(case, "float32"), allow_reference=False)(
            {k: v.astype(np.float32) for k, v in feeds.items()})
        for k, v in out.items():
            assert out32[k].dtype == np.float32 and err(out32[k], v) < TOL32, k


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vjp_matches_finite_differences(case: Case):
    check_against_finite_differences(case)


def infer_shapes_of(case: Case) -> list[int]:
    b = Builder()
    y = case.build(b, *[b.input(f"x{i}", "float32", s) for i, s in enumerate(case.shapes)])
    return list(infer_shapes(b, [y])[0][y])


@pytest.mark.parametrize("case", CASES_BY_OP["Conv"], ids=[c.id for c in CASES_BY_OP["Conv"]])
def test_conv_weight_gradient_formulation(case: Case):
    """groups == 1: dW by GEMMs, never a Conv (conv_weight.by_gemm's table): few input channels
    (C * prod(kernel) < 64), one batched MatMul per image over the stacked offsets; >= 256
    output positions, batched MatMuls per offset; otherwise one Gemm per offset over the batch.
    Grouped convolutions keep the Conv form. (How many Convs the graph holds, the dX one
    included, is test_conv_input_gradient_formulation's check.)"""
    ops = [n.op_type for n in build_model(case, "float32").graph.node]
    if "group" in case.id or "depthwise" in case.id:
        return
    taps = int(np.prod(case.shapes[1][2:]))
    stacked = case.shapes[1][1] * taps < 64
    per_offset = not stacked and int(np.prod(infer_shapes_of(case)[2:])) < 256
    assert ops.count("Gemm") == (taps if per_offset else 0)
    assert ("MatMul" in ops) != per_offset
    if "per-image" in case.id:
        assert not (stacked or per_offset), "a 'per-image' case must take one GEMM per offset"
    if "taps" in case.id:
        assert per_offset, "a 'taps' case must take the per-offset path"
        rows = infer_shapes_of(case)[-1] >= 16
        assert rows == ("wide" in case.id), "a 'taps-wide' case must have rows >= 16 wide"


def _flipped_conv_applies(case: Case) -> bool:
    """input_grad's rule: F <= C, stride 1 and every pad within the kernel's reach d (k - 1)."""
    k = case.shapes[1][2:]
    node = build_model(case, "float32").graph.node[0]
    attrs = {a.name: list(a.ints) or a.i for a in node.attribute}
    s, d = attrs.get("strides", [1] * len(k)), attrs.get("dilations", [1] * len(k))
    p = attrs.get("pads", [0] * 2 * len(k))
    return case.shapes[1][0] <= case.shapes[0][1] and all(v == 1 for v in s) and all(
        p[i] <= d[i % len(k)] * (k[i % len(k)] - 1) for i in range(2 * len(k)))


@pytest.mark.parametrize("case", CASES_BY_OP["Conv"], ids=[c.id for c in CASES_BY_OP["Conv"]])
def test_conv_input_gradient_formulation(case: Case):
    """A conv that does not widen (F <= C), at stride 1 with pads within the kernel's reach: dX
    by a Conv with the flipped kernel (it splits over onnxruntime's threads); otherwise by
    ConvTranspose."""
    ops = [n.op_type for n in build_model(case, "float32").graph.node]
    flipped = _flipped_conv_applies(case)
    assert ops.count("ConvTranspose") == (0 if flipped else 1), ops
    assert ops.count("Conv") == 1 + flipped + ("group" in case.id or "depthwise" in case.id)


TORCH_INPUT_CASES = {  # name: (x shape, w shape, stride, padding (torch, symmetric), dilation,
    # groups): ResNet-20's stages, the digits CNN, and the forms' edges
    "resnet-s1": ([16, 16, 32, 32], [16, 16, 3, 3], 1, 1, 1, 1),
    "resnet-s3": ([16, 64, 8, 8], [64, 64, 3, 3], 1, 1, 1, 1),
    "resnet-down-s2": ([8, 16, 32, 32], [32, 16, 3, 3], 2, 1, 1, 1),
    "resnet-proj-1x1-s2": ([8, 16, 32, 32], [32, 16, 1, 1], 2, 0, 1, 1),
    "digits-conv2": ([64, 32, 8, 8], [64, 32, 3, 3], 1, 1, 1, 1),  # widens: ConvTranspose
    "pointwise": ([8, 40, 9, 9], [24, 40, 1, 1], 1, 0, 1, 1),
    "valid-k5-d2": ([4, 12, 17, 15], [8, 12, 5, 5], 1, 0, 2, 1),
    "groups4-same": ([4, 16, 12, 12], [16, 4, 3, 3], 1, 1, 1, 4),
    "groups4-widening": ([4, 16, 12, 12], [32, 4, 3, 3], 1, 1, 1, 4),
    "depthwise-same": ([4, 16, 12, 12], [16, 1, 3, 3], 1, 1, 1, 16),
    "pad-past-reach": ([4, 6, 7, 7], [5, 6, 3, 3], 1, 3, 1, 1),  # ConvTranspose
    "pointwise-widening": ([8, 24, 9, 9], [40, 24, 1, 1], 1, 0, 1, 1),  # ConvTranspose
}


@pytest.mark.parametrize("name", TORCH_INPUT_CASES)
def test_conv_input_gradient_matches_torch(name):
    """The float32 train-step formulation of dX (onnxruntime) against torch at realistic sizes:
    the flipped-kernel Conv (stride 1, groups, 1x1, dilation) and ConvTranspose (strides, pads
    past the kernel's reach)."""
    torch = pytest.importorskip("torch")
    xs, ws, s, p, d, g = TORCH_INPUT_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x, w = (rng.standard_normal(v).astype(np.float32) for v in (xs, ws))
    b = Builder()
    xi, wi = b.input("x", "float32", xs), b.input("w", "float32", ws)
    y = b.Conv(xi, wi, strides=[s, s], pads=[p] * 4, dilations=[d, d], group=g)
    r = rng.standard_normal(infer_shapes(b, [y])[0][y]).astype(np.float32)
    dx = gradients(b, b.ReduceSum(b.Mul(y, b.const(r)), keepdims=0), [xi])[xi]
    b.output(dx, "dx", "float32", xs)
    model = b.model("dx")
    expect = "ConvTranspose" if s > 1 or p > d * (ws[2] - 1) or ws[0] > xs[1] else "Conv"
    assert [n.op_type for n in model.graph.node if "Conv" in n.op_type][-1] == expect
    got = Evaluator(model, allow_reference=False)({"x": x, "w": w})["dx"]
    ref = torch.nn.grad.conv2d_input(xs, torch.from_numpy(w), torch.from_numpy(r), stride=s,
                                     padding=p, dilation=d, groups=g).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


TORCH_WEIGHT_CASES = {  # name: (x shape, w shape, stride, padding (torch, symmetric), dilation)
    "digits-conv1": ([64, 1, 8, 8], [32, 1, 3, 3], 1, 1, 1),
    "digits-conv2": ([64, 32, 8, 8], [64, 32, 3, 3], 1, 1, 1),
    "rgb-s2-d2": ([8, 3, 17, 16], [16, 3, 3, 3], 2, 2, 2),
    "c16-k5-s2": ([8, 16, 15, 15], [24, 16, 5, 5], 2, 2, 1),
    "c24-s3-d2-valid": ([4, 24, 16, 13], [8, 24, 3, 3], 3, 0, 2),
    "cnn32-conv2": ([16, 32, 32, 32], [64, 32, 3, 3], 1, 1, 1),
    "wide-s2-d2": ([4, 24, 20, 40], [8, 24, 3, 3], 2, 1, 2),
}


@pytest.mark.parametrize("name", TORCH_WEIGHT_CASES)
def test_conv_weight_gradient_matches_torch(name):
    """The float32 train-step formulation of dW (onnxruntime) against torch at realistic sizes,
    including the per-offset GEMM path with strides, dilations and dropped input tails."""
    torch = pytest.importorskip("torch")
    xs, ws, s, p, d = TORCH_WEIGHT_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x, w = (rng.standard_normal(v).astype(np.float32) for v in (xs, ws))
    b = Builder()
    xi, wi = b.input("x", "float32", xs), b.input("w", "float32", ws)
    y = b.Conv(xi, wi, strides=[s, s], pads=[p] * 4, dilations=[d, d])
    r = rng.standard_normal(infer_shapes(b, [y])[0][y]).astype(np.float32)
    dw = gradients(b, b.ReduceSum(b.Mul(y, b.const(r)), keepdims=0), [wi])[wi]
    b.output(dw, "dw", "float32", ws)
    got = Evaluator(b.model("dw"), allow_reference=False)({"x": x, "w": w})["dw"]
    ref = torch.nn.grad.conv2d_weight(torch.from_numpy(x), ws, torch.from_numpy(r), stride=s,
                                      padding=p, dilation=d).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_reference_path_is_exercised_for_conv_and_avgpool():
    """The docstring's premise: Conv, AveragePool and non-overlapping MaxPool gradients need the
    reference evaluator in float64 (so their float32 graphs run in onnxruntime as well);
    overlapping MaxPool, Pad and ReduceMax run in onnxruntime."""
    def uses_ref(case):
        return Evaluator(build_model(case, "float64")).reference
    first = {op: uses_ref(CASES_BY_OP[op][0]) for op in NEW_OPS}
    if not (first["Conv"] or first["AveragePool"]):
        pytest.skip("this onnxruntime has float64 Conv/AveragePool kernels")
    assert not any(first[op] for op in ("Pad", "ReduceMax")), first
    pools = {c.id: uses_ref(c) for c in CASES_BY_OP["MaxPool"]}
    assert pools["MaxPool-k2s2"] and not pools["MaxPool-k3s1p1"], pools


# ---- cases finite differences cannot settle ------------------------------------------------------
def _grad_of(build, x: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    """d sum(build(x) * r) / dx in onnxruntime, in x's float type."""
    dtype = str(x.dtype)
    b = Builder(float_type=dtype)
    xi = b.input("x", dtype, list(x.shape))
    y = build(b, xi)
    yr = b.Mul(y, b.const(r)) if r is not None else y
    dx = gradients(b, b.ReduceSum(yr, keepdims=0), [xi])[xi]
    b.output(dx, "dx", dtype, list(x.shape))
    return Evaluator(b.model("grad"), allow_reference=False)({"x": x})["dx"]


def test_reduce_max_ties_share_the_gradient_evenly():
    x = np.array([[1.0, 3.0, 3.0, 3.0], [2.0, 2.0, 0.0, -1.0]])
    dx = _grad_of(lambda b, x: b.ReduceMax(x, b.const(_i64(1)), keepdims=0), x,
                  np.array([0.6, -0.4]))
    np.testing.assert_allclose(dx, [[0, 0.2, 0.2, 0.2], [-0.2, -0.2, 0, 0]], rtol=1e-15)
    dx = _grad_of(lambda b, x: b.ReduceMax(x, keepdims=0), np.full((2, 3), 0.5))
    np.testing.assert_allclose(dx, np.full((2, 3), 1 / 6), rtol=1e-15)


def test_maxpool_tie_goes_to_one_input_and_keeps_the_total():
    """On a constant input each window's gradient lands on one element (onnxruntime's first
    index; MaxUnpool, in float32 as training runs it); the total is preserved. Overlapping
    windows accumulate (ScatterElements add)."""
    x = np.ones((1, 1, 4, 4), np.float32)
    dx = _grad_of(lambda b, x: b.MaxPool(x, kernel_shape=[2, 2], strides=[2, 2], outputs=2)[0], x)
    assert dx.sum() == 4 and set(np.unique(dx)) == {0.0, 1.0}
    dx = _grad_of(lambda b, x: b.MaxPool(x, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                         outputs=2)[0], np.arange(16.0).reshape(1, 1, 4, 4))
    expected = np.zeros((4, 4))  # each 3x3 window's max is its bottom-right corner
    for i in range(4):
        for j in range(4):
            expected[min(i + 1, 3), min(j + 1, 3)] += 1
    np.testing.assert_array_equal(dx[0, 0], expected)


POOL_TORCH_CASES = {  # name: (x shape, kernel, stride, padding): the digits CNN's pool, others
    "digits-k2s2": ([64, 64, 8, 8], 2, 2, 0),
    "k3s3p1": ([4, 8, 13, 11], 3, 3, 1),
    "k3s2-overlap": ([4, 8, 9, 9], 3, 2, 0),
}


@pytest.mark.parametrize("name", POOL_TORCH_CASES)
def test_maxpool_gradient_matches_torch_with_ties(name):
    """The float32 MaxPool gradient (onnxruntime) against torch's on a ReLU'd input with tied
    positive plateaus, where the chosen window element matters (both take the first max)."""
    torch = pytest.importorskip("torch")
    xs, k, st, p = POOL_TORCH_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = np.maximum(rng.standard_normal(xs), 0).astype(np.float32)
    x[:, :, 1:5, 2:6] = 0.75
    tx = torch.from_numpy(x).requires_grad_()
    y = torch.nn.functional.max_pool2d(tx, k, st, p)
    r = rng.standard_normal(y.shape).astype(np.float32)
    (y * torch.from_numpy(r)).sum().backward()
    got = _grad_of(lambda b, xi: b.MaxPool(xi, kernel_shape=[k, k], strides=[st, st],
                                           pads=[p] * 4), x, r)
    np.testing.assert_array_equal(got, tx.grad.numpy())


def test_maxpool_gradient_forms():
    """Windows that share no input take MaxUnpool on CPU; overlapping windows, a size MaxUnpool
    would not infer back (5 -> 2 -> 4), or CUDA (no MaxUnpool kernel) scatter-add."""
    def ops(xs, device="cpu", **attrs):
        b = Builder()
        xi = b.input("x", "float32", xs)
        gradients(b, b.ReduceSum(b.MaxPool(xi, **attrs), keepdims=0), [xi], device=device)
        return {n.op_type for n in b.nodes} & {"MaxUnpool", "ScatterElements"}
    assert ops([2, 3, 8, 8], kernel_shape=[2, 2], strides=[2, 2]) == {"MaxUnpool"}
    assert ops([2, 3, 8, 8], "cuda", kernel_shape=[2, 2], strides=[2, 2]) == {"ScatterElements"}
    assert ops([2, 3, 8, 8], kernel_shape=[3, 3], strides=[2, 2]) == {"ScatterElements"}
    assert ops([2, 3, 5, 5], kernel_shape=[2, 2], strides=[2, 2]) == {"ScatterElements"}


@pytest.mark.parametrize("how", ["edge-mode", "runtime-pads", "negative-pads"])
def test_pad_outside_constant_mode_is_refused(how):
    b = Builder(float_type="float64")
    x = b.input("x", "float64", [2, 3])
    if how == "edge-mode":
        y = b.Pad(x, b.const(_i64(1, 1, 1, 1)), mode="edge")
    elif how == "runtime-pads":
        y = b.Pad(x, b.Concat(b.Shape(x), b.Shape(x), axis=0))  # pads not a constant
    else:  # a crop: the gradient would be a pad, not a slice
        y = b.Pad(x, b.const(_i64(0, -1, 1, 0)))
    with pytest.raises(NotImplementedError, match="Pad"):
        gradients(b, b.ReduceSum(y, keepdims=0), [x])


def test_maxpool_with_column_major_indices():
    """An exported MaxPool asking for column-major Indices (storage_order=1): the gradient pools
    again for row-major ones, so dy still lands at each window's first max."""
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 4)).astype(np.float32)
    r = np.random.default_rng(6).standard_normal((2, 3, 3, 2)).astype(np.float32)
    got = {order: _grad_of(lambda b, xi: b.MaxPool(xi, kernel_shape=[2, 2], strides=[2, 2],
                                                   storage_order=order, outputs=2)[0], x, r)
           for order in (0, 1)}
    np.testing.assert_array_equal(got[1], got[0])
    assert np.count_nonzero(got[0]) == r.size
