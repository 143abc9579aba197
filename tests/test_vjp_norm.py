"""The rules of autodiff/norm.py (BatchNormalization in inference form, LayerNormalization) and
GlobalAveragePool, the ops torch.onnx.export writes for a ResNet or a BERT-style encoder in eval
mode, checked against central finite differences in float64 with the harness of test_vjp_rules;
BatchNormalization as dlc's batchnorm feeds it in training (the batch's own statistics: the
closed-form backward) or with statistics that are other inputs (gradients for them too); and
LayerNormalization as dlc's layernorm emits it in training (its Mean and InvStdDev outputs read
by the rule), also against torch."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import F, needs_torch, torch
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


class _Training:
    training, noise = True, None

    def __init__(self):
        self.updates = {}


def batchnorm_layer(shape, tag):
    """dlc's batchnorm as it lowers for training: the batch's own statistics fed to one
    BatchNormalization, whose rule emits the closed-form backward (through mean and variance)."""
    from dlc.model.layers import LAYERS

    layer = LAYERS["batchnorm"]("bn", {"type": "batchnorm", "epsilon": 0.01})

    def build(b, x, gamma, beta):
        p = {"bn.gamma": gamma, "bn.beta": beta,
             **{f"bn.{k}": b.const(np.full(shape[1], v)) for k, v in (("running_mean", 0.0),
                                                                      ("running_var", 1.0))}}
        return layer.lower(b, x, p, _Training(), shape[1:])
    return C("BatchNormalization", build, shape, [shape[1]], [shape[1]], tag=f"layer-{tag}")


def batch_norm_fed(shape, tag):
    """Statistics that are inputs of their own, not x's: the rule's mean and var gradients."""
    def build(b, x, scale, bias, mean, var):
        return b.BatchNormalization(x, scale, bias, mean, var, epsilon=1e-3)
    c = [shape[1]]
    return C("BatchNormalization", build, shape, c, c, c, c,
             domain=("any", "any", "any", "any", "pos"), tag=f"fed-stats-{tag}")


def batch_norm_own_mean_only(shape):
    """x's own mean in the layer's form but a variance of its own: not the batch statistics the
    closed form assumes, so the rule must chain through the mean's ops instead."""
    from dlc.model.layers.norm import channel_mean

    def build(b, x, scale, bias, var):
        return b.BatchNormalization(x, scale, bias, channel_mean(b, x, len(shape)), var)
    c = [shape[1]]
    return C("BatchNormalization", build, shape, c, c, c, domain=("any", "any", "any", "pos"),
             tag="own-mean-fed-var")


def layernorm_layer(shape, tag):
    """dlc's layernorm as it lowers for training: one LayerNormalization whose Mean and
    InvStdDev outputs the rule reads (float: a float64 graph casts them)."""
    from dlc.model.layers import LAYERS

    layer = LAYERS["layernorm"]("ln", {"type": "layernorm", "epsilon": 0.01})

    def build(b, x, gamma, beta):
        return layer.lower(b, x, {"ln.gamma": gamma, "ln.beta": beta}, _Training(), shape[1:])
    return C("LayerNormalization", build, shape, [shape[-1]], [shape[-1]], tag=f"layer-{tag}")


OWN_STATISTICS = [layernorm_layer([2, 3, 6], "btd"), layernorm_layer([5, 7], "nd")]
CLOSED_FORM = [batchnorm_layer([4, 3, 2, 3], "nchw"), batchnorm_layer([6, 3], "nc"),
               batchnorm_layer([3, 3, 4], "ncl")]


CASES = [
    *CLOSED_FORM,
    *OWN_STATISTICS,
    batch_norm_fed([2, 3, 2, 2], "nchw"),
    batch_norm_fed([5, 3], "nc"),
    batch_norm_own_mean_only([2, 3, 2, 2]),
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


@pytest.mark.parametrize("case", CLOSED_FORM, ids=[c.id for c in CLOSED_FORM])
def test_batchnorm_layer_backward_is_closed_form(case):
    """No node of the backward differentiates the ops that took the statistics: the rule
    recognised them as x's own (the chain through them made three more passes over x)."""
    nodes = build_model(case, "float64").graph.node
    statistics = {n.name: n.op_type for n in nodes if ".grad" not in n.name and (
        n.op_type in ("ReduceMean", "Neg", "Add", "Reshape")
        or n.op_type == "Mul" and n.input[0] == n.input[1])}
    differentiated = {n.name.split(".grad")[0] for n in nodes if ".grad" in n.name}
    assert set(statistics.values()) >= {"ReduceMean", "Neg", "Add", "Mul"}, statistics
    assert not set(statistics) & differentiated, differentiated


def test_layernorm_layer_reads_its_statistics_and_exported_nodes_recompute_them():
    """dlc's layernorm trains through one LayerNormalization whose Mean and InvStdDev the
    backward reads (no second one, no ReduceMean); an exported model's node, without those
    outputs, gets them from one more LayerNormalization in its backward."""
    for case, count in ((OWN_STATISTICS[0], 1), (layer_norm([2, 3, 6], [6]), 2)):
        ops = [n.op_type for n in build_model(case, "float32").graph.node]
        assert ops.count("LayerNormalization") == count and "ReduceMean" not in ops, ops


@needs_torch
def test_layernorm_layer_matches_torch():
    """The float32 train-form graph in onnxruntime against torch autograd in float64, at a
    Transformer-like [batch, tokens, d], rows offset by up to 60 standard deviations (the
    backward's xhat is x inv - mean inv in one BatchNormalization: 1e-6 off torch here)."""
    case = layernorm_layer([4, 16, 64], "torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 64)) * rng.uniform(0.5, 3, (4, 16, 1)) + rng.uniform(
        -30, 30, (4, 16, 1))
    feeds = {"x0": x, "x1": rng.uniform(0.5, 1.5, 64), "x2": rng.standard_normal(64)}
    out = Evaluator(build_model(case, "float32"), allow_reference=False)(
        {k: v.astype(np.float32) for k, v in feeds.items()})
    r = np.random.default_rng(7).uniform(-1.0, 1.0, x.shape)  # build_model's loss weights
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()}
    y = F.layer_norm(leaves["x0"], (64,), leaves["x1"], leaves["x2"], eps=0.01)
    (y * torch.from_numpy(r)).sum().backward()
    for k, leaf in leaves.items():
        assert err(out[f"d{k}"], leaf.grad.numpy()) < TOL32, k
