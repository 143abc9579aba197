"""VJP rules of the linear-algebra ops, Gemm and MatMul, shaped as the GEMMs a BLAS wants."""

from __future__ import annotations

from dlc.autodiff.rules import defvjp, row_bias
from dlc.autodiff.var import full, op


def _column_sums(n, c, dy):
    """dC of a row bias: dy's column sums as one GEMV, ones[m] @ dy, in C's shape. onnxruntime's
    ReduceSum over axis 0 of a [64, 256] gradient took 16 us, the GEMV under 1 us (1 thread;
    three per digits-MLP step, about 4 % of it)."""
    ones = full(op.Shape(dy, end=1), 1.0, c.dtype)
    sums = ones @ dy
    return sums if c.rank == 1 else op.Unsqueeze(sums, n.const([0]))


@defvjp("Gemm", broadcast="gemm")
def _gemm(ad, n, g):  # Y = alpha op(A) op(B) + beta C; C un-broadcast by the driver, or a GEMV
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
    dc = None if c is None else _column_sums(n, c, dy) if row_bias(c.shape) else dy  # [m, n]
    if dc is not None and beta != 1.0:
        dc = dc * beta
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
