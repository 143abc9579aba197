"""VJP rules of the ops that move entries without changing them: Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Expand, Concat, Split, Slice, Pad. Each gradient moves dy back: reshaped,
permuted back, summed over the expanded axes (by the driver), split, concatenated, padded or
sliced. Recurrent layers unroll time with one Split and stack their states with one Concat."""

from __future__ import annotations

import numpy as np

from dlc.autodiff.rules import defdx, defvjp, defzero
from dlc.autodiff.var import full, op

INT64_MAX = np.iinfo(np.int64).max

defdx("Reshape", "Flatten", "Squeeze", "Unsqueeze")(
    lambda n, dy: op.Reshape(dy, op.Shape(n.x)))
defdx("Expand", broadcast="elementwise")(lambda n, dy: dy)  # summed back by the driver
defzero("Shape", "Size", "ConstantOfShape")


@defdx("Transpose")
def _transpose(n, dy):  # the inverse permutation
    perm = n.attr("perm") or list(reversed(range(n.x.rank)))
    return op.Transpose(dy, perm=[int(i) for i in np.argsort(perm)])


@defvjp("Concat")
def _concat(ad, n, g):
    """Each input's slab of dy along the axis: one Split when the sizes are static, else Slices
    at offsets taken from the inputs' run-time shapes."""
    (dy,), parts = g, n.inputs
    axis = n.attr("axis") % n.y.rank
    if len(parts) == 1:
        return (dy,)
    sizes = [p.shape[axis] for p in parts]
    if all(isinstance(s, int) for s in sizes):
        return tuple(op.Split(dy, sizes, axis=axis, outputs=len(sizes)))
    slabs, start = [], n.const([0])
    for part in parts:
        end = start + op.Slice(op.Shape(part), [axis], [axis + 1])
        slabs.append(op.Slice(dy, start, end, [axis]))
        start = end
    return tuple(slabs)


@defvjp("Split")
def _split(ad, n, g):
    """The outputs' cotangents concatenated back; zeros for outputs no path reaches."""
    parts = [dy if dy is not None else full(op.Shape(out), 0, out.dtype)
             for out, dy in zip(n.outputs, g)]
    return (op.Concat(*parts, axis=n.attr("axis", 0)) if len(parts) > 1 else parts[0]), None


def _slice_pads(n):
    """(begin pads, end pads, axes) when the slice has constant unit steps over static dims:
    its gradient is then a zero Pad of dy. None otherwise."""
    x, starts, ends, axes, steps = n.inputs
    starts, ends = starts.value, ends.value
    if starts is None or ends is None or (axes is not None and axes.value is None):
        return None
    if steps is not None and (steps.value is None or np.any(steps.value != 1)):
        return None
    axes = [int(a) % x.rank for a in (axes.value if axes is not None else range(len(starts)))]
    begin, end = [], []
    for a, s, e in zip(axes, starts, ends):
        d = x.shape[a]
        if not isinstance(d, int):
            return None
        s, e = (min(max(int(v) + d if v < 0 else int(v), 0), d) for v in (s, e))
        if e < s:
            return None
        begin.append(s)
        end.append(d - e)
    return begin, end, axes


@defdx("Slice")
def _slice(n, dy):
    """Constant unit-step slices: dy padded with zeros back to x's shape. Otherwise (steps,
    run-time bounds): slice a tensor of flat positions the same way and scatter dy there."""
    pads = _slice_pads(n)
    if pads is not None:
        begin, end, axes = pads
        return op.Pad(dy, begin + end, None, axes, mode="constant")
    x = n.x
    shape = op.Shape(x)
    positions = op.Reshape(op.Range(0, op.Size(x), 1), shape)
    picked = op.Slice(positions, *n.input[1:])  # the forward slice's own bounds, as given
    flat = op.ScatterElements(full(op.Reshape(op.Size(x), [1]), 0, x.dtype),
                              op.Reshape(picked, [-1]), op.Reshape(dy, [-1]), axis=0)
    return op.Reshape(flat, shape)


@defdx("Pad")
def _pad(n, dy):  # constant padding: the gradient is the un-padded slice
    _, pads, _, axes = n.inputs
    pads = pads.value
    axes = axes.value if axes is not None else None if pads is None else range(len(pads) // 2)
    mode = n.attr("mode", b"constant")  # the optional axes input (opset 18): pads apply to these
    if (mode if isinstance(mode, str) else mode.decode()) != "constant" or pads is None \
            or axes is None or min(pads, default=0) < 0:
        raise NotImplementedError("Pad gradient needs constant mode and constant, non-negative "
                                  "pads (and axes)")
    r = len(pads) // 2
    ends = [-int(e) if e > 0 else INT64_MAX for e in pads[r:]]
    return op.Slice(dy, [int(v) for v in pads[:r]], ends, [int(a) for a in axes])
