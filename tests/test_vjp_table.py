"""The VJP table itself: one module registers each op type; the driver checks each rule's arity;
rules written against the plain NodeProto keep working; Var operators emit exactly the nodes of
the nested builder calls; Gemm un-broadcasts its bias alone."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from test_vjp_rules import TOL64, C, Evaluator, build_model, err, fd_grad, make_feeds

from dlc.autodiff import rules
from dlc.autodiff.driver import gradients
from dlc.autodiff.rules import VJP, defvjp
from dlc.autodiff.var import Node, Var
from dlc.graph import Builder, attr

AUTODIFF = Path(rules.__file__).parent
DEFINERS = {"defvjp", "defdx", "defzero"}


def _registrations() -> dict[str, list[str]]:
    """{op type: modules whose defvjp/defdx/defzero calls name it}, read from the source."""
    found: dict[str, list[str]] = {}
    for path in sorted(AUTODIFF.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in DEFINERS:
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.setdefault(arg.value, []).append(path.stem)
    return found


def test_each_op_type_is_registered_in_exactly_one_module():
    found = _registrations()
    assert set(found) == set(VJP), f"not found in the source: {set(VJP) ^ set(found)}"
    twice = {op: mods for op, mods in found.items() if len(mods) != 1}
    assert not twice, f"registered more than once: {twice}"
    assert "rules" not in {m for mods in found.values() for m in mods}, "the registry holds rules"


def test_driver_stays_small():
    """STYLE.md convention 3: the driver is four steps and an arity check, at most 150 lines."""
    assert len((AUTODIFF / "driver.py").read_text().splitlines()) <= 150


def test_registering_an_op_twice_is_refused():
    with pytest.raises(ValueError, match="Relu already has a VJP rule"):
        defvjp("Relu")(lambda ad, n, g: (None,))
    with pytest.raises(ValueError, match="broadcast="):
        defvjp("Sin", broadcast="rowwise")
    assert "Sin" not in VJP


def _sin_graph():
    b = Builder(float_type="float64")
    x = b.input("x", "float64", [3, 4])
    return b, x, b.ReduceSum(b.Sin(x), keepdims=0)


@pytest.mark.parametrize("returned", [0, 2, "extra-slot"])
def test_driver_refuses_a_rule_of_the_wrong_arity(returned, monkeypatch):
    answer = {0: (), 2: ("g", None), "extra-slot": None}[returned]
    monkeypatch.setitem(VJP, "Sin", lambda ad, n, g: answer if answer is not None else (g[0], g[0]))
    b, x, loss = _sin_graph()
    with pytest.raises(AssertionError, match=r"VJP rule for Sin returned \d gradients for the 1 "
                                             r"inputs of node Sin"):
        gradients(b, loss, [x])


def test_a_rule_written_against_the_plain_node_proto_still_works():
    """The contract other modules register through (`n.input[0]`, `attr(n, ...)`, `g[0]` given
    to the builder, tensor names returned), as before the Node view: d sin = cos."""
    @defvjp("Sin")
    def _sin(ad, n, g):
        assert attr(n, "missing", 7) == 7 and n.op_type == "Sin"
        return (ad.b.Mul(g[0], ad.b.Cos(n.input[0])),)
    try:
        b, x, loss = _sin_graph()
        b.output(gradients(b, loss, [x])[x], "dx", "float64", [3, 4])
        xv = np.random.default_rng(0).uniform(-1, 1, [3, 4])
        dx = Evaluator(b.model("sin"), allow_reference=False)({"x": xv})["dx"]
        np.testing.assert_allclose(dx, np.cos(xv), rtol=1e-12)
    finally:
        VJP.pop("Sin")


def test_var_operators_emit_the_nested_builder_calls():
    """`dy * (y * (1.0 - y))` and friends: the same nodes, in the same order, as raw calls."""
    def ops(b):
        return [(n.op_type, list(n.input)) for n in b.nodes]
    raw, via = Builder(), Builder()
    for b in (raw, via):
        b.input("y", "float32", [2, 3]), b.input("dy", "float32", [2, 3])
    raw.Mul("dy", raw.Mul("y", raw.Sub(raw.const(1.0), "y")))
    raw.Neg(raw.Div(raw.Mul("dy", "y"), "y"))
    raw.MatMul("dy", raw.Transpose("y", perm=[1, 0]))
    ad = type("AD", (), {"b": via, "shapes": {"y": [2, 3]}, "types": {}})()
    y, dy = Var(ad, "y"), Var(ad, "dy")
    dy * (y * (1.0 - y))
    -(dy * y / y)
    dy @ y.T
    assert ops(via) == ops(raw)


def test_node_view_names_operands_per_input_slot():
    b = Builder()
    x, w = b.input("x", "float32", [1, 2, 5, 5]), b.input("w", "float32", [3, 2, 3, 3])
    b.Conv(x, w, None)
    b.Concat(x, x, x, axis=1)
    conv, concat = (Node(None, n) for n in b.nodes)
    xv, wv, bias = conv.inputs
    assert (xv.name, wv.name, bias) == (x, w, None) and conv.y.name == conv.output[0]
    assert len(concat.inputs) == 3  # variadic: one per input


# ---- Gemm: C alone is un-broadcast ---------------------------------------------------------
def _gemm(ta=0, tb=0):
    return lambda b, a, w, *c: b.Gemm(a, w, *c, transA=ta, transB=tb, alpha=0.7, beta=1.3)


BIAS_CASES = [  # (transA, transB, m, k, n, C shape, how C's gradient is summed): every C shape
    # Gemm accepts, and the old false matches of dA / dB against the output's shape (k = 1,
    # n = 1, m = 1); a sum over leading axes only is one GEMV (MatMul), any other a ReduceSum
    (0, 1, 4, 3, 1, [1], "MatMul"), (0, 1, 4, 3, 1, [], "ReduceSum"),
    (0, 0, 3, 1, 5, [5], "MatMul"), (1, 0, 1, 4, 5, [1, 1], "ReduceSum"),
    (0, 0, 3, 4, 5, [1], "ReduceSum"), (1, 1, 3, 4, 5, [1, 1], "ReduceSum"),
    (0, 1, 3, 4, 5, [3, 1], "ReduceSum"), (1, 0, 1, 1, 1, [], "ReduceSum"),
    (1, 1, 3, 4, 5, [1, 5], "MatMul"), (0, 0, 1, 4, 5, [5], "MatMul"),
]


@pytest.mark.parametrize("ta,tb,m,k,n,c,summed", BIAS_CASES,
                         ids=[f"tA{ta}tB{tb}-m{m}k{k}n{n}-C{c}"
                              for ta, tb, m, k, n, c, _ in BIAS_CASES])
def test_gemm_bias_is_unbroadcast_alone(ta, tb, m, k, n, c, summed):
    """Finite differences for each bias shape, and the backward pass reduces only for C, by one
    ReduceSum or one GEMV (a bias over the output's columns: ones[m] @ dy), never for dA or dB."""
    case = C("Gemm", _gemm(ta, tb), [k, m] if ta else [m, k], [n, k] if tb else [k, n], c)
    feeds = make_feeds(case)
    model = build_model(case, "float64")
    ev = Evaluator(model)
    out = ev(feeds)
    for name in feeds:
        assert err(out[f"d{name}"], fd_grad(ev, feeds, name)) < TOL64, name
    ops = [nd.op_type for nd in model.graph.node]
    assert ops.count("ReduceSum") - 1 == (summed == "ReduceSum"), ops  # - the loss's
    assert ops.count("MatMul") == (summed == "MatMul"), ops
