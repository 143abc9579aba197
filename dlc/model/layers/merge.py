"""Layers that take several inputs: add, multiply, average, concat."""

from __future__ import annotations

from dlc.model.layers.base import Layer, Shape, ShapeError, numel
from dlc.model.layers.fields import Field, integer, string

SOURCES = {"type": "array", "items": string(minLength=1), "minItems": 2}  # two or more inputs


class Merge(Layer):
    """Elementwise add / multiply / average of inputs of equal shape (no broadcasting)."""
    schema_name = "merge"
    spec_doc = "Elementwise merge of two or more inputs of equal shape: add, multiply or average."
    type_doc = "Layer type: add, multiply or average."
    fields = (
        Field("inputs", "The layers to merge (two or more, equal shapes).", SOURCES,
              required=True),
    )

    multi = True

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        first = in_shapes[0]
        for name, shape in zip(self.cfg["inputs"][1:], in_shapes[1:]):
            if shape != first:
                raise ShapeError(f"shape mismatch: {self.cfg['inputs'][0]} gives {list(first)} "
                                 f"but {name} gives {list(shape)}")
        return first

    def flops(self, in_shapes: list[Shape]) -> int:
        return numel(in_shapes[0]) * (len(in_shapes) - 1 + (self.cfg["type"] == "average"))

    def lower(self, b, xs, p, ctx, in_shapes):
        op = b.Mul if self.cfg["type"] == "multiply" else b.Add
        y = xs[0]
        for x in xs[1:]:
            y = op(y, x)
        if self.cfg["type"] == "average":
            y = b.Mul(y, b.const(1.0 / len(xs)))
        return y


class Concat(Layer):
    schema_name = "concat"
    spec_doc = "Concatenation of two or more inputs along one per-sample axis."
    type_doc = "Layer type: concatenation."
    fields = (
        Field("inputs", "The layers to concatenate (two or more).", SOURCES, required=True),
        Field("axis", "Per-sample axis (0 = the first axis after the batch; -1 = the last).",
              integer(), default=-1),
    )

    multi = True

    def axis(self, rank: int) -> int:
        axis = self.cfg["axis"]
        if not -rank <= axis < rank:
            raise ShapeError(f"axis {axis} is out of range for inputs of rank {rank}")
        return axis % rank

    def output_shape(self, in_shapes: list[Shape]) -> Shape:
        ranks = {len(s) for s in in_shapes}
        if len(ranks) != 1:
            raise ShapeError(f"inputs of different ranks: {[list(s) for s in in_shapes]}")
        axis = self.axis(len(in_shapes[0]))
        rest = {tuple(d for i, d in enumerate(s) if i != axis) for s in in_shapes}
        if len(rest) != 1:
            raise ShapeError(f"shapes {[list(s) for s in in_shapes]} differ outside axis "
                             f"{self.cfg['axis']}")
        out = list(in_shapes[0])
        out[axis] = sum(s[axis] for s in in_shapes)
        return tuple(out)

    def lower(self, b, xs, p, ctx, in_shapes):
        return b.Concat(*xs, axis=1 + self.axis(len(in_shapes[0])))
