"""Conv's weight gradient, dW[f, c, u] = sum over n and output positions of dY[n, f] X_u[n, c],
X_u the (padded) input at the positions that kernel offset u sees, in the forms measured fastest
on onnxruntime CPU (README, Speed): GEMMs over im2col columns cut by strided Slices for
groups == 1, a Conv over batch/channel-swapped tensors otherwise."""

from __future__ import annotations

import numpy as np

from dlc.autodiff.var import op


def _tap(t, u: tuple, axis: int, ys, s, d):
    """The (padded) input positions that kernel offset u sees; spatial axes from `axis`."""
    r = len(u)
    start = [u[i] * d[i] for i in range(r)]
    end = [start[i] + (ys[2 + i] - 1) * s[i] + 1 for i in range(r)]
    return op.Slice(t, start, end, list(range(axis, axis + r)), list(s))


def _stack_taps(cols: list):
    """Per-offset tensors stacked on a new axis 2 (one tensor: as it is)."""
    if len(cols) == 1:
        return cols[0]
    return op.Concat(*[op.Unsqueeze(c, [2]) for c in cols], axis=2)


def by_gemm(x, dy, ys, ws, s, d, p):
    """dW for groups == 1 as GEMMs over im2col columns. (onnxruntime runs the Conv form below, a
    Conv whose 'kernel' is the output gradient, as im2col plus a GEMM with a tiny output: 2-3x
    slower.) Few input channels, C * prod(kernel) < 64: one batched MatMul per image over all
    offsets, summed over the batch. Otherwise one Gemm per offset, dW[:, :, u] = dY' X_u'^T
    contracting over K = N * prod(out), long and contiguous, with the channel axis moved first
    ('). For output rows under 16 wide the batch axis goes last too, so that each Slice copies
    runs of W*N floats rather than W: 22% faster at 8x8, 15% slower at 32x32, where its
    Transposes cost more."""
    r = len(ws) - 2
    taps = list(np.ndindex(*ws[2:]))
    if ws[1] * len(taps) < 64:
        xp = op.Pad(x, [0, 0, *p[:r], 0, 0, *p[r:]]) if any(p) else x
        cols = _stack_taps([_tap(xp, u, 2, ys, s, d) for u in taps])  # [N, C, T, *out]
        cols = op.Reshape(cols, [0, ws[1] * len(taps), -1])  # [N, C*T, P]
        per_image = op.Reshape(dy, [0, ws[0], -1]) @ op.Transpose(cols, perm=[0, 2, 1])
        return op.Reshape(op.ReduceSum(per_image, [0], keepdims=0), ws)  # [N, F, C*T] summed
    if ys[-1] < 16:  # short rows: batch axis last, [N, C, *S] -> [C, *S, N]
        perm, axis, pads = [1, *range(2, r + 2), 0], 1, [0, *p[:r], 0, 0, *p[r:], 0]
    else:  # rows long enough to copy: [C, N, *S], a cheaper Transpose
        perm, axis, pads = [1, 0, *range(2, r + 2)], 2, [0, 0, *p[:r], 0, 0, *p[r:]]
    xt = op.Transpose(x, perm=perm)
    if any(p):
        xt = op.Pad(xt, pads)
    dyt = op.Reshape(op.Transpose(dy, perm=perm), [ws[0], -1])  # [F, K]
    cols = [op.Gemm(dyt, op.Reshape(_tap(xt, u, axis, ys, s, d), [ws[1], -1]), transB=1)
            for u in taps]  # each [F, C]
    return op.Reshape(_stack_taps(cols), ws)


def _swap01(t, rank: int):
    return op.Transpose(t, perm=[1, 0, *range(2, rank)])


def by_conv(x, dy, ws, s, d, p, groups):
    """dW as a Conv of the input over the output gradient, channels and batch swapped:
    dW[f, c] = sum_n corr(X[n, c], dY[n, f]) with stride and dilation exchanged. For groups > 1
    the full [C, F] cross term is computed and its diagonal blocks are kept."""
    rank = len(ws)
    cross = op.Conv(_swap01(x, rank), _swap01(dy, rank), strides=d, dilations=s, pads=p)
    cross = op.Slice(cross, [0] * (rank - 2), ws[2:], list(range(2, rank)))  # [C, F, k...]
    if groups > 1:
        cg, fg = ws[1], ws[0] // groups
        blocks = [op.Slice(cross, [i * cg, i * fg], [(i + 1) * cg, (i + 1) * fg], [0, 1])
                  for i in range(groups)]
        cross = op.Concat(*blocks, axis=1)  # [C/G, F, k...]
    return _swap01(cross, rank)
