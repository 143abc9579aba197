"""Trainability of any ONNX graph: which nodes on the path from the float initialisers to the
graph outputs have no VJP rule. The same walk as the driver's pruning (driver._active_nodes),
without emitting anything, so `dlc inspect` can say before any data is read what training would
refuse, and where.

A gradient flows only through float tensors (driver.FLOATS): a node whose outputs are all integer
or boolean (Shape, ArgMax, a Cast to int64) ends the path, as in the driver. Only ops of the
default domain have rules; a node of another domain (com.microsoft, a custom op) on the path is
reported like a missing rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from dlc.autodiff.driver import FLOATS
from dlc.autodiff.rules import VJP
from dlc.graph.foreign import DEFAULT_DOMAINS


UNKNOWN = {None, onnx.TensorProto.UNDEFINED}  # no type inferred (an op of another domain)


def op_label(op_type: str, domain: str) -> str:
    """`Conv`, or `com.microsoft::FusedConv` for an op outside the default domain."""
    return op_type if domain in DEFAULT_DOMAINS else f"{domain}::{op_type}"


@dataclass(frozen=True)
class Missing:
    """One node on a parameter -> output path whose op has no VJP rule."""

    index: int  # position in the graph's node list (topological in a valid model)
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def render(self) -> str:
        return (f"node #{self.index} {self.name or '(unnamed)'} "
                f"({op_label(self.op_type, self.domain)}): "
                f"{', '.join(self.inputs)} -> {', '.join(self.outputs)}")


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor onnx's shape inference can name (unknown ones are absent)."""
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, RuntimeError):  # an op onnx cannot infer
        graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*graph.input, *graph.value_info, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def float_initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    return [t for t in graph.initializer if t.data_type in FLOATS]


def on_gradient_path(graph: onnx.GraphProto, types: dict[str, int], sources: set[str],
                     targets: list[str]) -> list[int]:
    """Indices of the nodes on some path from a `sources` tensor to a `targets` tensor, through
    float tensors only (a tensor of unknown type counts as float: the report errs on the side of
    naming a node)."""
    nodes = list(graph.node)
    depends = set(sources)
    for node in nodes:
        if any(i in depends for i in node.input):
            depends.update(o for o in node.output if types.get(o) in FLOATS | UNKNOWN)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    needed, stack = set(), [t for t in targets if t in depends]
    while stack:
        k = producer.get(stack.pop())
        if k is not None and k not in needed:
            needed.add(k)
            stack.extend(i for i in nodes[k].input if i in depends)
    return sorted(needed)


def missing_rules(model: onnx.ModelProto, sources: set[str] | None = None,
                  targets: list[str] | None = None) -> list[Missing]:
    """Nodes on a path from `sources` (default: every float initialiser) to `targets` (default:
    the graph outputs) without a VJP rule, in graph order."""
    graph = model.graph
    sources = {t.name for t in float_initializers(graph)} if sources is None else sources
    targets = [o.name for o in graph.output] if targets is None else targets
    found = []
    for k in on_gradient_path(graph, elem_types(model), sources, targets):
        node = graph.node[k]
        if node.domain in DEFAULT_DOMAINS and node.op_type in VJP:
            continue
        found.append(Missing(k, node.name, node.op_type, node.domain, tuple(node.input),
                             tuple(node.output)))
    return found
