"""A convolution as im2col plus one GEMM over the whole batch, for the train graph only.

onnxruntime's CPU Conv (and ConvTranspose, dX's form) runs one GEMM per image, filters x
output positions: with few positions per image that GEMM is too narrow for the BLAS kernel to
run near its rate. Lowered here, channels last, as

    x [N, C, *S] -> Transpose [N, *S, C] -> Pad -> one Slice per kernel offset (the taps)
      -> Concat on the channel axis -> [N P, T C] @ W as [T C, F] (+ bias) -> [N, F, *O]

the forward is one GEMM with N P rows, and the VJP table makes the backward one GEMM for dW
([T C, N P] x [N P, F]) and one for the columns' gradient, with the Slice/Concat/Pad gradients
as the col2im. That wins only where the per-image GEMM is narrow (see `lowers`). Between two
lowered convs onnxruntime's transpose optimizer cancels the Transpose back to channels-first
against the next one's, through an elementwise activation. Exported and eval graphs keep the
plain Conv (constant weights: onnxruntime's NCHWc path applies there)."""

from __future__ import annotations

import itertools
import math


MAX_POSITIONS = 16  # output positions per image: the measured crossover (see `lowers`)


def lowers(device: str, groups: int, out) -> bool:
    """Whether a train graph's Conv becomes im2col + one GEMM: on CPU, where it was measured
    (CUDA keeps cuDNN's Conv), group 1 and at most MAX_POSITIONS output positions per image.
    Forward + backward, CPU ms at 1 thread against the Conv node with its VJP rule
    (bench/grad_forms.py --cases im2col_*; 2 threads alike or better): 2x2 outputs 1.9 against
    4.6, 4x4 2.0 against 2.6, stride 2 to 2x2 5.6 against 9.2 (4x4 at 64 -> 128 channels: a
    tie); at 8x8 it loses (the digits CNN's conv2 6.8 against 6.3, ResNet-20's 64x8x8 37
    against 25), at 32x32 3x: in-graph taps, Concat and col2im then cost more than the GEMMs
    gain. The columns, kept for dW, hold T x the input: small beside a net's wider early
    activations. A whole step with such convs: bench/grad_forms.py --cases step_vgg_small."""
    return device == "cpu" and groups == 1 and math.prod(out) <= MAX_POSITIONS


def lower(b, x, w, bias, ws, s, d, pads, out):
    """Y [N, F, *out] of a group-1 Conv of x [N, C, *in] with W [F, C, *k] (shape `ws`)."""
    (filters, channels, *k), r = ws, len(ws) - 2
    t = b.Transpose(x, perm=[0, *range(2, r + 2), 1])  # [N, *S, C]
    if any(pads):
        t = b.Pad(t, b.const([0, *pads[:r], 0, 0, *pads[r:], 0]))
    taps = [b.Slice(t, b.const([u[i] * d[i] for i in range(r)]),
                    b.const([u[i] * d[i] + (out[i] - 1) * s[i] + 1 for i in range(r)]),
                    b.const(list(range(1, r + 1))), b.const(list(s)))
            for u in itertools.product(*map(range, k))]
    cols = b.Concat(*taps, axis=-1) if len(taps) > 1 else taps[0]  # [N, *O, T C]: (tap, c)
    width = channels * math.prod(k)
    wm = b.Reshape(b.Transpose(w, perm=[*range(2, r + 2), 1, 0]), b.const([width, -1]))
    y = b.Gemm(b.Reshape(cols, b.const([-1, width])), wm, bias)  # [N P, F]
    y = b.Reshape(y, b.const([-1, *out, filters]))
    return b.Transpose(y, perm=[0, r + 1, *range(1, r + 1)])
