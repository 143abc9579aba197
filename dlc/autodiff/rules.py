"""The VJP table, {ONNX op type: rule}, and the helpers that fill it. The rules live in one
module per op family (elementwise, activations, linalg, shape, indexing, reductions, conv,
norm), each op type registered once, in one of them (registering it twice is an error).

Contract: `rule(ad, node, g) -> tuple`, one entry per input of the node, or per input slot of
its op with None for the absent optional ones; None where the input is not differentiable.
`g` holds the cotangent of each output (None where no path reaches it). The driver passes `node`
as a Node view (dlc.autodiff.var: named operands, `node.y`, `node.attr`) and the cotangents as
Vars, whose Python operators emit ONNX arithmetic; a plain NodeProto reading (`node.input`,
`attr(node, ...)`) works too. Broadcasting is undone by the driver, once, for the ops registered
with `broadcast=`: GRAD_SHAPE says which shape each input's gradient comes back in.
"""

from __future__ import annotations

import functools
from typing import Callable

from dlc.graph import schema

VJP: dict[str, Callable] = {}
BROADCAST: dict[str, str] = {}  # op type -> a key of GRAD_SHAPE


def _output_shaped(ad, node, i: int):
    """Every input's gradient comes back in the output's shape (elementwise ops)."""
    return ad.shapes[node.output[0]]


def _matmul_shaped(ad, node, i: int):
    """The output's batch axes and the operand's matrix axes; a 2-D weight's gradient is one
    GEMM over the flattened batch, already its own shape."""
    out, inp = ad.shapes[node.output[0]], ad.shapes[node.input[i]]
    return inp if i == 1 and len(inp) == 2 else out[:-2] + inp[-2:]


def _gemm_bias_shaped(ad, node, i: int):
    """Gemm: only C (scalar, [n], [1, n], [m, 1] or [m, n]) broadcasts, to the [m, n] output;
    dA and dB come back in their own shapes."""
    return ad.shapes[node.output[0]] if i == 2 else None


GRAD_SHAPE = {"elementwise": _output_shaped, "matmul": _matmul_shaped,
              "gemm": _gemm_bias_shaped}  # None: the gradient already has the input's shape


def defvjp(*op_types: str, broadcast: str | None = None):
    """Register `rule` for each of `op_types` (ops of the pinned opset, not yet registered)."""
    if broadcast is not None and broadcast not in GRAD_SHAPE:
        raise ValueError(f"broadcast={broadcast!r}: not one of {sorted(GRAD_SHAPE)}")
    for op_type in op_types:
        schema(op_type)

    def register(rule):
        for op_type in op_types:
            if op_type in VJP:
                raise ValueError(f"{op_type} already has a VJP rule (in {VJP[op_type].__module__})")
            VJP[op_type] = rule
            if broadcast:
                BROADCAST[op_type] = broadcast
        return rule
    return register


def defdx(*op_types: str, broadcast: str | None = None):
    """y = op(x, *operands without a gradient): register `dx = formula(node, dy)`, dy the
    cotangent of the first output; every other input gets None."""
    def register(formula):
        @functools.wraps(formula)
        def rule(ad, node, g):
            return (formula(node, g[0]),) + (None,) * (len(node.input) - 1)
        defvjp(*op_types, broadcast=broadcast)(rule)
        return formula
    return register


def _no_gradient(ad, node, g):
    return (None,) * len(node.input)


def defzero(*op_types: str) -> None:
    """Ops whose outputs are piecewise constant or integer: no gradient flows through them."""
    defvjp(*op_types)(_no_gradient)
