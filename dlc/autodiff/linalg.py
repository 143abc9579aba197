"""VJP rules of the linear-algebra ops, Gemm and MatMul, shaped as the GEMMs a BLAS wants."""

from __future__ import annotations

from dlc.autodiff.rules import defvjp
from dlc.autodiff.var import op


@defvjp("Gemm", broadcast="gemm")
def _gemm(ad, n, g):  # Y = alpha op(A) op(B) + beta C; only C is un-broadcast (by the driver)
    (a, b, c), (dy,) = n.inputs, g
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    if ta:  # dA = alpha op(B) dy^T
        da = op.Gemm(b, dy, alpha=alpha, transA=tb, transB=1)
    else:  # dA = alpha dy op(B)^T
        da = op.Gemm(dy, b, alpha=alpha, transB=1 - tb)
    if tb:  # dB = alpha dy^T op(A)
        db = op.Gemm(dy, a, alpha=alpha, transA=1, transB=ta)
    else:  # dB = alpha op(A)^T dy
        db = op.Gemm(a, dy, alpha=alpha, transA=1 - ta)
    dc = None if c is None else dy if beta == 1.0 else dy * beta  # [m, n]
    return da, db, dc


@defvjp("MatMul", broadcast="matmul")
def _matmul(ad, n, g):
    """An N-D activation times a 2-D weight (dense layers over sequences, attention projections):
    one 2-D GEMM each over the flattened leading axes, dW = a'^T g' with a' = a flattened to
    [-1, d], and dA = g' W^T reshaped back; BLAS sees one long GEMM, and no [B, d, n] per-sample
    product is made for the driver to sum over B (that cost 66% of a 12-layer Transformer step).
    The weight's gradient comes back 2-D, as the driver expects of a 2-D MatMul operand.
    Otherwise (batched operands, attention's scores): batched MatMuls, batch axes summed by the
    driver. (A weight used by many MatMuls, as an unrolled LSTM's recurrent one, gets one GEMM
    per use, summed, which onnxruntime fuses into Gemms accumulating into the running sum:
    on the 2x256 LSTM over 64 steps those 126 ran at the rate of the one-GEMM input
    projections, 83 against 80 GFLOP/s under the profiler at 1 thread; stacking them into one
    GEMM over all uses' rows measured no faster, bench/grad_forms.py recurrent_dw.)"""
    (a, w), (dy,) = n.inputs, g
    if a.rank < 2 or w.rank < 2:
        raise NotImplementedError("MatMul gradient with a 1-D operand")
    if a.rank > 2 and w.rank == 2:
        flat_a, flat_dy = op.Flatten(a, axis=a.rank - 1), op.Flatten(dy, axis=a.rank - 1)
        return (op.Reshape(op.Gemm(flat_dy, w, transB=1), op.Shape(a)),
                op.Gemm(flat_a, flat_dy, transA=1))
    return dy @ w.T, a.T @ dy
