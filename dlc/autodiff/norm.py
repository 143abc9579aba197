"""VJP rules of the normalisations: BatchNormalization in inference form and
LayerNormalization (opset 17+, what torch exports nn.LayerNorm to, and what dlc's layernorm
trains through: its Mean and InvStdDev outputs then give the backward xhat in one pass).

BatchNormalization applies a mean and variance given as inputs. In exported models (torch.onnx
of a model in eval mode, Keras) they are the running statistics, constants of the step; dlc's
batchnorm feeds it the batch's own (model/layers/norm.py batch_statistics), and the rule then
emits the closed-form backward instead of the chain through the ops that took them.
"""

from __future__ import annotations

import numpy as np
import onnx

from dlc.autodiff.rules import defvjp
from dlc.autodiff.var import Var, full, op
from dlc.errors import DlcError
from dlc.graph import attr


def _per_channel(v, rank: int):
    """A [C] vector shaped [C, 1, ..., 1] to broadcast over an [N, C, ...] tensor."""
    return op.Unsqueeze(v, list(range(1, rank - 1))) if rank > 2 else v


def _channel_sums(t, rank: int):
    """Per-channel (axis 1) sums of an [N, C, ...] tensor: over the spatial axes first (one
    contiguous run per image and channel), then over N. onnxruntime takes 20-30% less time
    than for one ReduceSum over (0, 2, 3) (bench/grad_forms.py channel_sums)."""
    if rank > 2:
        t = op.ReduceSum(op.Reshape(t, [0, 0, -1]), [2], keepdims=0)
    return op.ReduceSum(t, [0], keepdims=0)


def _own_statistics(ad, n) -> Var | None:
    """c = x - mean when the node's mean and variance are its input's own batch statistics as
    model/layers/norm.py batch_statistics takes them: mean = channel_mean(x) and var =
    channel_mean(c * c) with c = x + Neg(Reshape(mean)); else None."""
    made = {o: node for node in ad.b.nodes for o in node.output}
    x, mean, var = (n.proto.input[i] for i in (0, 3, 4))
    rank = ad.rank(x)

    def made_by(t, op_type, operand=None):  # the first input of t's producer, if it is that
        node = made.get(t)
        ok = node is not None and node.op_type == op_type and not attr(
            node, "keepdims", op_type == "ReduceMean") and (operand is None or np.array_equal(
                ad.b.consts.get(node.input[1], []), operand))
        return node.input[0] if ok else None

    def channel_mean_of(t):
        t = made_by(t, "ReduceMean", [0])
        return made_by(made_by(t, "ReduceMean", [2]), "Reshape", [0, 0, -1]) if rank > 2 else t
    square = made.get(channel_mean_of(var))
    if square is None or square.op_type != "Mul" or square.input[0] != square.input[1]:
        return None
    c = square.input[0]
    if made_by(c, "Add") != x:
        return None
    shift = made_by(made_by(made[c].input[1], "Neg"), "Reshape", [1, -1, *[1] * (rank - 2)])
    return Var(ad, c) if shift == mean and channel_mean_of(mean) == x else None


def _own_statistics_vjp(n, dy, centred):
    """y = scale xhat + B with xhat = c inv over M entries per channel, the statistics the
    input's own: dx = scale inv (dy - sum(dy) / M - xhat sum(dy xhat) / M), that is
    a dy + (slope c + shift) per channel, the second term one BatchNormalization (a per-channel
    affine map in one pass: mean 0, variance 0, epsilon 1). Six passes over x-sized tensors;
    the chain rule through the statistics' ops made nine (bench/grad_forms.py batchnorm)."""
    x, scale, _, mean, var = n.inputs
    inv = 1.0 / op.Sqrt(var + n.attr("epsilon", 1e-5))
    count = op.Cast(op.Size(x) / op.Size(mean), to=x.dtype)
    total, dot = _channel_sums(dy, x.rank), _channel_sums(dy * centred, x.rank)  # dy, dy c
    a = scale * inv
    slope, shift = -(a * inv * inv * dot) / count, -(a * total) / count
    zeros = full(op.Shape(mean), 0.0, x.dtype)
    affine = op.BatchNormalization(centred, slope, shift, zeros, zeros, epsilon=1.0)
    return dy * _per_channel(a, x.rank) + affine, dot * inv, total, None, None


