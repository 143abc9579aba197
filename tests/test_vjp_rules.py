"""Every rule of the VJP table, checked against central finite differences in float64.

Each case builds `loss = ReduceSum(op(x0, x1, ...) * R)` with a fixed random R (so every output
element matters), asks the driver for d loss / d xi, and compares with central differences of the
same graph. Graphs run in onnxruntime CPU (float64) where it has a double kernel for every op;
otherwise in onnx's ReferenceEvaluator, and then the float32 build of the same graph must run in
onnxruntime and agree with the float64 reference to ~1e-4.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from dlc.autodiff.driver import gradients, infer_shapes
from dlc.autodiff.rules import VJP
from dlc.errors import DlcError
from dlc.graph import OPSET, Builder

EPS = 1e-6  # central-difference step
# err(a, f) = max|a - f| / max(max|a|, max|f|, 1e-3): the worst error relative to the gradient
# tensor's own scale (an elementwise ratio is dominated by O(1e-10) rounding in tiny entries).
TOL64, TOL32 = 1e-6, 1e-4
FLOAT = {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT}


def err(a, f) -> float:
    a, f = np.asarray(a, np.float64), np.asarray(f, np.float64)
    return float(np.max(np.abs(a - f), initial=0.0) /
                 max(np.max(np.abs(a), initial=0.0), np.max(np.abs(f), initial=0.0), 1e-3))


@dataclass(frozen=True)
class Case:
    op: str  # the VJP key under test
    build: Callable  # (builder, *input names) -> output name; non-differentiable operands as consts
    shapes: tuple  # one shape per differentiable input
    domain: str | tuple = "any"  # any: U(-1.5, 1.5); kink: |x| in [0.2, 1.5]; pos: U(0.5, 2)
    tag: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}-{self.tag}" if self.tag else self.op


def C(op, build, *shapes, domain="any", tag=""):
    return Case(op, build, shapes, domain, tag)


def _i64(*v):
    return np.array(v, np.int64)


def _gemm(ta=0, tb=0, alpha=1.0, beta=1.0):
    def build(b, a, w, *bias):
        return b.Gemm(a, w, *bias, transA=ta, transB=tb, alpha=alpha, beta=beta)
    return build


def _gemm_case(ta, tb, c_shape, m=3, k=4, n=5, alpha=0.7, beta=1.3, tag=""):
    shapes = ([k, m] if ta else [m, k], [n, k] if tb else [k, n])
    shapes += (c_shape,) if c_shape is not None else ()
    return C("Gemm", _gemm(ta, tb, alpha, beta), *shapes,
             tag=tag or f"tA{ta}tB{tb}-C{c_shape}-a{alpha}-b{beta}-m{m}")


COND = np.array([[True, False, True, False], [False, False, True, True], [True, True, False, True]])
CASES = [
    # ---- elementwise arithmetic (with broadcasting) ----
    C("Identity", lambda b, x: b.Identity(x), [3, 4]),
    C("Add", lambda b, x, y: b.Add(x, y), [3, 4], [4], tag="3x4+4"),
    C("Add", lambda b, x, y: b.Add(x, y), [1, 3], [3], tag="batch1"),
    C("Add", lambda b, x, y: b.Add(x, y), [2, 1, 4], [3, 1], tag="both-broadcast"),
    C("Add", lambda b, x: b.Add(b.Mul(x, x), b.Tanh(x)), [3, 4], tag="fan-out"),
    C("Sub", lambda b, x, y: b.Sub(x, y), [3, 4], [3, 4], tag="same"),
    C("Sub", lambda b, x, y: b.Sub(x, y), [4], [3, 4], tag="lhs-broadcast"),
    C("Sub", lambda b, x, y: b.Sub(x, y), [], [3, 4], tag="scalar"),
    C("Mul", lambda b, x, y: b.Mul(x, y), [3, 1], [1, 4], tag="3x1*1x4"),
    C("Mul", lambda b, x, y: b.Mul(x, y), [2, 3, 4], [3, 1], tag="rank-broadcast"),
    C("Mul", lambda b, x: b.Mul(x, x), [3, 4], tag="x*x"),
    C("Div", lambda b, x, y: b.Div(x, y), [3, 4], [4], domain=("any", "pos"), tag="3x4/4"),
    C("Div", lambda b, x, y: b.Div(x, y), [3, 1], [1, 4], domain=("any", "pos"), tag="outer"),
    C("Div", lambda b, x, y: b.Div(x, y), [2], [3, 2], domain=("any", "pos"), tag="lhs-bcast"),
    C("Neg", lambda b, x: b.Neg(x), [3, 4]),
    C("Abs", lambda b, x: b.Abs(x), [3, 4], domain="kink"),
    C("Exp", lambda b, x: b.Exp(x), [3, 4]),
    C("Log", lambda b, x: b.Log(x), [3, 4], domain="pos"),
    C("Sqrt", lambda b, x: b.Sqrt(x), [3, 4], domain="pos"),
    C("Reciprocal", lambda b, x: b.Reciprocal(x), [3, 4], domain="pos"),
    C("Pow", lambda b, x: b.Pow(x, b.const([2.0, 0.5, 3.0, -1.5])), [3, 4], domain="pos",
      tag="exp-vector"),
    C("Pow", lambda b, x: b.Pow(x, b.const(3.0)), [3, 4], tag="cube-any-sign"),
    C("Pow", lambda b, x: b.Pow(x, b.const(np.full([3, 4], 1.7))), [4], domain="pos",
      tag="base-broadcast"),
    C("Where", lambda b, x, y: b.Where(b.const(COND, dtype=bool), x, y), [3, 1], [1, 4],
      domain="kink", tag="broadcast"),
    C("Where", lambda b, x: b.Where(b.Greater(x, b.const(0.0)), x, b.Mul(x, b.const(0.3))),
      [3, 4], domain="kink", tag="self-cond"),
    C("Cast", lambda b, x: b.Cast(x, to=FLOAT[b.float_type]), [3, 4]),
    C("Expand", lambda b, x: b.Expand(x, b.const(_i64(2, 3, 4))), [3, 1], tag="3x1->2x3x4"),
    C("Expand", lambda b, x: b.Expand(x, b.const(_i64(3, 1))), [1, 4], tag="1x4->3x4"),
    # ---- activations ----
    C("Relu", lambda b, x: b.Relu(x), [3, 4], domain="kink"),
    C("LeakyRelu", lambda b, x: b.LeakyRelu(x), [3, 4], domain="kink", tag="default"),
    C("LeakyRelu", lambda b, x: b.LeakyRelu(x, alpha=0.2), [3, 4], domain="kink", tag="a0.2"),
    C("Elu", lambda b, x: b.Elu(x), [3, 4], domain="kink", tag="default"),
    C("Elu", lambda b, x: b.Elu(x, alpha=0.5), [3, 4], domain="kink", tag="a0.5"),
    C("Selu", lambda b, x: b.Selu(x), [3, 4], domain="kink", tag="default"),
    C("Selu", lambda b, x: b.Selu(x, alpha=1.5, gamma=1.25), [3, 4], domain="kink", tag="custom"),
    C("Sigmoid", lambda b, x: b.Sigmoid(x), [3, 4]),
    C("Tanh", lambda b, x: b.Tanh(x), [3, 4]),
    C("Softplus", lambda b, x: b.Softplus(x), [3, 4]),
    C("Erf", lambda b, x: b.Erf(x), [3, 4]),
    C("Erf", lambda b, x: gelu(b, x), [2, 5], tag="gelu"),
    C("Softmax", lambda b, x: b.Softmax(x), [3, 5], tag="axis-default"),
    C("Softmax", lambda b, x: b.Softmax(x, axis=0), [3, 5], tag="axis0"),
    C("Softmax", lambda b, x: b.Softmax(x, axis=1), [2, 3, 4], tag="axis1-rank3"),
    C("Softmax", lambda b, x: b.Softmax(x, axis=-1), [1, 5], tag="batch1"),
    C("LogSoftmax", lambda b, x: b.LogSoftmax(x, axis=-1), [3, 5], tag="axis-1"),
    C("LogSoftmax", lambda b, x: b.LogSoftmax(x, axis=0), [3, 5], tag="axis0"),
    C("LogSoftmax", lambda b, x: b.LogSoftmax(x, axis=1), [2, 3, 4], tag="axis1-rank3"),
    C("Dropout", lambda b, x: b.Dropout(x), [3, 4], tag="no-training-input"),
    C("Dropout", lambda b, x: b.Dropout(x, b.const(0.3), b.const(False, dtype=bool)), [3, 4],
      tag="training-false"),
    # ---- linear algebra ----
    *[_gemm_case(ta, tb, [5]) for ta in (0, 1) for tb in (0, 1)],
    *[_gemm_case(ta, tb, None, alpha=1.0) for ta in (0, 1) for tb in (0, 1)],
    _gemm_case(0, 1, [1, 5]), _gemm_case(1, 0, [3, 5]), _gemm_case(0, 0, [3, 1]),
    _gemm_case(1, 1, []), _gemm_case(0, 0, [5], alpha=1.0, beta=1.0),
    _gemm_case(0, 1, [5], m=1), _gemm_case(1, 0, [1, 5], m=1),
    C("MatMul", lambda b, x, y: b.MatMul(x, y), [3, 4], [4, 5], tag="2d"),
    C("MatMul", lambda b, x, y: b.MatMul(x, y), [1, 4], [4, 5], tag="batch1"),
    C("MatMul", lambda b, x, y: b.MatMul(x, y), [2, 3, 4], [4, 5], tag="2x3x4@4x5"),
    C("MatMul", lambda b, x, y: b.MatMul(x, y), [3, 4], [2, 4, 5], tag="3x4@2x4x5"),
    C("MatMul", lambda b, x, y: b.MatMul(x, y), [2, 1, 3, 4], [3, 4, 2], tag="4d-bcast"),
    C("MatMul", lambda b, x, y: b.MatMul(x, y), [3, 5, 4], [4, 6], tag="batch-seq@weight"),
    C("MatMul", lambda b, x, y: b.MatMul(x, y), [2, 3, 2, 4], [4, 1], tag="4d@weight-n1"),
    # ---- shape ----
    C("Reshape", lambda b, x: b.Reshape(x, b.const(_i64(6, 4))), [2, 3, 4], tag="6x4"),
    C("Reshape", lambda b, x: b.Reshape(x, b.const(_i64(-1, 3))), [2, 3, 2], tag="minus1"),
    C("Flatten", lambda b, x: b.Flatten(x), [2, 3, 4], tag="default"),
    C("Flatten", lambda b, x: b.Flatten(x, axis=2), [2, 3, 4], tag="axis2"),
    C("Squeeze", lambda b, x: b.Squeeze(x, b.const(_i64(1))), [3, 1, 4], tag="axes"),
    C("Squeeze", lambda b, x: b.Squeeze(x), [3, 1, 4, 1], tag="all"),
    C("Unsqueeze", lambda b, x: b.Unsqueeze(x, b.const(_i64(0, 2))), [3, 4]),
    C("Transpose", lambda b, x: b.Transpose(x, perm=[2, 0, 1]), [2, 3, 4], tag="perm"),
    C("Transpose", lambda b, x: b.Transpose(x), [2, 3, 4], tag="reverse"),
    # ---- reductions ----
    *[C(op, lambda b, x, op=op, kd=kd, ax=ax: getattr(b, op)(
        x, *([b.const(_i64(*ax))] if ax else []), keepdims=kd), [3, 4, 2],
        tag=f"axes{list(ax) if ax else 'None'}-keepdims{kd}")
      for op in ("ReduceSum", "ReduceMean") for kd in (0, 1) for ax in ((1,), (-1, 0), None)],
]
CASES_BY_OP: dict[str, list[Case]] = {}
for _c in CASES:
    CASES_BY_OP.setdefault(_c.op, []).append(_c)

# Ops registered with `defzero`: checked to return all-None below, and counted as covered.
ZERO_OPS = ("Shape", "Size", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not",
            "ArgMax", "ArgMin", "Sign", "OneHot", "Floor", "Ceil", "Round", "ConstantOfShape")
ANALYTIC_ONLY = ("Dropout",)  # training mode: random mask, checked by test_dropout_training


def gelu(b, x):
    inner = b.Erf(b.Div(x, b.const(math.sqrt(2.0))))
    return b.Mul(b.Mul(x, b.const(0.5)), b.Add(inner, b.const(1.0)))


# ---- building and running -----------------------------------------------------------------------
def build_model(case: Case, float_type: str) -> onnx.ModelProto:
    b = Builder(float_type=float_type)
    xs = [b.input(f"x{i}", float_type, s) for i, s in enumerate(case.shapes)]
    y = case.build(b, *xs)
    r = np.random.default_rng(7).uniform(-1.0, 1.0, infer_shapes(b, [y])[0][y])
    loss = b.ReduceSum(b.Mul(y, b.const(r)), keepdims=0)
    grads = gradients(b, loss, xs)
    b.output(loss, "loss", float_type, [])
    for x, shape in zip(xs, case.shapes):
        assert grads[x] is not None, f"no gradient reached {x}"
        b.output(grads[x], f"d{x}", float_type, shape)
    return b.model(f"vjp_{case.id}")


class Erf(OpRun):
    """onnx's reference Erf rounds through float32 (np.vectorize(otypes="f")): use a float64 one."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)


