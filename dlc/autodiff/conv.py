"""VJP rules of convolution and pooling: Conv (dX by ConvTranspose with the same weights, dW by
the speed-tuned forms of conv_weight.py, dB by a sum), MaxPool (dy scattered to the argmax
through the Indices output), AveragePool (dy spread over each window by a ConvTranspose) and
GlobalAveragePool (dy spread evenly)."""

from __future__ import annotations

import numpy as np

from dlc.autodiff import conv_weight
from dlc.autodiff.rules import defdx, defvjp
from dlc.autodiff.var import full, op


def spatial(n, rank: int):
    """strides, dilations, pads of a Conv/Pool node with their ONNX defaults."""
    return (n.attr("strides") or [1] * rank, n.attr("dilations") or [1] * rank,
            n.attr("pads") or [0] * (2 * rank))


def output_padding(xs, ys, k, s, d, p) -> list[int]:
    """What ConvTranspose must add so that it maps an output-sized tensor back to the input size."""
    r = len(k)
    return [xs[2 + i] - ((ys[2 + i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - p[i] - p[r + i])
            for i in range(r)]


@defvjp("Conv")
def _conv(ad, n, g):  # Y = X * W + B
    (x, w, bias), (dy,) = n.inputs, g
    xs, ws, ys = x.shape, w.shape, n.y.shape
    rank, groups = len(ws), n.attr("group", 1)
    s, d, p = spatial(n, rank - 2)
    dx = op.ConvTranspose(dy, w, strides=s, pads=p, dilations=d, group=groups,
                          output_padding=output_padding(xs, ys, ws[2:], s, d, p))
    dw = conv_weight.by_gemm(x, dy, ys, ws, s, d, p) if groups == 1 \
        else conv_weight.by_conv(x, dy, ws, s, d, p, groups)
    db = None if bias is None else op.ReduceSum(dy, [0, *range(2, rank)], keepdims=0)
    return dx, dw, db


@defdx("MaxPool")
def _maxpool(n, dy):  # scatter-add dy at the argmax offsets (Indices index the flat input)
    x, (_, indices) = n.x, n.outputs
    if indices is None:  # exported models ask only for Y: the same pool again, for the Indices
        attrs = {a.name: n.attr(a.name) for a in n.proto.attribute}
        indices = op.MaxPool(x, outputs=2, **attrs)[1]
    flat = op.ScatterElements(full(op.Reshape(op.Size(x), [1]), 0, x.dtype),
                              op.Reshape(indices, [-1]), op.Reshape(dy, [-1]), axis=0,
                              reduction="add")
    return op.Reshape(flat, op.Shape(x))


@defdx("AveragePool")
def _avgpool(n, dy):  # spread dy / count over each window: ConvTranspose with a ones kernel
    x, ys, k = n.x, n.y.shape, n.attr("kernel_shape")
    s, _, p = spatial(n, len(k))
    window = int(np.prod(k))
    if any(p) and not n.attr("count_include_pad", 0):
        counts = op.AveragePool(full(op.Shape(x), 1, x.dtype), kernel_shape=k, strides=s, pads=p,
                                count_include_pad=1)
        ds = dy / (counts * float(window))
    else:
        ds = dy * (1.0 / window)
    kernel = n.const(np.ones([1, 1, *k]))  # in the graph's float type
    spread = op.ConvTranspose(op.Reshape(ds, [-1, 1, *ys[2:]]), kernel, strides=s, pads=p,
                              output_padding=output_padding(x.shape, ys, k, s, [1] * len(k), p))
    return op.Reshape(spread, op.Shape(x))


@defdx("GlobalAveragePool")
def _global_avgpool(n, dy):  # each input entry gets dy / (entries per channel)
    count = op.Cast(op.Size(n.x) / op.Size(n.y), to=n.x.dtype)
    return op.Expand(dy / count, op.Shape(n.x))
