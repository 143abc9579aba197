"""Gradient formulations head to head at the suite's sizes, one small ONNX graph each.

    .venv/bin/python bench/grad_forms.py [--cases matmul_dw,...] [--threads 1,2] [--reps 20]
        [--rounds 5] [--baseline DIR] [--json-only]

Each case times two or more standard-ONNX graphs that compute the same thing (checked equal to
1e-4 relative first), in onnxruntime with the session options training gives a graph of its
size (dlc.runtime.session.preparation), interleaved round by round so
that load drift hits every variant alike; the median over rounds of the mean time per run is
reported, with `foreign_cpu_share` (bench/README.md). Cases:

  matmul_dw   dW of [32, 64, 256] @ [256, 1024] (the Transformer's ff layer): a batched
              MatMul (a^T g per sample) plus a ReduceSum over the batch, against one Gemm over
              the flattened B*T rows (what dlc emits)
  matmul_dx   dX of the same: MatMul with a transposed weight, against Gemm(g', W, transB=1)
  recurrent_dw  the LSTM's recurrent weight gradient over 64 steps ([64, 256] x [64, 1024] per
              step): one GEMM per step summed (what the unrolled graph gets), against one GEMM
              over the steps' rows concatenated (measured no faster: not adopted)
  lstm_gates  the suite's second LSTM layer (64 steps, 256 units, batch 64), forward and
              backward: dlc's train graph (torch's gate order i, f, g, o: three Sigmoids and a
              Tanh a step) against the gate columns moved once to (i, f, o, g): one Sigmoid over
              [N, 3H] a step, 34 nodes a step against 40 (Mul 19 -> 15, Sub 5 -> 3, Sigmoid 3 ->
              1), but a second Split and Concat, whose copies cost more than the ops saved (quiet
              machine, timed second: 167.6 against 163.1 ms at 1 thread, 105.1 against 97.8 at
              2; not adopted)
  conv_dx     ResNet-20's first-stage conv input gradient ([128, 16, 32, 32], 3x3, stride 1):
              ConvTranspose against a Conv with the flipped, channel-swapped kernel (dlc's
              form at stride 1: 5-10% more CPU at 1 thread, but onnxruntime splits it over 2
              threads and runs ConvTranspose on one: 5.4 against 11.3 ms, quiet machine)
  conv_dx_16x16, conv_dx_8x8  the same at the next stages ([128, 32, 16, 16], [128, 64, 8,
              8]): 4.5 and 4.0 against 7.9 and 7.6 ms at 2 threads, 1.07x and 0.97x the CPU at 1
  conv_dx_digits  the digits CNN's conv2 (32 -> 64 channels, [64, 64, 8, 8]), which widens:
              ConvTranspose (dlc's form for F > C) 2.0 against 2.6 ms at 1 thread
  conv_dx_s2  the stride-2 3x3 conv of ResNet-20's stage 2: ConvTranspose (dlc) against a Conv
              with the flipped kernel over the zero-interleaved gradient (6x slower: not adopted)
              and a sub-pixel Conv (the four phases of the ConvTranspose as one stride-1 Conv
              with a [4C, F, 2, 2] kernel built from W, then DepthToSpace: its Conv alone
              costs what ConvTranspose does and DepthToSpace runs on one thread; 11.3 against
              5.6 CPU ms at 1 thread, 17.6 against 6.3 ms at 2: not adopted)
  conv_dx_1x1_s2  the stride-2 1x1 projection shortcut of stage 2 (16 -> 32 channels, 32x32 ->
              16x16): ConvTranspose (dlc) against a 1x1 Conv plus a zero interleave (a Pad,
              single-threaded): 8.3 against 1.0 ms at 1 thread, 7.7 against 1.2 at 2
  conv_dw     ResNet-20's first-stage conv weight gradient ([128, 16, 32, 32]): batched
              per-image GEMMs per kernel offset (dlc's form from 256 output positions: they
              split over threads image by image), one Gemm per offset over the batch (its
              16 x 16 output runs on one thread) and a Conv over batch/channel-swapped tensors
              (2-3x slower: not adopted); each graph includes the forward Conv. Two ways to
              cut the im2col columns in one multi-threaded op instead of a Slice per offset,
              not adopted (more time at 1 and 2 threads than the Slices they replace):
              onehot_conv, a Conv of the input viewed as [N C, 1, H, W] with a one-hot
              [k k, 1, k, k] kernel, then per-image GEMMs (the Conv does k k x the work of a
              copy, plus an NCHWc reorder: 36 against dlc's 19 CPU ms at 1 thread);
              gathered_taps, one Gather of the input as [H W positions, N C] rows, then GEMMs
              batched over the offsets (onnxruntime's Gather copies at a third of a Slice's
              speed: 24 against 19 ms; 8x8: 11 against 9)
  conv_dw_16x16  the same at the second stage ([128, 32, 16, 16], 256 positions: per-image)
  conv_dw_8x8 the same at the last stage ([128, 64, 8, 8]), where the per-offset Gemms are dlc's
              form (per-image GEMMs of 64 positions: 2.3x slower)
  im2col_digits1, im2col_digits2, im2col_32x32, im2col_16x16, im2col_8x8, im2col_4x4,
  im2col_2x2, im2col_s2  forward + backward of a 3x3 conv (padding 1): the Conv node with
              dlc's VJP rule against the train graph's im2col lowering (dlc.model.layers.
              conv_gemm: channels-last taps, one GEMM over the batch) and two alternatives
              (not adopted): the columns cut from NCHW times W in a MatMul batched over the
              images (im2col_nchw), and the Conv forward with dW alone as one GEMM over
              channels-last columns made in the backward (conv_dw_one_gemm). At the digits
              CNN's and ResNet-20's shapes the Conv wins (1 thread, CPU ms: 8x8 64 channels 25
              against 37, 32x32 43 against 125); with at most 16 output positions per image
              the lowering does (4x4 2.0 against 2.6, 2x2 1.9 against 4.6, im2col_s2, 4x4 to
              2x2 at stride 2, 5.6 against 9.2), and dlc adopts it there (conv_gemm.lowers)
  gather_dw   the embedding gradient of the text classifier ([128, 64] Zipf ids, 30,000 x 128):
              ScatterND(add) of the rows into zeros (dlc on CUDA; on CPU it loses updates of
              repeated ids above 1 thread, so check_same refuses it there: run --threads 1),
              ScatterElements(add) on the table, and dlc's CPU form (indexing.row_sums: sorted
              ids, float64 running sums, one write per distinct id)
  maxpool_dx  the digits CNN's 2x2 MaxPool over [64, 64, 8, 8], forward with Indices +
              gradient: scatter-add at the Indices (dlc on CUDA) against MaxUnpool (dlc on CPU)
  channel_sums, channel_sums_16x16, channel_sums_8x8  the per-channel sums of batchnorm's
              backward over (N, H, W) of ResNet-20's [128, C, H, W] tensors: one ReduceSum
              over (0, 2, 3) (onnxruntime splits it over its threads: 0.35 CPU ms in 0.19 wall
              at 2 threads, 16x32x32), over H W then N (0.19 and 0.14 ms at 1 and 2 threads:
              20-30% less; what batchnorm's closed-form backward now does) and a MatMul
              with a ones vector then a ReduceSum over N (3-4x slower)
  batchnorm_32x32, batchnorm_16x16, batchnorm_8x8  y, dx, dgamma, dbeta of training batchnorm at
              ResNet-20's stage shapes (batch 128): dlc (one BatchNormalization fed the batch
              statistics, the closed-form backward) against, with --baseline, the chain rule
              through primitive ops it replaced (quiet machine, 1 thread: 6.3 against 11.5 ms,
              2.0 against 4.4, 1.1 against 2.0; 2 threads: 4.3 against 7.7, 1.9 against 3.3,
              0.9 against 1.5), and its closed form by hand (by_hand: dlc's nodes less the test
              loss's two Muls) with one choice changed, each slower at 32x32 (1 thread, 2 in
              brackets): by_hand 5.1 ms (3.5); the variance by ReduceSumSquare, even over H W
              then N, 6.2 (4.4); dx in four elementwise ops rather than Mul +
              BatchNormalization + Add, 5.7 (3.8); the sums in one ReduceSum over (0, 2, 3), 6.9
              (4.4)
  layernorm_64x256, layernorm_64x1024  y, dx, dgamma, dbeta of training layernorm over the
              Transformer's [32, 64, 256] and a wider [32, 64, 1024]: dlc (one
              LayerNormalization, its Mean and InvStdDev read by the closed-form backward)
              against, with --baseline, the primitive-op chain it replaced; `recompute`, the
              exported-model form (no statistics outputs: the backward's own LayerNormalization
              recomputes them); and the closed form by hand (by_hand: dlc's nodes less the test
              loss's three) with one choice changed (sub_mul_xhat, elementwise_dx,
              reduce_means, stored_xhat: _closed_layernorm says which); figures: README.md
  relu_dx     ReLU's gradient from its output: Where (2.8 ms at 1 thread, 2.4 at 2) against
              dy * Cast(y > 0) (dlc: 1.9 and 1.2)
  step_<m>    one whole train step of bench/suite.py's model m (mlp, resnet20, lstm,
              transformer, textcls) from its initial weights: `session.run` alone; also
              step_vgg_small (bench/specs/vgg_small.yaml, whose 4x4 and 2x2 convs are lowered
              to im2col + one GEMM)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ForeignLoad, cores, versions  # noqa: E402  (adds ROOT to sys.path)


def session(model_bytes: bytes, threads: int):
    """A session with the settings training gives a graph of this size (dlc.runtime.session.
    preparation): whole train steps of the LSTM or the Transformer run without memory-reuse
    planning, and their Reshapes and Squeezes then cost what training pays for them."""
    import onnx
    import onnxruntime as ort

    from dlc.runtime.session import session_options

    nodes = len(onnx.load_from_string(model_bytes).graph.node)
    return ort.InferenceSession(model_bytes, session_options(threads, nodes),
                                providers=["CPUExecutionProvider"])


def graph(inputs: dict, build, name: str) -> bytes:
    """A model of `build(b, *input names) -> [output names]` over `inputs` (name: array)."""
    from dlc.graph import Builder

    b = Builder()
    names = [b.input(k, "int64" if v.dtype == np.int64 else "float32", list(v.shape))
             for k, v in inputs.items()]
    for i, out in enumerate(build(b, *names)):
        b.output(out, f"out{i}", "float32")
    return b.model(name).SerializeToString()


def with_grads(forward, keep_y: bool = False):
    """build(b, x, *params, r) -> [dx, dparams...] of ReduceSum(forward(...) * r) by dlc,
    preceded by the forward's output when `keep_y` (else only what the gradients need runs)."""
    from dlc.autodiff import gradients

    def build(b, *names):
        *xs, r = names
        y = forward(b, *xs)
        g = gradients(b, b.ReduceSum(b.Mul(y, r), keepdims=0), list(xs))
        return [y] * keep_y + [g[x] for x in xs]
    return build


