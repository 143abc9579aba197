"""VJP rules for the linear-algebra ops, Gemm and MatMul, shaped as the GEMMs a BLAS wants.
Registered into the table of rules.py (`defvjp`), with the same contract:
`rule(ad, node, g) -> one gradient (or None) per ONNX input`.
"""

from __future__ import annotations

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


@defvjp("MatMul", "matmul")
def _matmul(ad, n, g):
    """An N-D activation times a 2-D weight (dense layers over sequences, attention projections):
    one 2-D GEMM each over the flattened leading axes, dW = a'^T g' with a' = a flattened to
    [-1, d], and dA = g' W^T reshaped back; BLAS sees one long GEMM, and no [B, d, n] per-sample
    product is made for the driver to sum over B (that cost 66% of a 12-layer Transformer step).
    The weight's gradient comes back 2-D, as the driver expects of a 2-D MatMul operand.
    Otherwise (batched operands, attention's scores): batched MatMuls, batch axes summed by the
    driver. (A weight used by many MatMuls, as an unrolled LSTM's recurrent one, gets one GEMM
    per use, summed: stacking them into one GEMM over all uses' rows measured no faster,
    bench/grad_forms.py recurrent_dw.)"""
    b, (a, c) = ad.b, n.input
    if ad.rank(a) < 2 or ad.rank(c) < 2:
        raise NotImplementedError("MatMul gradient with a 1-D operand")
    if ad.rank(a) > 2 and ad.rank(c) == 2:
        last = ad.rank(a) - 1
        flat_a, flat_g = b.Flatten(a, axis=last), b.Flatten(g[0], axis=last)
        return (b.Reshape(b.Gemm(flat_g, c, transB=1), b.Shape(a)),
                b.Gemm(flat_a, flat_g, transA=1))
    return b.MatMul(g[0], _swap_last(ad, c)), b.MatMul(_swap_last(ad, a), g[0])
