"""VJP rules of the indexing ops: Gather (embedding look-ups, picked time steps) scatters dy back
to the rows it read, adding where indices repeat; OneHot's output carries no gradient."""

from __future__ import annotations

import numpy as np

from dlc.autodiff.rules import defdx, defzero
from dlc.autodiff.var import full, op

defzero("OneHot")


@defdx("Gather")
def _gather(n, dy):
    """y = x.shape[:a] + idx.shape + x.shape[a+1:]. Move axis a of x to the front (and the index
    dims of dy with it), scatter-add the rows of dy at their indices, move the axis back.
    Repeated indices accumulate (reduction add); negative indices are wrapped first."""
    x, idx = n.inputs
    r, q = x.rank, idx.rank
    axis = n.attr("axis", 0) % r
    if axis:  # idx.shape + x.shape[:a] + x.shape[a+1:]
        dy = op.Transpose(dy, perm=[*range(axis, axis + q), *range(axis),
                                    *range(axis + q, r - 1 + q)])
    front = [axis, *range(axis), *range(axis + 1, r)]
    shape = op.Gather(op.Shape(x), front)  # the shape of x with axis a moved first
    dim = op.Slice(shape, [0], [1])
    flat = op.Reshape(idx, [-1, 1])
    flat = op.Where(op.Less(flat, 0), flat + dim, flat)
    rows = op.Reshape(dy, op.Concat(n.const([-1]), op.Slice(shape, [1], [r]), axis=0))
    dx = op.ScatterND(full(shape, 0, x.dtype), flat, rows, reduction="add")
    if axis:
        dx = op.Transpose(dx, perm=[int(i) for i in np.argsort(front)])
    return dx