# ---- the cases --------------------------------------------------------------------------------
def matmul_dw(rng):
    a, g = rng.standard_normal((32, 64, 256), np.float32), rng.standard_normal((32, 64, 1024),
                                                                                 np.float32)
    return {"a": a, "g": g}, {
        "batched_matmul_reducesum": lambda b, a, g: [b.ReduceSum(
            b.MatMul(b.Transpose(a, perm=[0, 2, 1]), g), b.const([0]), keepdims=0)],
        "gemm_flat": lambda b, a, g: [b.Gemm(b.Flatten(a, axis=2), b.Flatten(g, axis=2),
                                             transA=1)]}


def matmul_dx(rng):
    g, w = rng.standard_normal((32, 64, 1024), np.float32), rng.standard_normal((256, 1024),
                                                                                 np.float32)
    return {"g": g, "w": w}, {
        "matmul_transposed_w": lambda b, g, w: [b.MatMul(g, b.Transpose(w, perm=[1, 0]))],
        "gemm_flat": lambda b, g, w: [b.Reshape(b.Gemm(b.Flatten(g, axis=2), w, transB=1),
                                                b.const([32, 64, 256]))]}


def gather_dw(rng):
    ids = (rng.zipf(1.3, (128, 64)) % 29999 + 1).astype(np.int64)
    g = rng.standard_normal((128, 64, 128), np.float32)

    def zeros(b):
        import onnx

        return b.ConstantOfShape(b.const([30000, 128]), value=onnx.helper.make_tensor(
            "value", onnx.TensorProto.FLOAT, [1], [0.0]))

    def scatter_nd(b, ids, g):
        return [b.ScatterND(zeros(b), b.Reshape(ids, b.const([-1, 1])),
                            b.Reshape(g, b.const([-1, 128])), reduction="add")]

    def scatter_elements(b, ids, g):
        idx = b.Expand(b.Reshape(ids, b.const([-1, 1])), b.const([1, 128]))
        return [b.ScatterElements(zeros(b), idx, b.Reshape(g, b.const([-1, 128])), axis=0,
                                  reduction="add")]
    def sorted_rows(b, ids, g):
        import onnx

        from dlc.autodiff.driver import AD
        from dlc.autodiff.indexing import row_sums
        from dlc.autodiff.var import Var

        ad = AD(b, {}, {})
        flat, rows = (Var(ad, b.Reshape(t, b.const(s)))
                      for t, s in ((ids, [-1, 1]), (g, [-1, 128])))
        return [row_sums(flat, rows, Var(ad, b.const([30000, 128])), onnx.TensorProto.FLOAT).name]
    return {"ids": ids, "g": g}, {"scatter_nd": scatter_nd, "scatter_elements": scatter_elements,
                                  "sorted_rows": sorted_rows}