@defvjp("BatchNormalization")
def _batch_norm(ad, n, g):
    """y = scale (x - mean) inv + B per channel (axis 1), inv = 1 / sqrt(var + eps). With the
    input's own batch statistics: the closed form above. Otherwise mean and var are inputs like
    any other: dx = dy scale inv, dscale = sum(dy xhat), dB = sum(dy), dmean = -scale inv dB,
    dvar = -scale inv^2 dscale / 2 (per channel; dropped when nothing reads them)."""
    (x, scale, _, mean, var), dy = n.inputs, g[0]
    if n.attr("training_mode", 0):
        raise DlcError(f"node {n.name}: BatchNormalization with training_mode=1 (batch "
                       "statistics) has no gradient rule; export the model in eval mode")
    centred = _own_statistics(ad, n)
    if centred is not None:
        return _own_statistics_vjp(n, dy, centred)
    inv = 1.0 / op.Sqrt(var + n.attr("epsilon", 1e-5))
    a = scale * inv
    xhat = (x - _per_channel(mean, x.rank)) * _per_channel(inv, x.rank)
    d_scale, d_bias = _channel_sums(dy * xhat, x.rank), _channel_sums(dy, x.rank)
    return (dy * _per_channel(a, x.rank), d_scale, d_bias, -(a * d_bias),
            -0.5 * (a * inv * d_scale))


def _rows(t: Var, axis: int) -> Var:
    """t as [1, rows, cols], the axes before `axis` flattened into rows (a view): the channels
    of a BatchNormalization, which then maps each row by its own scale and shift in one pass."""
    return op.Unsqueeze(op.Flatten(t, axis=axis), [0])


def _per_row(t: Var, axis: int, dtype: int, scale: Var, shift=None, mean=None) -> Var:
    """scale (t - mean) + shift, one value of each [rows] vector per row: one BatchNormalization
    (variance 0, epsilon 1), shaped [1, rows, cols]."""
    zeros = full(op.Shape(scale), 0.0, dtype)
    return op.BatchNormalization(_rows(t, axis), scale, zeros if shift is None else shift,
                                 zeros if mean is None else mean, zeros, epsilon=1.0)


def _statistics(n, x: Var, axis: int) -> tuple[Var, Var]:
    """(xhat, 1 / sqrt(var + eps) as a [rows] vector). From the node's own Mean and InvStdDev
    outputs when it has them (dlc's layernorm in training): xhat in one pass over x (as x inv
    - mean inv: rows 60 standard deviations off 0 still agree with torch to 1e-6); else (an
    exported model's node) both recomputed by one LayerNormalization of unit scale. The
    statistics come in the node's stash type (float), cast to x's where that differs."""
    stash = n.attr("stash_type", onnx.TensorProto.FLOAT)

    def vector(s):
        return op.Reshape(s if stash == x.dtype else op.Cast(s, to=x.dtype), [-1])
    _, mean, inv = n.outputs
    if mean is None or inv is None:
        ones = full(op.Shape(x, start=axis), 1.0, x.dtype)
        xhat, _, inv = op.LayerNormalization(x, ones, axis=axis, epsilon=n.attr(
            "epsilon", 1e-5), stash_type=stash, outputs=3)
        return xhat, vector(inv)
    inv = vector(inv)
    return op.Reshape(_per_row(x, axis, x.dtype, inv, mean=vector(mean)), op.Shape(x)), inv


@defvjp("LayerNormalization", broadcast="elementwise")
def _layer_norm(ad, n, g):
    """xhat = (x - mean) inv over the axes from `axis` on (cols of them per row); y = xhat
    scale + B. dx = inv (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with dxhat = dy scale;
    dscale = dy xhat and dB = dy, summed down to their shapes by the driver. The row means are
    GEMVs of dy and dy xhat with scale / cols (a [cols, 1] column: onnxruntime's MatMul by a
    1-D vector took 1.4 ms on [2048, 256], by the column 0.04), and dx = inv dxhat -
    inv mean(dxhat) + xhat (-inv mean(dxhat xhat)), a per-row affine map and a Mul, added: six
    passes over x-sized tensors (xhat, dy xhat, dxhat, the map, the Mul, the Add), where
    recomputing the statistics with primitive ops made ten (bench/grad_forms.py layernorm_*)."""
    (x, scale, bias), dy = n.inputs, g[0]
    axis = n.attr("axis", -1) % x.rank
    xhat, inv = _statistics(n, x, axis)
    weights = op.Reshape(op.Expand(scale, op.Shape(x, start=axis)), [-1, 1])
    weights = weights / op.Cast(op.Size(weights), to=x.dtype)  # a row mean of t scale: t @ w
    dscale = dy * xhat
    mean_dxhat, mean_dxhat_xhat = (op.Reshape(op.Flatten(t, axis=axis) @ weights, [-1])
                                   for t in (dy, dscale))
    shifted = _per_row(dy * scale, axis, x.dtype, inv, -(inv * mean_dxhat))
    tilt = op.Flatten(xhat, axis=axis) * op.Unsqueeze(-(inv * mean_dxhat_xhat), [1])
    return op.Reshape(shifted + tilt, op.Shape(x)), dscale, None if bias is None else dy
