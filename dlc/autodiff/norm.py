"""VJP rules of the normalisations that exported models carry as single ops:
BatchNormalization in inference form (torch.onnx.export of a model in eval mode, Keras exports:
the running mean and variance are constants of the step, so the op is an affine map per channel)
and LayerNormalization (opset 17+, what torch exports nn.LayerNorm to).

dlc's own batchnorm and layernorm layers lower to primitive ops and never reach these rules.
"""

from __future__ import annotations

from dlc.autodiff.rules import defvjp
from dlc.autodiff.var import op
from dlc.errors import DlcError


def _per_channel(v, rank: int):
    """A [C] vector shaped [C, 1, ..., 1] to broadcast over an [N, C, ...] tensor."""
    return op.Unsqueeze(v, list(range(1, rank - 1))) if rank > 2 else v


@defvjp("BatchNormalization")
def _batch_norm(ad, n, g):
    """y = scale (x - mean) / sqrt(var + eps) + B per channel (axis 1), mean and var fixed:
    dx = dy scale inv, dscale = sum(dy xhat), dB = sum(dy); the statistics get no gradient."""
    (x, scale, _, mean, var), dy = n.inputs, g[0]
    if n.attr("training_mode", 0):
        raise DlcError(f"node {n.name}: BatchNormalization with training_mode=1 (batch "
                       "statistics) has no gradient rule; export the model in eval mode")
    rank, axes = x.rank, [0, *range(2, x.rank)]
    inv = 1.0 / op.Sqrt(var + n.attr("epsilon", 1e-5))
    xhat = (x - _per_channel(mean, rank)) * _per_channel(inv, rank)
    dx = dy * _per_channel(scale * inv, rank)
    return (dx, op.ReduceSum(dy * xhat, axes, keepdims=0), op.ReduceSum(dy, axes, keepdims=0),
            None, None)


@defvjp("LayerNormalization", broadcast="elementwise")
def _layer_norm(ad, n, g):
    """xhat = (x - mean) inv over the axes from `axis` on; y = xhat scale + B.
    dx = inv (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with dxhat = dy scale; dscale = dy xhat
    and dB = dy, summed down to their shapes by the driver."""
    (x, scale, bias), dy = n.inputs, g[0]
    axis = n.attr("axis", -1) % x.rank
    axes = list(range(axis, x.rank))
    centred = x - op.ReduceMean(x, axes, keepdims=1)
    var = op.ReduceMean(centred * centred, axes, keepdims=1)
    inv = 1.0 / op.Sqrt(var + n.attr("epsilon", 1e-5))
    xhat = centred * inv
    dxhat = dy * scale
    mean_dxhat = op.ReduceMean(dxhat, axes, keepdims=1)
    mean_dxhat_xhat = op.ReduceMean(dxhat * xhat, axes, keepdims=1)
    dx = inv * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
    return dx, dy * xhat, None if bias is None else dy
