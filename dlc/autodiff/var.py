"""What a VJP rule reads and writes: Var (a tensor whose Python operators emit ONNX arithmetic),
`op` (any other ONNX op on Vars, onnxscript style) and Node (a forward node with named operands).

So a rule reads like its formula: `dy * (y * (1.0 - y))` emits Sub, Mul, Mul in that order,
the nodes the nested calls `b.Mul(dy, b.Mul(y, b.Sub(b.const(1.0), y)))` make. Operands that
are not tensors (Python numbers, lists, numpy arrays) become constants: floats in the graph's
float type, integers int64, as `Builder.const` makes them.
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from dlc.graph import attr, schema

VARIADIC = OpSchema.FormalParameterOption.Variadic


class Var:
    """A tensor of the graph being differentiated. Forward tensors also carry their static facts
    (shape, rank, element type, constant value). Operators: + - * / @ ** unary -, `>` (Greater)
    and `.T` (the last two axes swapped); `==` stays Python identity."""

    __slots__ = ("ad", "name")

    def __init__(self, ad, name: str):
        self.ad, self.name = ad, name

    def __repr__(self) -> str:
        return f"Var({self.name!r})"

    @property
    def shape(self) -> list:
        return self.ad.shapes[self.name]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> int:
        return self.ad.types[self.name]

    @property
    def value(self):
        """The value of a constant initializer (numpy), else None (computed at run time)."""
        return self.ad.b.consts.get(self.name)

    @property
    def T(self) -> Var:  # noqa: N802 (numpy's name)
        r = self.rank
        return op.Transpose(self, perm=[*range(r - 2), r - 1, r - 2])

    def __add__(self, other): return _binary("Add", self, other)
    def __radd__(self, other): return _binary("Add", other, self)
    def __sub__(self, other): return _binary("Sub", self, other)
    def __rsub__(self, other): return _binary("Sub", other, self)
    def __mul__(self, other): return _binary("Mul", self, other)
    def __rmul__(self, other): return _binary("Mul", other, self)
    def __truediv__(self, other): return _binary("Div", self, other)
    def __rtruediv__(self, other): return _binary("Div", other, self)
    def __matmul__(self, other): return _binary("MatMul", self, other)
    def __pow__(self, other): return _binary("Pow", self, other)
    def __gt__(self, other): return _binary("Greater", self, other)
    def __neg__(self): return Var(self.ad, self.ad.b.op("Neg", self.name))


def _binary(op_type: str, a, c) -> Var:
    """The node of an operator: one operand is a Var, the other a Var, a tensor name or a
    constant (what op.X does, without its generality: operators are most of a rule's nodes)."""
    ad = a.ad if isinstance(a, Var) else c.ad
    return Var(ad, ad.b.op(op_type, a.name if isinstance(a, Var) else _operand(ad, a),
                           c.name if isinstance(c, Var) else _operand(ad, c)))


def _operand(ad, t):
    """An op input: a Var's name, a tensor name or None as they are, anything else a constant."""
    return t.name if isinstance(t, Var) else t if t is None or isinstance(t, str) \
        else ad.b.const(t)


def _emit(op_type: str, inputs: tuple, outputs: int, attrs: dict):
    """One node in the graph of the first Var operand; Vars (or lists of them) come back."""
    first = inputs[0] if inputs else None  # usually the Var
    ad = first.ad if isinstance(first, Var) else next(
        (t.ad for t in inputs if isinstance(t, Var)), None)
    if ad is None:
        raise TypeError(f"op.{op_type} needs a Var operand to know its graph")
    out = ad.b.op(op_type, *[_operand(ad, t) for t in inputs], outputs=outputs, **attrs)
    return Var(ad, out) if outputs == 1 else [Var(ad, o) for o in out]


class _Ops:
    """`op.ConvTranspose(dy, w, strides=s)`: inputs positional, attributes keyword-only."""

    def __getattr__(self, op_type: str):
        schema(op_type)

        def emit(*inputs, outputs: int = 1, **attrs):
            return _emit(op_type, inputs, outputs, attrs)
        setattr(self, op_type, emit)  # found directly from now on
        return emit


op = _Ops()


def full(shape: Var, fill, dtype: int) -> Var:
    """A tensor of run-time shape `shape` (int64 vector) filled with `fill` of type `dtype`."""
    return op.ConstantOfShape(shape, value=onnx.helper.make_tensor("value", dtype, [1], [fill]))


class Node:
    """A forward node as its rule reads it: named operands (`x, w, bias = node.inputs`: one per
    input slot of the op, None where an optional one is absent; variadic ops: one per input),
    outputs likewise (`node.y` is the first), attributes with defaults (`node.attr("alpha",
    0.01)`). Anything else (input, output, op_type, name) is read from the NodeProto."""

    def __init__(self, ad, proto: onnx.NodeProto):
        self.ad, self.proto = ad, proto
        self._inputs = self._outputs = None  # made on first use

    def __getattr__(self, name: str):
        if name == "proto":  # not set yet
            raise AttributeError(name)
        return getattr(self.proto, name)

    @property
    def inputs(self) -> tuple:
        if self._inputs is None:
            self._inputs = self._slots(self.proto.input, schema(self.proto.op_type).inputs)
        return self._inputs

    @property
    def outputs(self) -> tuple:
        if self._outputs is None:
            self._outputs = self._slots(self.proto.output, schema(self.proto.op_type).outputs)
        return self._outputs

    @property
    def x(self) -> Var:
        return self.inputs[0]

    @property
    def y(self) -> Var:
        return self.outputs[0]

    def attr(self, name: str, default=None):
        return attr(self.proto, name, default)

    def const(self, value) -> Var:
        """A constant of this node's graph as a Var (for an absent operand's default value)."""
        return Var(self.ad, self.ad.b.const(value))

    def _slots(self, names, formal) -> tuple:
        present = [Var(self.ad, t) if t else None for t in names]
        if formal and formal[-1].option == VARIADIC:
            return tuple(present)
        return tuple(present + [None] * (len(formal) - len(present)))