class Evaluator:
    """onnxruntime CPU if it has kernels for every op and type in the graph, else the reference."""

    def __init__(self, model: onnx.ModelProto, allow_reference: bool = True):
        onnx.checker.check_model(model, full_check=True)  # strict types/shapes of the grad graph
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.reference = False
        try:
            self.sess = ort.InferenceSession(model.SerializeToString(), so,
                                             providers=["CPUExecutionProvider"])
        except OrtNotImplemented:
            if not allow_reference:
                raise
            self.sess, self.reference = ReferenceEvaluator(model, new_ops=[Erf]), True
        self.names = [o.name for o in model.graph.output]

    def __call__(self, feeds: dict) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.sess.run(None, feeds)))


def sample(domain: str, shape, rng) -> np.ndarray:
    if domain == "pos":
        return rng.uniform(0.5, 2.0, shape)
    if domain == "kink":  # keep away from the kink at 0; both signs present
        return rng.uniform(0.2, 1.5, shape) * np.where(np.arange(np.prod(shape, dtype=int)) % 2,
                                                       1.0, -1.0).reshape(shape)
    return rng.uniform(-1.5, 1.5, shape)


def make_feeds(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    domains = case.domain if isinstance(case.domain, tuple) else (case.domain,) * len(case.shapes)
    return {f"x{i}": sample(d, s, rng) for i, (d, s) in enumerate(zip(domains, case.shapes))}


def fd_grad(ev: Evaluator, feeds: dict, name: str) -> np.ndarray:
    x, g = feeds[name], np.zeros_like(feeds[name])
    for idx in np.ndindex(x.shape):
        for sign in (1.0, -1.0):
            xp = x.copy()
            xp[idx] += sign * EPS
            g[idx] += sign * float(ev({**feeds, name: xp})["loss"]) / (2 * EPS)
    return g


# ---- the table check ----------------------------------------------------------------------------
def test_every_rule_has_a_case():
    from test_vjp_conv import CASES_BY_OP as CONV_CASES  # conv/pool rules: cases in their own file
    from test_conv_transpose import CASES as CONV_TRANSPOSE_CASES  # the conv_transpose2d proof
    from test_vjp_norm import CASES_BY_OP as NORM_CASES  # ops of exported models: their own file
    from test_vjp_seq import CASES_BY_OP as SEQ_CASES  # Gather/Slice/Concat/Split: their own file

    cased = set(CASES_BY_OP) | set(CONV_CASES) | set(SEQ_CASES) | set(NORM_CASES) | {
        c.op for c in CONV_TRANSPOSE_CASES}
    covered = cased | set(ZERO_OPS) | set(ANALYTIC_ONLY)
    assert covered >= set(VJP), f"VJP rules without a test case: {sorted(set(VJP) - covered)}"
    assert cased | set(ZERO_OPS) <= set(VJP), "cases for ops that have no rule"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vjp_matches_finite_differences(case: Case):
    feeds = make_feeds(case)
    ev = Evaluator(build_model(case, "float64"))
    out = ev(feeds)
    for name in feeds:
        analytic, fd = out[f"d{name}"], fd_grad(ev, feeds, name)
        assert analytic.shape == fd.shape
        assert err(analytic, fd) < TOL64, f"d{name}: analytic\n{analytic}\nfd\n{fd}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float32_graph_runs_in_onnxruntime_and_agrees(case: Case):
    """What training runs: the float32 gradient graph, in onnxruntime itself (never the reference
    evaluator, which float64 cases without an onnxruntime double kernel, such as Erf, use)."""
    feeds = make_feeds(case)
    out = Evaluator(build_model(case, "float64"))(feeds)
    out32 = Evaluator(build_model(case, "float32"), allow_reference=False)(
        {k: v.astype(np.float32) for k, v in feeds.items()})
    for k, v in out.items():
        assert out32[k].dtype == np.float32 and err(out32[k], v) < TOL32, k


@pytest.mark.parametrize("op", ZERO_OPS)
def test_zero_rules_return_no_gradient(op):
    assert op in VJP
    schema = onnx.defs.get_schema(op, OPSET)
    node = helper.make_node(op, [f"in{i}" for i in range(max(schema.min_input, 1))], ["out"])
    result = VJP[op](None, node, ["g"])
    assert tuple(result) == (None,) * len(node.input)


def test_zero_rule_on_path_contributes_nothing():
    """loss = sum(R * x * Sign(x)) = sum(R |x|): Sign blocks its path, Mul's other path carries."""
    case = C("Sign", lambda b, x: b.Mul(x, b.Sign(x)), [3, 4], domain="kink")
    feeds = make_feeds(case)
    ev = Evaluator(build_model(case, "float64"))
    assert err(ev(feeds)["dx0"], fd_grad(ev, feeds, "x0")) < TOL64


# ---- Dropout in training mode: random mask, so check the rule analytically ----------------------
@pytest.mark.parametrize("ratio", [0.25, None])  # onnxruntime scales by a float32 ratio: use
# ratios exact in float32 so that forward and backward scalings agree to 1e-12
def test_dropout_training_uses_forward_mask(ratio):
    b = Builder(float_type="float64")
    x = b.input("x", "float64", [6, 8])
    y, mask = b.Dropout(x, b.const(ratio) if ratio else None, b.const(True, dtype=bool),
                        outputs=2, seed=3)
    r = np.random.default_rng(1).uniform(-1.0, 1.0, [6, 8])
    loss = b.ReduceSum(b.Mul(y, b.const(r)), keepdims=0)
    dx = gradients(b, loss, [x])[x]
    for t, name, dt in ((y, "y", "float64"), (mask, "mask", "bool"), (dx, "dx", "float64")):
        b.output(t, name, dt, [6, 8])
    xv = np.random.default_rng(2).uniform(-1.0, 1.0, [6, 8])
    out = Evaluator(b.model("dropout"), allow_reference=False)({"x": xv})
    keep = 1.0 - (ratio or 0.5)
    assert 0 < out["mask"].sum() < out["mask"].size  # a real random mask
    np.testing.assert_allclose(out["y"], xv * out["mask"] / keep, rtol=1e-12)
    np.testing.assert_allclose(out["dx"], r * out["mask"] / keep, rtol=1e-12)


# ---- driver behaviour ---------------------------------------------------------------------------
def test_missing_rule_is_a_dlc_error_naming_the_op():
    op = next(o for o in ("Sin", "Cos", "Tan", "Atan", "Sinh") if o not in VJP)
    b = Builder(float_type="float64")
    x = b.input("x", "float64", [3])
    loss = b.ReduceSum(getattr(b, op)(b.Exp(x)), keepdims=0)
    with pytest.raises(DlcError, match=rf"\b{op}\b"):
        gradients(b, loss, [x])


def test_values_feeding_only_gradient_free_ops_get_no_rule_call():
    """Exp(x) reaches the loss only via Shape, Sin(x) only via Greater: neither rule may run (the
    driver used to call the Exp rule with a None cotangent and emit an invalid Mul)."""
    b = Builder(float_type="float64")
    x = b.input("x", "float64", [3, 4])
    cond = b.Greater(b.Sin(x), b.const(0.0))  # Sin has no rule: it must not be needed
    y = b.Reshape(b.Where(cond, x, b.Mul(x, b.const(0.5))), b.Shape(b.Exp(x)))
    b.output(gradients(b, b.ReduceSum(y, keepdims=0), [x])[x], "dx", "float64", [3, 4])
    xv = sample("kink", [3, 4], np.random.default_rng(0))
    dx = Evaluator(b.model("gradient_free"), allow_reference=False)({"x": xv})["dx"]
    np.testing.assert_array_equal(dx, np.where(np.sin(xv) > 0, 1.0, 0.5))


def test_fan_out_accumulates():
    """x feeds Mul (twice) and Tanh: d/dx sum(R (x*x + tanh x)) = R (2x + 1 - tanh^2 x)."""
    case = CASES_BY_OP["Add"][[c.tag for c in CASES_BY_OP["Add"]].index("fan-out")]
    feeds = make_feeds(case)
    x, r = feeds["x0"], np.random.default_rng(7).uniform(-1.0, 1.0, [3, 4])
    dx = Evaluator(build_model(case, "float64"))(feeds)["dx0"]
    np.testing.assert_allclose(dx, r * (2 * x + 1 - np.tanh(x) ** 2), rtol=1e-12)


def test_cast_gradient_returns_to_the_input_type():
    """x (float64) -> float32 -> float64: the gradient is float64 and is R rounded to float32."""
    b = Builder(float_type="float64")
    x = b.input("x", "float64", [3, 4])
    y = b.Cast(b.Cast(x, to=TensorProto.FLOAT), to=TensorProto.DOUBLE)
    r = np.random.default_rng(3).uniform(-1.0, 1.0, [3, 4])
    dx = gradients(b, b.ReduceSum(b.Mul(y, b.const(r)), keepdims=0), [x])[x]
    b.output(dx, "dx", "float64", [3, 4])
    out = Evaluator(b.model("cast"), allow_reference=False)({"x": np.ones([3, 4])})["dx"]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, r.astype(np.float32).astype(np.float64))