def maxpool_dx(rng):
    x = np.maximum(rng.standard_normal((64, 64, 8, 8), np.float32), 0)  # post-ReLU: ties at 0
    r = rng.standard_normal((64, 64, 4, 4), np.float32)

    def pooled(b, x):
        return b.MaxPool(x, kernel_shape=[2, 2], strides=[2, 2], outputs=2)[0]

    def form(device):
        def build(b, x, r):
            from dlc.autodiff import gradients

            return [gradients(b, b.ReduceSum(b.Mul(pooled(b, x), r), keepdims=0), [x],
                              device=device)[x]]
        return build
    return {"x": x, "r": r}, {"scatter_add": form("cuda"), "maxunpool": form("cpu")}


def conv_dx(channels: int, side: int, inputs: int | None = None, batch: int = 128):
    """dX of a 3x3 'same' conv, `inputs` (default `channels`) -> `channels` over [batch,
    channels, side, side] (ResNet-20: 16 at 32x32, its first stage; 32 at 16x16; 64 at 8x8, its
    last): ConvTranspose against a Conv with the flipped kernel."""
    def make(rng):
        g = rng.standard_normal((batch, channels, side, side), np.float32)
        w = rng.standard_normal((channels, inputs or channels, 3, 3), np.float32)
        return {"g": g, "w": w}, {
            "conv_transpose": lambda b, g, w: [b.ConvTranspose(g, w, pads=[1, 1, 1, 1])],
            "flipped_conv": lambda b, g, w: [b.Conv(g, _flipped(b, w), pads=[1, 1, 1, 1])]}
    return make


def _flipped(b, w):
    """W with its spatial axes reversed and its channel axes swapped: dX as a correlation."""
    end = np.iinfo(np.int64).min
    flip = b.Slice(w, b.const([-1, -1]), b.const([end, end]), b.const([2, 3]), b.const([-1, -1]))
    return b.Transpose(flip, perm=[1, 0, 2, 3])


def conv_dx_s2(rng):
    """ResNet-20's stage-2 downsampling conv (16 -> 32 channels, 3x3, stride 2, pads 1, 32x32 ->
    16x16): dX by ConvTranspose (dlc) against a stride-1 Conv with the flipped kernel over the
    gradient zero-interleaved to 32x32 (a Pad of [.., 16, 1, 16, 1] to [.., 16, 2, 16, 2])."""
    g_shape = [128, 32, 16, 16]
    g = rng.standard_normal(g_shape, np.float32)
    w = rng.standard_normal((32, 16, 3, 3), np.float32)
    return {"g": g, "w": w}, {
        "conv_transpose": lambda b, g, w: [b.ConvTranspose(g, w, strides=[2, 2], pads=[1, 1, 1, 1],
                                                           output_padding=[1, 1])],
        "interleaved_conv": lambda b, g, w: [b.Conv(_interleaved(b, g, g_shape), _flipped(b, w),
                                                    pads=[1, 1, 1, 1])],
        "subpixel": lambda b, g, w: [_subpixel(b, g, w, [32, 16, 3], 2, 1, (16, 32))]}


def _interleaved(b, t, shape):
    """t [N, C, H, W] with a zero after each entry along H and W: [N, C, 2H, 2W]."""
    n, c, h, w = shape
    t6 = b.Pad(b.Reshape(t, b.const([n, c, h, 1, w, 1])), b.const([0] * 9 + [1, 0, 1]))
    return b.Reshape(t6, b.const([n, c, 2 * h, 2 * w]))


