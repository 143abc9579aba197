"""VJP rules for the indexing and slicing ops that sequence models emit: Gather, Slice, Concat,
Split. Registered into the same table as rules.py (`defvjp`), with the same contract:
`rule(ad, node, g) -> one gradient (or None) per ONNX input`.

Sequence layers unroll time with Split/Squeeze, stack outputs with Unsqueeze/Concat, look up
embeddings with Gather and pick time steps with Gather or Slice; these rules make those graphs
differentiable with standard ONNX only (Pad, Concat, Split, Slice, ScatterND, ScatterElements).
"""

from __future__ import annotations

import numpy as np
import onnx

from dlc.autodiff.rules import defvjp
from dlc.graph import attr

INT64_MAX = np.iinfo(np.int64).max


def _zeros(ad, shape: str, like: str) -> str:
    """A zero tensor of runtime shape `shape` (int64 vector) in the element type of `like`."""
    value = onnx.helper.make_tensor("value", ad.types[like], [1], [0])
    return ad.b.ConstantOfShape(shape, value=value)


# ---- Gather -----------------------------------------------------------------------------------
@defvjp("Gather")
def _gather(ad, n, g):
    """y = x.shape[:a] + idx.shape + x.shape[a+1:]. Move axis a of x to the front (and the index
    dims of g with it), scatter-add the rows of g at their indices, move the axis back. Repeated
    indices accumulate (reduction add); negative indices are wrapped first."""
    b, (x, idx) = ad.b, n.input
    r, q = ad.rank(x), ad.rank(idx)
    axis = attr(n, "axis", 0) % r
    gy = g[0]
    if axis:  # idx.shape + x.shape[:a] + x.shape[a+1:]
        gy = b.Transpose(gy, perm=[*range(axis, axis + q), *range(axis),
                                   *range(axis + q, r - 1 + q)])
    front = [axis, *range(axis), *range(axis + 1, r)]
    shape = b.Gather(b.Shape(x), b.const(front))  # the shape of x with axis a moved first
    dim = b.Slice(shape, b.const([0]), b.const([1]))
    flat = b.Reshape(idx, b.const([-1, 1]))
    flat = b.Where(b.Less(flat, b.const(0)), b.Add(flat, dim), flat)
    rows = b.Reshape(gy, b.Concat(b.const([-1]), b.Slice(shape, b.const([1]), b.const([r])),
                                  axis=0))
    gx = b.ScatterND(_zeros(ad, shape, x), flat, rows, reduction="add")
    if axis:
        gx = b.Transpose(gx, perm=[int(i) for i in np.argsort(front)])
    return gx, None


# ---- Slice ------------------------------------------------------------------------------------
def _const_input(ad, n, i: int):
    """The constant value of optional input i (None when absent or computed at run time)."""
    if len(n.input) <= i or not n.input[i]:
        return None
    return ad.b.consts.get(n.input[i])


def _slice_pads(ad, n):
    """(begin pads, end pads, axes) when the slice has constant unit steps over static dims:
    its gradient is then a zero Pad of g. None otherwise."""
    x = n.input[0]
    starts, ends, axes, steps = (_const_input(ad, n, i) for i in (1, 2, 3, 4))
    if starts is None or ends is None or (len(n.input) > 3 and n.input[3] and axes is None):
        return None
    if len(n.input) > 4 and n.input[4] and (steps is None or np.any(steps != 1)):
        return None
    axes = [int(a) % ad.rank(x) for a in (axes if axes is not None else range(len(starts)))]
    begin, end = [], []
    for a, s, e in zip(axes, starts, ends):
        d = ad.shapes[x][a]
        if not isinstance(d, int):
            return None
        s, e = (min(max(int(v) + d if v < 0 else int(v), 0), d) for v in (s, e))
        if e < s:
            return None
        begin.append(s)
        end.append(d - e)
    return begin, end, axes


@defvjp("Slice")
def _slice(ad, n, g):
    """Constant unit-step slices: g padded with zeros back to x's shape. Otherwise (steps, run-time
    bounds): slice a tensor of flat positions the same way and scatter g to those positions."""
    b, x = ad.b, n.input[0]
    none = (None,) * (len(n.input) - 1)
    pads = _slice_pads(ad, n)
    if pads is not None:
        begin, end, axes = pads
        return (b.Pad(g[0], b.const(begin + end), None, b.const(axes), mode="constant"),) + none
    shape = b.Shape(x)
    positions = b.Reshape(b.Range(b.const(0), b.Size(x), b.const(1)), shape)
    picked = b.Slice(positions, *n.input[1:])
    flat = b.ScatterElements(_zeros(ad, b.Reshape(b.Size(x), b.const([1])), x),
                             b.Reshape(picked, b.const([-1])), b.Reshape(g[0], b.const([-1])),
                             axis=0)
    return (b.Reshape(flat, shape),) + none


# ---- Concat and Split -------------------------------------------------------------------------
@defvjp("Concat")
def _concat(ad, n, g):
    """Each input's slab of g along the axis: one Split when the sizes are static, else Slices
    at offsets taken from the inputs' run-time shapes."""
    b, rank = ad.b, ad.rank(n.output[0])
    axis = attr(n, "axis") % rank
    sizes = [ad.shapes[i][axis] for i in n.input]
    if len(n.input) == 1:
        return (g[0],)
    if all(isinstance(s, int) for s in sizes):
        return tuple(b.Split(g[0], b.const(sizes), axis=axis, outputs=len(sizes)))
    parts, start = [], b.const([0])
    for inp in n.input:
        end = b.Add(start, b.Slice(b.Shape(inp), b.const([axis]), b.const([axis + 1])))
        parts.append(b.Slice(g[0], start, end, b.const([axis])))
        start = end
    return tuple(parts)


@defvjp("Split")
def _split(ad, n, g):
    """The outputs' cotangents concatenated back; zeros for outputs no path reaches."""
    b = ad.b
    parts = [gi if gi is not None else _zeros(ad, b.Shape(out), out)
             for out, gi in zip(n.output, g)]
    gx = b.Concat(*parts, axis=attr(n, "axis", 0)) if len(parts) > 1 else parts[0]
    return (gx,) + (None,) * (len(n.input) - 1)