# ---- torch autograd parity ----------------------------------------------------------------------
def _tf():
    import torch.nn.functional as F  # noqa: N812 (imported lazily: torch is optional)

    return F


SELU_A, SELU_G = 1.67326319217681884765625, 1.05070102214813232421875  # ONNX defaults (float32)
TORCH_CASES = {  # name: (dlc build, torch fn, input shapes)
    "Gemm": (_gemm(0, 1, 0.75, 1.25), lambda a, w, c: 0.75 * a @ w.T + 1.25 * c,  # exact in f32
             ([3, 4], [5, 4], [5])),
    "Softmax": (lambda b, x: b.Softmax(x, axis=-1), lambda x: x.softmax(-1), ([3, 5],)),
    "LogSoftmax": (lambda b, x: b.LogSoftmax(x, axis=0), lambda x: x.log_softmax(0), ([3, 5],)),
    "gelu": (gelu, lambda x: _tf().gelu(x), ([3, 4],)),
    "Softplus": (lambda b, x: b.Softplus(x), lambda x: _tf().softplus(x), ([3, 4],)),
    "Selu": (lambda b, x: b.Selu(x), lambda x: SELU_G * x.where(x > 0, SELU_A * x.expm1()),
             ([3, 4],)),
    "Elu": (lambda b, x: b.Elu(x, alpha=0.5), lambda x: _tf().elu(x, alpha=0.5), ([3, 4],)),
    "MatMul-seq": (lambda b, x, w: b.MatMul(x, w), lambda x, w: x @ w, ([4, 7, 5], [5, 6])),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch_autograd(name):
    torch = pytest.importorskip("torch")
    build, torch_fn, shapes = TORCH_CASES[name]
    case = C(name, build, *shapes, domain="kink")
    feeds = make_feeds(case)
    out = Evaluator(build_model(case, "float64"))(feeds)
    xs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in feeds.values()]
    y = torch_fn(*xs)
    r = torch.tensor(np.random.default_rng(7).uniform(-1.0, 1.0, tuple(y.shape)))
    (y * r).sum().backward()
    for i, t in enumerate(xs):
        assert err(out[f"dx{i}"], t.grad.numpy()) < 1e-9, f"dx{i}"


def test_sequence_times_weight_gradient_is_two_gemms_without_batch_sum():
    """[B, T, d] @ [d, n]: dW is one GEMM over the flattened B*T rows, never a per-sample
    [B, d, n] product summed over B by a ReduceSum (issue 14), and dX needs no Transpose of W."""
    b = Builder(float_type="float32")
    x, w = b.input("x", "float32", ["N", 64, 32]), b.input("w", "float32", [32, 128])
    loss = b.ReduceSum(b.MatMul(x, w), keepdims=0)
    n_forward = len(b.nodes)
    gradients(b, loss, [x, w])
    ops = [nd.op_type for nd in b.nodes[n_forward:]]
    assert ops.count("Gemm") == 2 and "MatMul" not in ops and "Transpose" not in ops, ops
    assert ops.count("ReduceSum") == 0, ops