def phase_taps(k: int, s: int, p: int) -> tuple[np.ndarray, int]:
    """Sel[a, e, u] = 1 where input row s q + a gets dY row q + lo + e through kernel row u
    (a forward conv reads input row s i + u - p for output row i), and lo."""
    hits = [(a, (a + p - u) // s, u) for a in range(s) for u in range(k) if (a + p - u) % s == 0]
    lo = min(e for _, e, _ in hits)
    sel = np.zeros((s, max(e for _, e, _ in hits) - lo + 1, k), np.float32)
    for a, e, u in hits:
        sel[a, e - lo, u] = 1
    return sel, lo


def _subpixel(b, g, w, fck, stride: int, pad: int, sides):
    """dX of a square stride-s conv (F, C, k = fck) as one stride-1 Conv of dY with the s*s phase
    kernels stacked [s s C, F, L, L], W times a constant selection, then DepthToSpace (DCR:
    channel (a s + b) C + c is phase (a, b) of channel c)."""
    (f, c, k), (sel, lo), (dy_side, side) = fck, phase_taps(fck[2], stride, pad), sides
    length, rows = sel.shape[1], -(-side // stride)
    both = np.einsum("aeu,bgv->uvaebg", sel, sel).reshape(k * k, -1)
    kern = b.Reshape(b.MatMul(b.Reshape(w, b.const([f * c, k * k])), b.const(both)),
                     b.const([f, c, stride, length, stride, length]))
    kern = b.Reshape(b.Transpose(kern, perm=[2, 4, 1, 0, 3, 5]),
                     b.const([stride * stride * c, f, length, length]))
    end = max(rows - dy_side + length - 1 + lo, 0)
    dx = b.DepthToSpace(b.Conv(g, kern, pads=[-lo, -lo, end, end]), blocksize=stride)
    if rows * stride == side:
        return dx
    return b.Slice(dx, b.const([0, 0]), b.const([side, side]), b.const([2, 3]))


def conv_dx_1x1_s2(rng):
    """ResNet-20's stage-2 projection shortcut (16 -> 32 channels, 1x1, stride 2, 32x32 ->
    16x16): dX by ConvTranspose (dlc) against a 1x1 Conv with the channel-swapped kernel
    (onnxruntime splits it over its threads) and a zero interleave."""
    g = rng.standard_normal((128, 32, 16, 16), np.float32)
    w = rng.standard_normal((32, 16, 1, 1), np.float32)
    return {"g": g, "w": w}, {
        "conv_transpose": lambda b, g, w: [b.ConvTranspose(g, w, strides=[2, 2],
                                                           output_padding=[1, 1])],
        "conv_interleaved": lambda b, g, w: [_interleaved(
            b, b.Conv(g, b.Transpose(w, perm=[1, 0, 2, 3])), [128, 16, 16, 16])]}


def conv_dw(channels: int, side: int, batch: int = 128, stride: int = 1, pad: int = 1):
    """dW of a 3x3 conv of ResNet-20 ('same': stride 1, pad 1), channels -> channels over
    [batch, channels, side, side]: the forms of autodiff.conv_weight (per-image GEMMs per offset,
    one Gemm per offset over the batch) against one Conv over the batch with batch and channel
    axes swapped (by_conv, what dlc keeps for grouped convolutions) and the two one-op tap
    extractions below. Each graph includes the forward Conv."""
    def make(rng):
        from dlc.autodiff import conv_weight

        out = (side + 2 * pad - 3) // stride + 1
        x = rng.standard_normal((batch, channels, side, side), np.float32)
        r = rng.standard_normal((batch, channels, out, out), np.float32)
        w = rng.standard_normal((channels, channels, 3, 3), np.float32)
        forms = {"per_image": lambda x, dy, ys, ws, s, d, p: conv_weight._per_image(
                     x, dy, ys, ws, s, d, p, stacked=False),
                 "per_offset": conv_weight._per_offset,
                 "conv_swapped": lambda x, dy, ys, ws, s, d, p: conv_weight.by_conv(
                     x, dy, ws, s, d, p, 1),
                 "onehot_conv": _onehot_taps, "gathered_taps": _gathered_taps}

        def form(kind):
            def build(b, x, w, r):
                from dlc.autodiff import gradients

                y = b.Conv(x, w, pads=[pad] * 4, strides=[stride] * 2)
                saved, conv_weight.by_gemm = conv_weight.by_gemm, forms[kind]
                try:
                    return [gradients(b, b.ReduceSum(b.Mul(y, r), keepdims=0), [w])[w]]
                finally:
                    conv_weight.by_gemm = saved
            return build
        return {"x": x, "w": w, "r": r}, {k: form(k) for k in forms}
    return make


def _onehot_taps(x, dy, ys, ws, s, d, p):
    """dW with the im2col columns made by one Conv: x viewed as [N C, 1, *S] and a fixed
    one-hot kernel [T, 1, *k] (output channel t copies offset t's tap), as [N, C T, P] for
    per-image GEMMs with dY [N, F, P], summed over the batch."""
    from dlc.autodiff.var import op

    xs, t = x.shape, int(np.prod(ws[2:]))
    eye = np.eye(t, dtype=np.float32).reshape(t, 1, *ws[2:])
    cols = op.Conv(op.Reshape(x, [-1, 1, *xs[2:]]), eye, strides=s, dilations=d, pads=p)
    cols = op.Reshape(cols, [xs[0], ws[1] * t, -1])
    per_image = op.Reshape(dy, [0, ws[0], -1]) @ op.Transpose(cols, perm=[0, 2, 1])
    return op.Reshape(op.ReduceSum(per_image, [0], keepdims=0), ws)


def _gathered_taps(x, dy, ys, ws, s, d, p):
    """dW with every offset's tap cut by one Gather (split over onnxruntime's threads) of the
    input as [positions + a zero row, N C], so each gathered block is N C floats; then one
    [F, K] x [K, C] GEMM per offset, batched over the offsets, K = P N."""
    from dlc.autodiff.var import op

    xs, r = x.shape, len(ws) - 2
    index = _tap_index(xs[2:], ys[2:], ws[2:], s, d, p[:r])  # [T, P]
    xt = op.Reshape(op.Transpose(x, perm=[*range(2, r + 2), 0, 1]), [int(np.prod(xs[2:])), -1])
    cols = op.Gather(op.Pad(xt, [0, 0, 1, 0]), index, axis=0)  # [T, P, N C]
    cols = op.Reshape(cols, [index.shape[0], -1, ws[1]])
    dyt = op.Reshape(op.Transpose(dy, perm=[1, *range(2, r + 2), 0]), [ws[0], -1])  # [F, P N]
    return op.Reshape(op.Transpose(dyt @ cols, perm=[1, 2, 0]), ws)


def _tap_index(sizes, outs, k, s, d, begin) -> np.ndarray:
    """[T, P]: the flat input position that output position P reads through kernel offset T,
    prod(sizes) (a zero row) where it falls in the padding."""
    taps, grid = np.array(list(np.ndindex(*k))), np.array(list(np.ndindex(*outs)))
    pos = grid[None] * np.array(s) + taps[:, None] * np.array(d) - np.array(begin)
    inside = ((pos >= 0) & (pos < np.array(sizes))).all(-1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(np.clip(pos, 0, np.array(sizes) - 1), -1, 0)),
                                sizes)
    return np.where(inside, flat, int(np.prod(sizes)))


def conv_im2col(inputs: int, filters: int, side: int, batch: int, stride: int = 1):
    """Forward and backward (dX, dW, dB) of a 3x3 conv, padding 1, `inputs` -> `filters` over
    [batch, inputs, side, side]: the Conv node with dlc's VJP rule against the train graph's
    im2col lowering (dlc.model.layers.conv_gemm: NHWC taps, one GEMM over the batch), whose
    columns, kept for dW, hold 9 x the input: batch * out^2 * 9 * inputs * 4 bytes."""
    def make(rng):
        from dlc.model.layers import conv_gemm

        out = (side - 1) // stride + 1
        ws, s, d, p = [filters, inputs, 3, 3], [stride] * 2, [1, 1], [1] * 4
        tensors = {"x": rng.standard_normal((batch, inputs, side, side), np.float32),
                   "w": rng.standard_normal(ws, np.float32) * 0.1,
                   "bias": rng.standard_normal(filters, np.float32),
                   "r": rng.standard_normal((batch, filters, out, out), np.float32)}
        return tensors, {
            "conv": with_grads(lambda b, x, w, bias: b.Conv(x, w, bias, kernel_shape=[3, 3],
                                                           strides=s, pads=p), keep_y=True),
            "im2col": with_grads(lambda b, x, w, bias: conv_gemm.lower(
                b, x, w, bias, ws, s, d, p, [out, out]), keep_y=True),
            "im2col_nchw": with_grads(lambda b, x, w, bias: _im2col_nchw(
                b, x, w, bias, ws, s, p, out), keep_y=True),
            "conv_dw_one_gemm": _swapped_dw(with_grads(lambda b, x, w, bias: b.Conv(
                x, w, bias, kernel_shape=[3, 3], strides=s, pads=p), keep_y=True))}
    return make


def _swapped_dw(build):
    """`build` with Conv's dW (groups 1) by _dw_one_gemm instead of conv_weight.by_gemm."""
    def swapped(*args):
        from dlc.autodiff import conv_weight

        saved, conv_weight.by_gemm = conv_weight.by_gemm, _dw_one_gemm
        try:
            return build(*args)
        finally:
            conv_weight.by_gemm = saved
    return swapped


def _dw_one_gemm(x, dy, ys, ws, s, d, p):
    """dW^T = dY'^T cols as one [F, N P] x [N P, T C] GEMM, the columns cut channels-last in the
    backward (the forward stays Conv): transient, so they cost no memory past the step."""
    from dlc.autodiff.conv_weight import _tap
    from dlc.autodiff.var import op

    (f, c, *k), r = ws, len(ws) - 2
    xt = op.Pad(op.Transpose(x, perm=[0, 2, 3, 1]), [0, *p[:r], 0, 0, *p[r:], 0])
    cols = op.Concat(*[_tap(xt, u, 1, ys, s, d) for u in np.ndindex(*k)], axis=-1)
    dyf = op.Reshape(op.Transpose(dy, perm=[0, 2, 3, 1]), [-1, f])
    dwt = op.Gemm(dyf, op.Reshape(cols, [-1, c * int(np.prod(k))]), transA=1)  # [F, T C]
    return op.Transpose(op.Reshape(dwt, [f, *k, c]), perm=[0, 3, 1, 2])


def _im2col_nchw(b, x, w, bias, ws, s, p, out):
    """The columns cut from NCHW, [N, T C, P] (taps concatenated on the channel axis: whole
    [C, P] blocks), and W as [F, T C] times them: a MatMul batched over the images, whose dW
    the driver sums over the batch."""
    (f, c, *k), cut = ws, b.Pad(x, b.const([0, 0, *p[:2], 0, 0, *p[2:]]))
    taps = [b.Slice(cut, b.const([u, v]), b.const([u + (out - 1) * s[0] + 1,
                                                   v + (out - 1) * s[1] + 1]),
                    b.const([2, 3]), b.const(s)) for u in range(k[0]) for v in range(k[1])]
    cols = b.Reshape(b.Concat(*taps, axis=1), b.const([0, len(taps) * c, -1]))
    wm = b.Reshape(b.Transpose(w, perm=[0, 2, 3, 1]), b.const([f, -1]))
    y = b.Add(b.MatMul(wm, cols), b.Reshape(bias, b.const([f, 1])))
    return b.Reshape(y, b.const([0, f, out, out]))


def channel_sums(channels: int, side: int):
    """Batchnorm backward's per-channel sums over (N, H, W) of a [128, channels, side, side]
    tensor: one ReduceSum over (0, 2, 3), two ReduceSums (H W, then N) and a MatMul with ones."""
    def make(rng):
        x = rng.standard_normal((128, channels, side, side), np.float32)
        rows = [128, channels, side * side]
        ones = np.ones((side * side, 1), np.float32)

        def two(b, x):
            return [b.ReduceSum(b.ReduceSum(b.Reshape(x, b.const(rows)), b.const([2]),
                                            keepdims=0), b.const([0]), keepdims=0)]

        def ones_matmul(b, x):
            return [b.ReduceSum(b.MatMul(b.Reshape(x, b.const(rows)), b.const(ones)),
                                b.const([0, 2]), keepdims=0)]
        return {"x": x}, {
            "reducesum_023": lambda b, x: [b.ReduceSum(x, b.const([0, 2, 3]), keepdims=0)],
            "hw_then_n": two, "ones_matmul": ones_matmul}
    return make


def recurrent_dw(rng):
    """The LSTM's recurrent weight: used by all 64 steps, so dW_hh = sum_t h_t^T dz_t."""
    steps = 64
    h = rng.standard_normal((steps, 64, 256), np.float32)
    dz = rng.standard_normal((steps, 64, 1024), np.float32)

    def per_step(b, h, dz):  # what the unrolled graph's driver emits: one GEMM per step, summed
        parts = [b.Squeeze(x, b.const([0])) for x in (
            b.Split(h, b.const([1] * steps), axis=0, outputs=steps))]
        grads = [b.Squeeze(x, b.const([0])) for x in (
            b.Split(dz, b.const([1] * steps), axis=0, outputs=steps))]
        total = b.Gemm(parts[0], grads[0], transA=1)
        for a, g in zip(parts[1:], grads[1:]):
            total = b.Add(total, b.Gemm(a, g, transA=1))
        return [total]

    def stacked(b, h, dz):  # one GEMM over the steps' rows (the per-step inputs concatenated)
        flat = [b.Reshape(b.Concat(*b.Split(x, b.const([1] * steps), axis=0, outputs=steps),
                                   axis=0), b.const([-1, width]))
                for x, width in ((h, 256), (dz, 1024))]
        return [b.Gemm(flat[0], flat[1], transA=1)]
    return {"h": h, "dz": dz}, {"per_step": per_step, "stacked": stacked}


def lstm_gates(rng):
    """The suite's second LSTM layer, forward and backward: dlc's train graph against its gates
    moved once to (i, f, o, g), one Sigmoid over [N, 3H] a step (the module docstring)."""
    steps, units, n = 64, 256, 64
    inputs = {"x": rng.standard_normal((n, steps, units), np.float32),
              **{k: rng.standard_normal(s, np.float32) * 0.05 for k, s in (
                  ("w_ih", (units, 4 * units)), ("w_hh", (units, 4 * units)),
                  ("b_ih", (4 * units,)), ("b_hh", (4 * units,)))},
              "r": rng.standard_normal((n, units), np.float32)}
    layer, shape = _layer("lstm", (steps, units), {"units": units})

    def dlc(b, x, w_ih, w_hh, b_ih, b_hh):
        p = {"n.weight_ih": w_ih, "n.weight_hh": w_hh, "n.bias_ih": b_ih, "n.bias_hh": b_hh}
        return layer.lower(b, x, p, _Ctx(), shape)

    def sigmoids_first(b, x, w_ih, w_hh, b_ih, b_hh):
        def moved(t):  # gate columns (i, f, g, o) -> (i, f, o, g), once
            i, f, g, o = b.Split(t, axis=-1, num_outputs=4, outputs=4)
            return b.Concat(i, f, o, g, axis=-1)
        w_hh, xw = moved(w_hh), b.Add(b.MatMul(x, moved(w_ih)), moved(b.Add(b_ih, b_hh)))
        h = c = None
        for xt in b.Split(b.Reshape(xw, b.const([0, -1])), axis=1, num_outputs=steps,
                          outputs=steps):
            gates = xt if h is None else b.Add(xt, b.MatMul(h, w_hh))
            ifo, g = b.Split(gates, b.const([3 * units, units]), axis=-1, outputs=2)
            (i, f, o), g = b.Split(b.Sigmoid(ifo), axis=-1, num_outputs=3, outputs=3), b.Tanh(g)
            c = b.Mul(i, g) if c is None else b.Add(b.Mul(f, c), b.Mul(i, g))
            h = b.Mul(o, b.Tanh(c))
        return h
    return inputs, {"dlc": with_grads(dlc, keep_y=True),
                    "sigmoids_first": with_grads(sigmoids_first, keep_y=True)}


def _layer(kind: str, in_shape, cfg=None):
    from dlc.model.layers import LAYERS

    return LAYERS[kind]("n", {"type": kind, **(cfg or {})}), in_shape


class _Ctx:
    training, updates, device = True, {}, "cpu"


def train_step(model: str):
    """The whole train-step graph of a bench/suite.py model (or another bench/specs/ image
    classifier, fed N(0, 1) images), from its initial weights."""
    def make(rng):
        import suite
        from dlc.train.step import build_train_step, y_feeds
        from dlc.model.names import x_feeds, x_names

        spec, net = suite.load_net(model)
        batch = spec.data["train"]["batch_size"]
        x, y = suite.synthetic(model, batch) if model in suite.MODELS else (
            rng.standard_normal((batch, *net.input_shape), np.float32),
            rng.integers(0, 10, batch))
        step, params = build_train_step(net, None), net.init_params(0)
        inputs = {**x_feeds(x_names(net), x), **y_feeds(y), "lr": np.array(1e-3, np.float32),
                  "step": np.array(1, np.float32), "params": step.pack(params),
                  **{f"state.{s}": np.zeros(step.total, np.float32) for s in step.states},
                  **{p.name: params[p.name] for p in net.buffers},
                  **{n: rng.random((batch, *shape), dtype=np.float32) for n, shape in step.noise}}
        return inputs, {"dlc": step.model.SerializeToString()}
    return make



# ---- batchnorm and relu at ResNet-20's stage shapes (batch 128) --------------------------------
def _norm_inputs(rng, shape, features: int) -> dict:
    """x (off-centre: the mean matters), gamma and beta of `features` entries, the cotangent r."""
    return {"x": rng.standard_normal(shape, np.float32) * 2 + 0.5,
            "gamma": rng.uniform(0.5, 1.5, features).astype(np.float32),
            "beta": rng.standard_normal(features, np.float32),
            "r": rng.standard_normal(shape, np.float32)}


def batchnorm_forms(channels: int, side: int):
    """y, dx, dgamma, dbeta of training batchnorm over [128, channels, side, side]: dlc's
    lowering and VJP table, against its closed form written out with one choice changed."""
    shape = (128, channels, side, side)

    def make(rng):
        inputs = _norm_inputs(rng, shape, channels)
        layer, in_shape = _layer("batchnorm", shape[1:])

        def dlc(b, x, gamma, beta, r):
            from dlc.autodiff import gradients

            p = {"n.gamma": gamma, "n.beta": beta,
                 **{f"n.{k}": b.const(np.full(channels, v, np.float32))
                    for k, v in (("running_mean", 0.0), ("running_var", 1.0))}}
            y = layer.lower(b, x, p, _Ctx(), in_shape)
            g = gradients(b, b.ReduceSum(b.Mul(y, r), keepdims=0), [x, gamma, beta])
            return [y, g[x], g[gamma], g[beta]]
        return inputs, {"dlc": dlc, "by_hand": _closed_batchnorm(shape),
                        "sum_square": _closed_batchnorm(shape, sum_square=True),
                        "dx_four_ops": _closed_batchnorm(shape, four_ops=True),
                        "one_reducesum": _closed_batchnorm(shape, one_sum=True)}
    return make


def _closed_batchnorm(shape, sum_square=False, four_ops=False, one_sum=False):
    """The closed form of dlc's batchnorm (autodiff/norm.py) by hand, the output's cotangent r:
    sum_square, the variance by ReduceSumSquare (over H W, then N); four_ops, dx = dy a +
    c slope + shift in four ops, not a Mul, a BatchNormalization and an Add; one_reducesum, the
    channel sums and means in one ReduceSum over (0, 2, 3), not over H W then N."""
    n, c = shape[:2]
    count, pc = float(np.prod(shape) / c), [1, c, 1, 1]

    def sums(b, t):
        if one_sum:
            return b.ReduceSum(t, b.const([0, 2, 3]), keepdims=0)
        hw = b.ReduceSum(b.Reshape(t, b.const([n, c, -1])), b.const([2]), keepdims=0)
        return b.ReduceSum(hw, b.const([0]), keepdims=0)

    def build(b, x, gamma, beta, dy):
        mean = b.Div(sums(b, x), b.const(count))
        cen = b.Sub(x, b.Reshape(mean, b.const(pc)))
        squares = b.ReduceSum(b.ReduceSumSquare(b.Reshape(cen, b.const([n, c, -1])), b.const(
            [2]), keepdims=0), b.const([0]), keepdims=0) if sum_square else None
        var = b.Div(squares or sums(b, b.Mul(cen, cen)), b.const(count))
        y = b.BatchNormalization(x, gamma, beta, mean, var, epsilon=1e-5)
        inv = b.Reciprocal(b.Sqrt(b.Add(var, b.const(1e-5))))
        total, dot, a = sums(b, dy), sums(b, b.Mul(dy, cen)), b.Mul(gamma, inv)
        slope = b.Neg(b.Div(b.Mul(b.Mul(a, b.Mul(inv, inv)), dot), b.const(count)))
        shift = b.Neg(b.Div(b.Mul(a, total), b.const(count)))
        scaled = b.Mul(dy, b.Reshape(a, b.const(pc)))
        if four_ops:
            dx = b.Add(b.Add(scaled, b.Mul(cen, b.Reshape(slope, b.const(pc)))),
                       b.Reshape(shift, b.const(pc)))
        else:
            zeros = b.const(np.zeros(c, np.float32))
            dx = b.Add(scaled, b.BatchNormalization(cen, slope, shift, zeros, zeros, epsilon=1.0))
        return [y, dx, b.Mul(dot, inv), total]
    return build


def relu_dx(rng):
    """ReLU's gradient over [128, 16, 32, 32] from its output: Where(y > 0, dy, 0) against
    dy * Cast(y > 0) (dlc)."""
    y = np.maximum(rng.standard_normal((128, 16, 32, 32), np.float32), 0)
    g = rng.standard_normal(y.shape, np.float32)
    return {"y": y, "g": g}, {
        "where": lambda b, y, g: [b.Where(b.Greater(y, b.const(0.0)), g, b.const(0.0))],
        "cast_mul": lambda b, y, g: [b.Mul(g, b.Cast(b.Greater(y, b.const(0.0)), to=1))]}


# ---- layernorm at the Transformer's shape [32, 64, 256] and a wider one ----------------------
def layernorm_forms(shape):
    """y, dx, dgamma, dbeta of training layernorm over the last axis of `shape`: dlc's lowering
    and VJP table; `recompute`, dlc's rule for an exported model's LayerNormalization (no Mean
    and InvStdDev outputs: a second one of unit scale recomputes xhat and inv); and its closed
    form by hand with one choice changed (_closed_layernorm)."""
    d = shape[-1]

    def make(rng):
        inputs = _norm_inputs(rng, shape, d)
        layer, in_shape = _layer("layernorm", shape[1:])
        return inputs, {
            "dlc": with_grads(lambda b, x, gamma, beta: layer.lower(
                b, x, {"n.gamma": gamma, "n.beta": beta}, _Ctx(), in_shape), keep_y=True),
            "recompute": with_grads(lambda b, x, gamma, beta: b.LayerNormalization(
                x, gamma, beta, axis=-1, epsilon=1e-5), keep_y=True),
            "by_hand": _closed_layernorm(shape),
            **{k: _closed_layernorm(shape, k) for k in ("sub_mul_xhat", "elementwise_dx",
                                                        "reduce_means", "stored_xhat")}}
    return make


def _closed_layernorm(shape, change: str = ""):
    """dlc's layernorm closed form (autodiff/norm.py) by hand, the output's cotangent r, with
    `change`: sub_mul_xhat, xhat = (x - mean) inv in two ops, not one BatchNormalization over
    [1, rows, d]; elementwise_dx, dx = (dxhat - m1 - xhat m2) inv in four ops, not a per-row
    BatchNormalization, a Mul and an Add; reduce_means, the row means m1 = mean(dxhat) and m2
    = mean(dxhat xhat) by ReduceMean over dxhat and one more product, not GEMVs of dy and dy
    xhat with gamma / d; stored_xhat, the forward as a LayerNormalization of unit scale (xhat,
    kept for the backward instead of x) and a per-column BatchNormalization (gamma, beta)."""
    d, rows = shape[-1], int(np.prod(shape[:-1]))

    def build(b, x, gamma, beta, dy):
        flat, row, keep = b.const([rows, d]), b.const([1, rows, d]), b.const([*shape[:-1], 1])
        zeros = b.const(np.zeros(rows, np.float32))
        ones_m = b.const(np.ones(rows, np.float32))

        def per_row(t, scale, shift, mean=zeros):
            return b.BatchNormalization(b.Reshape(t, row), scale, shift, mean, zeros,
                                        epsilon=1.0)
        if change == "stored_xhat":
            xhat, _, inv = b.LayerNormalization(x, b.const(np.ones(d, np.float32)), axis=-1,
                                                epsilon=1e-5, outputs=3)
            zeros_d = b.const(np.zeros(d, np.float32))
            y = b.Reshape(b.BatchNormalization(b.Reshape(xhat, flat), gamma, beta, zeros_d,
                                               zeros_d, epsilon=1.0), b.const(list(shape)))
            inv = b.Reshape(inv, b.const([-1]))
        else:
            y, mean, inv = b.LayerNormalization(x, gamma, beta, axis=-1, epsilon=1e-5,
                                                outputs=3)
            xhat = b.Mul(b.Sub(x, mean), inv) if change == "sub_mul_xhat" else None
            inv, mean = b.Reshape(inv, b.const([-1])), b.Reshape(mean, b.const([-1]))
            xhat = xhat or b.Reshape(per_row(x, inv, zeros, mean), b.const(list(shape)))
        dgamma_t, dxhat = b.Mul(dy, xhat), b.Mul(dy, gamma)
        if change == "reduce_means":
            m1, m2 = (b.Reshape(b.ReduceMean(t, b.const([-1]), keepdims=0), b.const([-1]))
                      for t in (dxhat, b.Mul(dxhat, xhat)))
        else:
            w = b.Reshape(b.Div(gamma, b.const(np.float32(d))), b.const([d, 1]))
            m1, m2 = (b.Reshape(b.MatMul(b.Reshape(t, flat), w), b.const([-1]))
                      for t in (dy, dgamma_t))
        if change == "elementwise_dx":
            dx = b.Mul(b.Sub(b.Sub(dxhat, b.Reshape(m1, keep)), b.Mul(xhat, b.Reshape(m2, keep))),
                       b.Reshape(inv, keep))
        else:
            tilt = b.Mul(b.Reshape(xhat, flat), b.Unsqueeze(b.Neg(b.Mul(inv, m2)), b.const([1])))
            dx = b.Add(per_row(dxhat, inv, b.Neg(b.Mul(inv, m1))), tilt)
        return [y, b.Reshape(dx, b.const(list(shape))),
                *(b.MatMul(ones_m, b.Reshape(t, flat)) for t in (dgamma_t, dy))]
    return build


NORM_CASES = {"batchnorm_32x32": batchnorm_forms(16, 32),
              "batchnorm_16x16": batchnorm_forms(32, 16),
              "batchnorm_8x8": batchnorm_forms(64, 8), "relu_dx": relu_dx,
              "layernorm_64x256": layernorm_forms((32, 64, 256)),
              "layernorm_64x1024": layernorm_forms((32, 64, 1024))}

CASES = {"matmul_dw": matmul_dw, "matmul_dx": matmul_dx, "gather_dw": gather_dw,
         "maxpool_dx": maxpool_dx,
         "recurrent_dw": recurrent_dw, "lstm_gates": lstm_gates, "conv_dx": conv_dx(16, 32),
         "conv_dx_16x16": conv_dx(32, 16), "conv_dx_8x8": conv_dx(64, 8),
         "conv_dx_digits": conv_dx(64, 8, inputs=32, batch=64), "conv_dx_s2": conv_dx_s2,
         "conv_dx_1x1_s2": conv_dx_1x1_s2,
         "conv_dw": conv_dw(16, 32), "conv_dw_16x16": conv_dw(32, 16),
         "conv_dw_8x8": conv_dw(64, 8),
         "im2col_digits1": conv_im2col(1, 32, 8, 64), "im2col_digits2": conv_im2col(32, 64, 8, 64),
         "im2col_32x32": conv_im2col(16, 16, 32, 128),
         "im2col_16x16": conv_im2col(32, 32, 16, 128),
         "im2col_8x8": conv_im2col(64, 64, 8, 128), "im2col_4x4": conv_im2col(32, 32, 4, 128),
         "im2col_2x2": conv_im2col(64, 64, 2, 128),
         "im2col_s2": conv_im2col(64, 128, 4, 128, stride=2),
         "channel_sums": channel_sums(16, 32), "channel_sums_16x16": channel_sums(32, 16),
         "channel_sums_8x8": channel_sums(64, 8),
         **{f"step_{m}": train_step(m) for m in ("mlp", "resnet20", "lstm", "transformer",
                                                 "textcls", "vgg_small")}}
CASES.update(NORM_CASES)


def models(name: str) -> tuple[dict, dict[str, bytes]]:
    inputs, variants = CASES[name](np.random.default_rng(0))
    return inputs, {v: build if isinstance(build, bytes) else graph(inputs, build, v)
                    for v, build in variants.items()}


def baseline_models(name: str, src: str) -> dict[str, bytes]:
    """The same case's graphs built by the dlc in source tree `src` (a subprocess with
    DLC_SRC=src), named `<variant>@baseline`: old and new formulations timed in one process."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, __file__, "--emit", name, "--out", d], check=True,
                       env={**os.environ, "DLC_SRC": str(Path(src).resolve())})
        return {f"{f.stem}@baseline": f.read_bytes() for f in sorted(Path(d).glob("*.onnx"))}


def check_same(name: str, sessions: dict, inputs: dict) -> None:
    """Every variant computes the same values: to 1e-4 of each output's largest magnitude, or
    1e-2 for whole train steps, whose fp32 gradients of a deep net differ by rounding (ResNet-20
    against float64 torch: worst parameter 2.3e-3 relative now, 2.0e-2 before the batchnorm
    change). A train step's new parameters are left out: Adam moves a parameter by about lr
    whatever the size of its gradient, so rounding-level gradients (a conv feeding batchnorm
    has an exactly zero one in exact arithmetic) move differently; the new first moment,
    (1 - beta1) x the gradient, is compared instead."""
    tol = 1e-2 if name.startswith("step_") else 1e-4
    ref = None
    for v, s in sessions.items():
        names = [o.name for o in s.get_outputs()]
        out = {k: x for k, x in zip(names, s.run(None, inputs)) if k != "params.new"}
        ref = ref or out
        for k, e in ref.items():
            err = float(np.abs(out[k] - e).max()) / max(float(np.abs(e).max()), 1e-6)
            assert err < tol, f"{name}: {v} differs in {k} (relative {err:.2g})"


def run_case(name: str, threads: int, reps: int, rounds: int, baseline: str | None) -> dict:
    inputs, built = models(name)
    if baseline:
        built.update(baseline_models(name, baseline))
    sessions = {v: session(m, threads) for v, m in built.items()}
    check_same(name, sessions, inputs)
    times, cpu = {v: [] for v in sessions}, {v: [] for v in sessions}
    with ForeignLoad() as fl:
        for _ in range(rounds):
            for v, s in sessions.items():
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    s.run(None, inputs)
                times[v].append((time.perf_counter() - t0) / reps * 1e3)
                cpu[v].append((time.process_time() - c0) / reps * 1e3)
    return {"bench": "grad_forms", "case": name, "threads": threads, "reps": reps,
            "rounds": rounds, "ms_per_run": {v: round(statistics.median(t), 3)
                                             for v, t in times.items()},
            "ms_min": {v: round(min(t), 3) for v, t in times.items()},
            "cpu_ms_per_run": {v: round(statistics.median(t), 3) for v, t in cpu.items()},
            "foreign_cpu_share": fl.value, "cores": cores(), **versions()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--threads", default="1", help="intra-op threads; a list (1,2) runs each "
                   "case at each count in turn")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline", help="also time each case's graphs as built by the dlc in "
                   "this source tree (e.g. `git archive` of an older commit)")
    p.add_argument("--json-only", action="store_true")
    p.add_argument("--emit", help=argparse.SUPPRESS)  # internal: write a case's graphs to --out
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.emit:
        for v, m in models(a.emit)[1].items():
            Path(a.out, f"{v}.onnx").write_bytes(m)
        return
    for name, threads in [(c, int(t)) for c in a.cases.split(",") for t in a.threads.split(",")]:
        r = run_case(name, threads, a.reps, a.rounds, a.baseline)
        print(json.dumps(r), flush=True)
        if not a.json_only:
            times = ", ".join(f"{v} {t} ms" for v, t in r["ms_per_run"].items())
            share = r["foreign_cpu_share"]  # None for a run shorter than a clock tick
            print(f"# {name}, {threads} threads: {times}  (foreign share "
                  f"{'unknown' if share is None else f'{share:.2f}'})", file=sys.stderr)


if __name__ == "__main__":
    main()
