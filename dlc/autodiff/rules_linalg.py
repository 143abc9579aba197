"""VJP rules for the linear-algebra ops, Gemm and MatMul, shaped as the GEMMs a BLAS wants.
Registered into the table of rules.py (`defvjp`), with the same contract:
`rule(ad, node, g) -> one gradient (or None, or an `Outer` term) per ONNX input`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlc.autodiff.rules import defvjp
from dlc.graph import attr


# ---- linear algebra ---------------------------------------------------------------------------
@defvjp("Gemm", "elementwise")
def _gemm(ad, n, g):  # Y = alpha op(A) op(B) + beta C
    b, (a_, b_) = ad.b, n.input[:2]
    alpha, beta = attr(n, "alpha", 1.0), attr(n, "beta", 1.0)
    ta, tb = attr(n, "transA", 0), attr(n, "transB", 0)
    if ta:  # dA = alpha op(B) g^T
        ga = b.Gemm(b_, g[0], alpha=alpha, transA=tb, transB=1)
    else:  # dA = alpha g op(B)^T
        ga = b.Gemm(g[0], b_, alpha=alpha, transB=1 - tb)
    if tb:  # dB = alpha g^T op(A)
        gb = b.Gemm(g[0], a_, alpha=alpha, transA=1, transB=ta)
    else:  # dB = alpha op(A)^T g
        gb = b.Gemm(a_, g[0], alpha=alpha, transA=1 - ta)
    gc = None
    if len(n.input) > 2 and n.input[2]:
        gc = g[0] if beta == 1.0 else b.Mul(g[0], b.const(beta))
    return (ga, gb, gc)[:len(n.input)]


def _swap_last(ad, name):
    r = ad.rank(name)
    return ad.b.Transpose(name, perm=[*range(r - 2), r - 1, r - 2])


@dataclass(frozen=True)
class Outer:
    """A weight-gradient term a^T g (a: [rows, d], g: [rows, n]) left for the driver, which
    stacks every such term of one weight into ONE GEMM over all their rows: a recurrent weight
    used at 64 time steps gets one GEMM with K = 64 x batch, not 64 with K = batch summed."""

    a: str
    g: str


def stack_outer(b, terms: list[Outer]) -> str:
    if len(terms) == 1:
        return b.Gemm(terms[0].a, terms[0].g, transA=1)
    return b.Gemm(b.Concat(*[t.a for t in terms], axis=0),
                  b.Concat(*[t.g for t in terms], axis=0), transA=1)


@defvjp("MatMul", "matmul")
def _matmul(ad, n, g):
    """An activation times a 2-D weight (dense layers over sequences, attention projections,
    recurrent steps): 2-D GEMMs over the flattened leading axes, dW = a'^T g' (an `Outer` term)
    with a' = a flattened to [-1, d], and dA = g' W^T reshaped back; BLAS sees long GEMMs, and no
    [B, d, n] per-sample product is made for the driver to sum over B (that cost 66% of a
    12-layer Transformer step). Otherwise (batched operands, attention's scores): batched
    MatMuls, batch axes summed by the driver."""
    b, (a, c) = ad.b, n.input
    if ad.rank(a) < 2 or ad.rank(c) < 2:
        raise NotImplementedError("MatMul gradient with a 1-D operand")
    if ad.rank(c) == 2:
        last = ad.rank(a) - 1
        flat_a, flat_g = (b.Flatten(t, axis=last) if last > 1 else t for t in (a, g[0]))
        ga = b.Gemm(flat_g, c, transB=1)
        return b.Reshape(ga, b.Shape(a)) if last > 1 else ga, Outer(flat_a, flat_g)
    return b.MatMul(g[0], _swap_last(ad, c)), b.MatMul(_swap_last(ad, a), g[0])
