"""The driver: prune to the params -> loss path, walk it in reverse, sum fan-out, undo broadcasting.

Every rule has the contract `rule(ad, node, g) -> tuple` (dlc.autodiff.rules): one entry per
input of the node or per input slot of its op, None where the input is not differentiable; `g`
holds the cotangent of each output as a Var (None when no path reaches it). The driver checks the
arity of what comes back, and undoes broadcasting here, once, for the ops the table marks.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from dlc.autodiff.rules import BROADCAST, GRAD_SHAPE, VJP
from dlc.autodiff.var import Node, Var
from dlc.errors import DlcError
from dlc.graph import Builder, make_model

Dims = list  # per-dimension int (static), str (symbolic) or None (unknown)
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
          onnx.TensorProto.BFLOAT16}  # gradients stop at integer and boolean tensors


@dataclass
class AD:
    """What a rule may read besides the node: the builder, static shapes and element types,
    and the device the graph will run on (a rule may pick an op only one device has)."""

    b: Builder
    shapes: dict[str, Dims]
    types: dict[str, int]
    device: str = "cpu"

    def rank(self, name: str) -> int:
        return len(self.shapes[name])


def infer_shapes(b: Builder, outputs: list[str]) -> tuple[dict[str, Dims], dict[str, int]]:
    """Static shapes and element types of every tensor in the builder's graph (onnx inference)."""
    probe = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(b.nodes, "probe", b.inputs,
                                   [probe(o, onnx.TensorProto.UNDEFINED, None) for o in outputs],
                                   b.initializers)
    model = make_model(graph)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    shapes, types = {}, {}
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        t = vi.type.tensor_type
        types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in t.shape.dim]
    for init in inferred.initializer:
        shapes[init.name], types[init.name] = list(init.dims), init.data_type
    return shapes, types


def _active_nodes(nodes, loss: str, wrt: set[str]):
    """Nodes on some path from a `wrt` tensor to `loss`, in topological (build) order."""
    depends = set(wrt)
    for node in nodes:
        if any(i in depends for i in node.input):
            depends.update(node.output)
    producer = {o: n for n in nodes for o in n.output}
    needed, stack = set(), [loss]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in needed:
            needed.add(node.name)
            stack.extend(i for i in node.input if i in depends)
    return [n for n in nodes if n.name in needed], depends


def unbroadcast(b: Builder, g: str, from_shape: Dims, to_shape: Dims, like: str,
                dtype: int) -> str:
    """Sum `g` (shaped `from_shape`) down to `to_shape`, the shape of tensor `like` (of element
    type `dtype`). A sum over leading axes only (a bias's gradient: dense, Gemm's C, [B, T, n]
    over [n]) is one GEMV, ones[rows] @ g as [rows, rest]: onnxruntime's ReduceSum over the
    leading axis took 16 us on [64, 256] against under 1 us for the GEMV, 60 against 38 us on
    [2048, 256], 31 against 20 on [256, 1024] (1 thread, one core)."""
    lead = len(from_shape) - len(to_shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(to_shape)
                                if d == 1 and from_shape[lead + i] != 1]
    if not axes:
        return g
    if axes == list(range(len(axes))) and len(axes) < len(from_shape):
        flat = b.Flatten(g, axis=len(axes))
        one = onnx.helper.make_tensor("value", dtype, [1], [1])
        return b.Reshape(b.MatMul(b.ConstantOfShape(b.Shape(flat, end=1), value=one), flat),
                         b.Shape(like))
    g = b.ReduceSum(g, b.const(axes), keepdims=1)
    return b.Reshape(g, b.Shape(like)) if lead else g


def _checked(node: Node, g_in) -> list:
    """The rule's gradients as tensor names, one per input of the node (a rule may also answer
    per input slot of the op, with None for the absent optional inputs)."""
    g_in, n = tuple(g_in), len(node.input)
    if len(g_in) != n and (len(g_in) != len(node.inputs) or any(g_in[n:])):
        raise AssertionError(f"VJP rule for {node.op_type} returned {len(g_in)} gradients for "
                             f"the {n} inputs of node {node.name}")
    return [gi if gi is None or isinstance(gi, str) else gi.name for gi in g_in[:n]]


CLOSED = "dlc.ClosedForm"  # the walk's stand-in for the nodes a closed-form gradient replaces


def _closed_forms(nodes, closed: dict) -> list:
    """The nodes with the producer of each `closed` tensor replaced by a stand-in that reads the
    tensor's closed-form input directly: the nodes between them then lie on no path to it."""
    return [onnx.helper.make_node(CLOSED, [closed[n.output[0]][0]], list(n.output), name=n.name)
            if n.output and n.output[0] in closed else n for n in nodes]


def gradients(b: Builder, loss: str, wrt: list[str], closed: dict | None = None,
              device: str = "cpu") -> dict[str, str | None]:
    """Emit the backward pass of scalar `loss` into `b`; return {tensor: gradient tensor or None}.
    `closed`: {scalar tensor: (input, make)} where make() emits d tensor / d input in closed
    form (a loss's gradient with respect to the logits), used instead of the chain rule through
    the nodes between them. `device`: "cpu" or "cuda", where the graph will run."""
    shapes, types = infer_shapes(b, [loss])
    ad = AD(b, shapes, types, device)
    active, depends = _active_nodes(_closed_forms(b.nodes, closed or {}), loss, set(wrt))
    seed = b.const(1.0)
    grads: dict[str, str] = {loss: seed}
    for node in reversed(active):
        g = [grads.get(o) for o in node.output]
        if all(gi is None for gi in g):  # its outputs reach the loss only through gradient-free ops
            continue
        rule = VJP.get(node.op_type)
        if rule is None and node.op_type != CLOSED:
            raise DlcError(f"no gradient rule for ONNX op {node.op_type} (node {node.name}); "
                           "this layer cannot be trained yet")
        with b.scope(f"{node.name}.grad"):
            if node.op_type == CLOSED:  # the closed form times the incoming cotangent
                name, make = closed[node.output[0]]
                gi = make() if g[0] == seed else b.Mul(make(), g[0])
                grads[name] = gi if name not in grads else b.Add(grads[name], gi)
                continue
            view, kind = Node(ad, node), BROADCAST.get(node.op_type)
            g_in = _checked(view, rule(ad, view, [Var(ad, gi) if gi else None for gi in g]))
            for i, (name, gi) in enumerate(zip(node.input, g_in)):
                if gi is None or name not in depends or ad.types.get(name) not in FLOATS:
                    continue
                shaped = GRAD_SHAPE[kind](ad, node, i) if kind else None
                if shaped is not None:
                    gi = unbroadcast(b, gi, shaped, shapes[name], name, types[name])
                grads[name] = gi if name not in grads else b.Add(grads[name], gi)
    return {w: grads.get(w) for w in wrt}
