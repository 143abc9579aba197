"""Conv's weight gradient, dW[f, c, u] = sum over n and output positions of dY[n, f] X_u[n, c],
X_u the (padded) input at the positions that kernel offset u sees, in the forms measured fastest
on onnxruntime CPU at 1 and 2 threads (README, Speed; bench/grad_forms.py --cases conv_dw*):
GEMMs over im2col columns cut by strided Slices for groups == 1, a Conv over batch/channel-
swapped tensors otherwise."""

from __future__ import annotations

import numpy as np

from dlc.autodiff.var import op


def _tap(t, u: tuple, axis: int, ys, s, d):
    """The (padded) input positions that kernel offset u sees; spatial axes from `axis`."""
    r = len(u)
    start = [u[i] * d[i] for i in range(r)]
    end = [start[i] + (ys[2 + i] - 1) * s[i] + 1 for i in range(r)]
    return op.Slice(t, start, end, list(range(axis, axis + r)), list(s))


def _stack_taps(cols: list, axis: int = -1):
    """Per-offset tensors stacked on a new axis `axis` (one tensor: as it is)."""
    if len(cols) == 1:
        return cols[0]
    return op.Concat(*[op.Unsqueeze(c, [axis]) for c in cols], axis=axis)


def by_gemm(x, dy, ys, ws, s, d, p):
    """dW for groups == 1 as GEMMs over im2col columns, X_u cut by a strided Slice per kernel
    offset u. (onnxruntime runs the Conv form below, a Conv whose 'kernel' is the output
    gradient, as im2col plus a GEMM with a tiny output: 2-3x slower.) Which GEMMs, by shape:

    | C * prod(kernel) < 64 | per image, offsets stacked: one batched [F, P] x [P, C k] GEMM |
    | P >= 256 output positions | per image and offset: batched [F, P] x [P, C] GEMMs |
    | otherwise | per offset over the whole batch: one [F, K] x [K, C] Gemm, K = N P |

    Per-image GEMMs are batched MatMuls, which onnxruntime spreads over its threads image by
    image, and need no Transpose of X or dY; one Gemm per offset has an F x C output too small
    to split, so it runs on one thread (ResNet-20's 16x32x32 conv: 18.7 ms at 1 and 2 threads
    against 18.2 and 12.9 per image). Below 256 positions per image the per-image GEMMs are too
    small (64x8x8: 20 against 8.5 ms at 1 thread) and the per-offset form stays."""
    stacked = ws[1] * int(np.prod(ws[2:])) < 64
    if stacked or int(np.prod(ys[2:])) >= 256:
        return _per_image(x, dy, ys, ws, s, d, p, stacked)
    return _per_offset(x, dy, ys, ws, s, d, p)


def _per_image(x, dy, ys, ws, s, d, p, stacked: bool):
    """dW = sum over images of dY[n] X_u[n]^T, [F, P] x [P, C] per offset, or over all offsets at
    once when `stacked` (few input channels: one GEMM of C * prod(kernel) columns)."""
    r, taps = len(ws) - 2, list(np.ndindex(*ws[2:]))
    xp = op.Pad(x, [0, 0, *p[:r], 0, 0, *p[r:]]) if any(p) else x
    cols = [_tap(xp, u, 2, ys, s, d) for u in taps]  # [N, C, *out] each
    if stacked:  # [N, C, T, *out]
        cols = [_stack_taps(cols, 2)]
    width = ws[1] * len(taps) if stacked else ws[1]
    dy3 = op.Reshape(dy, [0, ws[0], -1])  # [N, F, P]
    per_image = _stack_taps([dy3 @ op.Transpose(op.Reshape(c, [0, width, -1]), perm=[0, 2, 1])
                             for c in cols])  # [N, F, C*T], or [N, F, C, T] per offset
    return op.Reshape(op.ReduceSum(per_image, [0], keepdims=0), ws)


def _per_offset(x, dy, ys, ws, s, d, p):
    """One Gemm per offset, dW[:, :, u] = dY' X_u'^T contracting over K = N * prod(out), long
    and contiguous, with the channel axis moved first ('). For output rows under 16 wide the
    batch axis goes last too, so that each Slice copies runs of W*N floats rather than W: 22%
    faster at 8x8, 15% slower at 32x32, where its Transposes cost more."""
    r, taps = len(ws) - 2, list(np.ndindex(*ws[2:]))
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
