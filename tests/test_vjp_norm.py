"""The rules of autodiff/norm.py (BatchNormalization in inference form, LayerNormalization) and
GlobalAveragePool, the ops torch.onnx.export writes for a ResNet or a BERT-style encoder in eval
mode, checked against central finite differences in float64 with the harness of test_vjp_rules."""

from __future__ import annotations

import numpy as np
import pytest
from test_vjp_rules import TOL32, TOL64, C, Evaluator, build_model, err, fd_grad, make_feeds

from dlc.autodiff.driver import gradients
from dlc.errors import DlcError
from dlc.graph import Builder

RNG = np.random.default_rng(3)
MEAN, VAR = RNG.uniform(-0.5, 0.5, 3), RNG.uniform(0.3, 2.0, 3)  # running statistics, fixed


def batch_norm(shape, eps=1e-5, tag=""):
    def build(b, x, scale, bias):
        return b.BatchNormalization(x, scale, bias, b.const(MEAN), b.const(VAR), epsilon=eps)
    return C("BatchNormalization", build, shape, [3], [3], tag=tag)


def layer_norm(shape, params, axis=-1, bias=True, tag=""):
    def build(b, x, scale, *b_):
        return b.LayerNormalization(x, scale, *b_, axis=axis, epsilon=1e-3)
    return C("LayerNormalization", build, shape, *([params] * (2 if bias else 1)), tag=tag)


CASES = [
    batch_norm([2, 3, 4, 5], tag="nchw"),
    batch_norm([4, 3], eps=0.1, tag="nc-eps0.1"),
    batch_norm([2, 3, 5], tag="ncl"),
    layer_norm([2, 3, 6], [6], tag="last-axis"),
    layer_norm([2, 3, 4], [3, 4], axis=1, tag="axis1"),
    layer_norm([4, 5], [5], bias=False, tag="no-bias"),
    layer_norm([2, 3, 4], [4], axis=1, tag="params-broadcast"),
    C("GlobalAveragePool", lambda b, x: b.GlobalAveragePool(x), [2, 3, 4, 5], tag="2d"),
    C("GlobalAveragePool", lambda b, x: b.GlobalAveragePool(x), [2, 3, 7], tag="1d"),
]
CASES_BY_OP: dict = {}
for _c in CASES:
    CASES_BY_OP.setdefault(_c.op, []).append(_c)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vjp_matches_finite_differences(case):
    feeds = make_feeds(case)
    ev = Evaluator(build_model(case, "float64"))
    out = ev(feeds)
    for name in feeds:
        assert err(out[f"d{name}"], fd_grad(ev, feeds, name)) < TOL64, (case.id, name)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float32_graph_runs_in_onnxruntime_and_agrees(case):
    """What training runs: the float32 gradient graph in onnxruntime, against float64."""
    feeds = make_feeds(case)
    out = Evaluator(build_model(case, "float64"))(feeds)
    out32 = Evaluator(build_model(case, "float32"), allow_reference=False)(
        {k: v.astype(np.float32) for k, v in feeds.items()})
    for k, v in out.items():
        assert out32[k].dtype == np.float32 and err(out32[k], v) < TOL32, (case.id, k)


def test_batch_norm_in_training_mode_is_refused():
    b = Builder(float_type="float64")
    x = b.input("x", "float64", [2, 3])
    c = b.const(np.ones(3))
    y = b.BatchNormalization(x, c, c, c, c, training_mode=1, outputs=3)[0]
    loss = b.ReduceSum(y, keepdims=0)
    with pytest.raises(DlcError, match="training_mode=1"):
        gradients(b, loss, [x])
