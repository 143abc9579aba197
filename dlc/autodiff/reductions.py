"""VJP rules of the reductions: dy broadcast back over the reduced axes (scaled by the count for
ReduceMean, routed to the maxima for ReduceMax); ArgMax/ArgMin carry no gradient."""

from __future__ import annotations

from dlc.autodiff.rules import defdx, defzero
from dlc.autodiff.var import op

defzero("ArgMax", "ArgMin")


@defdx("ReduceSum")
def _reduce_sum(n, dy):
    """Broadcast dy back over the reduced axes (re-inserted when keepdims=0)."""
    x, axes = n.inputs
    if not n.attr("keepdims", 1) and axes is not None:
        dy = op.Unsqueeze(dy, axes)
    return op.Expand(dy, op.Shape(x))


@defdx("ReduceMean")
def _reduce_mean(n, dy):  # divided while still reduced, then broadcast back
    count = op.Cast(op.Size(n.x) / op.Size(n.y), to=n.x.dtype)
    return _reduce_sum(n, dy / count)


@defdx("ReduceMax")
def _reduce_max(n, dy):  # to the maxima, shared evenly between ties
    (x, axes), y = n.inputs, n.y
    if not n.attr("keepdims", 1) and axes is not None:
        y, dy = op.Unsqueeze(y, axes), op.Unsqueeze(dy, axes)
    mask = op.Cast(op.Equal(x, y), to=x.dtype)
    ties = op.ReduceSum(mask, axes, keepdims=1) if axes is not None \
        else op.ReduceSum(mask, keepdims=1)
    return mask / ties * dy
