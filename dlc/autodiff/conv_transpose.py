"""The VJP rule of ConvTranspose (the conv_transpose2d layer's op).

ConvTranspose with weights W is the adjoint of Conv with the same W, strides, dilations and pads
(W is [C_in, C_out / groups, k...] for both), so its input gradient is that Conv of the output
gradient, and its weight gradient is a Conv's weight gradient with the roles of input and output
gradient exchanged: dW[i, o, u] = sum_n,q X[n, i, q] dY[n, o, q s + u d - p].
"""

from __future__ import annotations

from dlc.autodiff.rules import defvjp
from dlc.graph import attr


def _swap01(b, t: str, rank: int) -> str:
    return b.Transpose(t, perm=[1, 0, *range(2, rank)])


def _conv_sizes(sizes, k, s, d, p) -> list[int]:
    r = len(k)
    return [(sizes[i] + p[i] + p[r + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(r)]


def _crop(b, t: str, have: list[int], want: list[int]) -> str:
    """The spatial axes of t cut from `have` to `want` positions: output_padding can leave a
    Conv of the output gradient more positions than the input had (each past the end)."""
    if list(have) == list(want):
        return t
    axes = list(range(2, 2 + len(want)))
    return b.Slice(t, b.const([0] * len(want)), b.const(list(want)), b.const(axes))


def _weight_grad(b, x: str, g: str, xs, ys, ws, s, d, p, groups: int) -> str:
    """dW as one Conv over the batch: dY (channels first, batch as channels) correlated with X
    (same swap) at stride d and dilation s gives [C_out, C_in, k...]; the groups' diagonal
    blocks are kept, then the two channel axes are swapped back."""
    rank = len(ws)
    full = b.Conv(_swap01(b, g, rank), _swap01(b, x, rank), strides=d, dilations=s, pads=p)
    full = _crop(b, full, _conv_sizes(ys[2:], xs[2:], d, s, p), ws[2:])  # [C_out, C_in, k...]
    if groups > 1:
        ci, co = ws[0] // groups, ws[1]
        full = b.Concat(*[b.Slice(full, b.const([i * co, i * ci]),
                                  b.const([(i + 1) * co, (i + 1) * ci]), b.const([0, 1]))
                          for i in range(groups)], axis=1)  # [C_out / G, C_in, k...]
    return _swap01(b, full, rank)


@defvjp("ConvTranspose")
def _conv_transpose(ad, n, g):  # dX: Conv with the same W; dW: a Conv over the batch; dB: a sum
    if attr(n, "output_shape") or attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("ConvTranspose gradient needs explicit pads (no output_shape, "
                                  "no auto_pad)")
    b, (x, w), dy = ad.b, n.input[:2], g[0]
    xs, ws, ys = ad.shapes[x], ad.shapes[w], ad.shapes[n.output[0]]
    rank, groups = len(ws), attr(n, "group", 1)
    s = attr(n, "strides") or [1] * (rank - 2)
    d = attr(n, "dilations") or [1] * (rank - 2)
    p = attr(n, "pads") or [0] * (2 * (rank - 2))
    gx = _crop(b, b.Conv(dy, w, strides=s, dilations=d, pads=p, group=groups),
               _conv_sizes(ys[2:], ws[2:], s, d, p), xs[2:])
    gw = _weight_grad(b, x, dy, xs, ys, ws, s, d, p, groups)
    if len(n.input) < 3 or not n.input[2]:  # no bias, or an empty optional-input slot
        return (gx, gw, None)[:len(n.input)]
    return gx, gw, b.ReduceSum(dy, b.const([0, *range(2, rank)]), keepdims=0)
