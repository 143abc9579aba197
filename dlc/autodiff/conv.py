"""VJP rules of convolution and pooling: Conv (dX by a Conv with the flipped kernel or by a
ConvTranspose with the same weights, dW by the speed-tuned forms of conv_weight.py, dB by a
sum), MaxPool (dy put at the argmax the Indices output names), AveragePool (dy spread
over each window by a ConvTranspose) and GlobalAveragePool (dy spread evenly)."""

from __future__ import annotations

import numpy as np

from dlc.autodiff import conv_weight
from dlc.autodiff.rules import defdx, defvjp
from dlc.autodiff.var import full, op


def spatial(n, rank: int):
    """strides, dilations, pads of a Conv/Pool node with their ONNX defaults."""
    return (n.attr("strides") or [1] * rank, n.attr("dilations") or [1] * rank,
            n.attr("pads") or [0] * (2 * rank))


def flipped(w, ws, groups: int):
    """W [F, C/G, k...] as the kernel of its adjoint correlation, [C, F/G, k...]: the spatial
    axes reversed and the two channel axes swapped within each group."""
    r = len(ws) - 2
    w = op.Slice(w, [-1] * r, [np.iinfo(np.int64).min] * r, list(range(2, r + 2)), [-1] * r)
    if groups == 1:
        return op.Transpose(w, perm=[1, 0, *range(2, r + 2)])
    w = op.Reshape(w, [groups, ws[0] // groups, *ws[1:]])
    w = op.Transpose(w, perm=[0, 2, 1, *range(3, r + 3)])
    return op.Reshape(w, [ws[1] * groups, ws[0] // groups, *ws[2:]])


def input_grad(dy, w, xs, ys, ws, s, d, p, groups: int):
    """dX, Conv's adjoint applied to dY: a Conv of dY with the flipped kernel and pads
    d (k - 1) - p, or a ConvTranspose with W. onnxruntime splits a Conv's output positions over
    its threads, but runs a ConvTranspose as one small GEMM per image plus a single-threaded
    col2im, which gains nothing from a second thread (ResNet-20's stride-1 3x3 convs at 2
    threads: 5.4 against 11.3 ms at 16x32x32, 4.0 against 7.6 at 64x8x8; at 1 thread 1.10x
    and 0.97x the CPU time; bench/grad_forms.py --cases conv_dx,conv_dx_8x8). The Conv's
    im2col holds F k values per position where ConvTranspose's col2im holds C k, so it is kept
    for convs that do not widen (F <= C: the digits CNN's 32 -> 64 conv, 2.6 against 2.0 ms at
    1 thread, keeps ConvTranspose), at stride 1 (a strided conv's Conv would run over a
    zero-interleaved dY: 6x slower, --cases conv_dx_s2) and with pads within the kernel's
    reach (else the Conv's pads would be negative)."""
    k = ws[2:]
    reach = [d[i % len(k)] * (k[i % len(k)] - 1) - p[i] for i in range(2 * len(k))]
    if ws[0] <= ws[1] * groups and all(v == 1 for v in s) and min(reach) >= 0:
        return op.Conv(dy, flipped(w, ws, groups), pads=reach, dilations=d, group=groups)
    return op.ConvTranspose(dy, w, strides=s, pads=p, dilations=d, group=groups,
                            output_padding=output_padding(xs, ys, k, s, d, p))


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
    dx = input_grad(dy, w, xs, ys, ws, s, d, p, groups)
    dw = conv_weight.by_gemm(x, dy, ys, ws, s, d, p) if groups == 1 \
        else conv_weight.by_conv(x, dy, ws, s, d, p, groups)
    db = None if bias is None else op.ReduceSum(dy, [0, *range(2, rank)], keepdims=0)
    return dx, dw, db


def _unpools(n, k, s, d, p) -> bool:
    """MaxUnpool undoes this pool: on CPU (onnxruntime's CUDA provider has no MaxUnpool kernel
    and would run it on the host), its windows share no input (stride >= dilated extent) and
    the input's spatial size is the one MaxUnpool infers from the output, (out - 1) stride -
    pads + kernel (onnx's reference evaluator, the tests' oracle, ignores output_shape
    otherwise)."""
    r, xs, ys = len(k), n.x.shape[2:], n.y.shape[2:]
    return n.ad.device == "cpu" and all(isinstance(v, int) for v in [*xs, *ys]) and all(
        s[i] >= d[i] * (k[i] - 1) + 1 and xs[i] == (ys[i] - 1) * s[i] - p[i] - p[r + i] + k[i]
        for i in range(r))


@defdx("MaxPool")
def _maxpool(n, dy):
    """dy placed at each window's argmax, which the Indices output names as a flat input index:
    by MaxUnpool, the op made for it, where it applies (the digits CNN's pool with its Indices
    and gradient: 1.18 against 1.40 ms for ScatterElements' add, 1 thread, bench/grad_forms.py
    --cases maxpool_dx), else by a scatter-add (overlapping windows: one input can be the max
    of several)."""
    x, (_, indices) = n.x, n.outputs
    if indices is None or n.attr("storage_order", 0):  # exported models ask only for Y, or
        # for column-major Indices: the same pool again, for row-major ones
        attrs = {a.name: n.attr(a.name) for a in n.proto.attribute}
        indices = op.MaxPool(x, outputs=2, **{**attrs, "storage_order": 0})[1]
    k = n.attr("kernel_shape")
    s, d, p = spatial(n, len(k))
    if _unpools(n, k, s, d, p):
        return op.MaxUnpool(dy, indices, op.Shape(x), kernel_shape=k, strides=s, pads=p)
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
