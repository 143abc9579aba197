"""ONNX graphs dlc did not write (torch.onnx.export, Keras, a model zoo), brought to dlc's pinned
opset and copied into a Builder, so the autodiff driver and the optimizers work on them exactly
as on a compiled spec.

Only the default domain and ai.onnx.ml are taken: a com.microsoft or custom op has no gradient
rule and no schema in the pinned opsets (`dlc inspect` names such nodes before this is reached).
ai.onnx.ml ops (a dlc model's string front: LabelEncoder, ...) have no gradient rule either, but
they may stand where no gradient flows (before the parameters, on an integer path); the
trainability check (dlc.autodiff.coverage) names any on the path from the parameters.
"""

from __future__ import annotations

import onnx
from onnx import version_converter

from dlc.errors import DlcError
from dlc.graph.builder import IR_VERSION, ML_DOMAIN, OPSET, Builder

DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)


def to_pinned_opset(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """`model` at dlc's opset: converted by onnx's version converter when it differs."""
    others = sorted({n.domain for n in model.graph.node
                     if n.domain not in (*DEFAULT_DOMAINS, ML_DOMAIN)})
    if others:
        raise DlcError(f"{where}: uses ops of the domains {', '.join(others)}; dlc trains only "
                       "standard ONNX and ai.onnx.ml ops (see `dlc inspect`)")
    if default_opset(model) != OPSET:
        try:
            model = version_converter.convert_version(model, OPSET)
        except (RuntimeError, ValueError, onnx.checker.ValidationError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DlcError(f"{where}: cannot convert opset {default_opset(model)} to "
                           f"{OPSET}: {first}") from None
    model.ir_version = IR_VERSION
    return model


def add_graph(b: Builder, graph: onnx.GraphProto) -> None:
    """Copy `graph`'s inputs (initialisers excluded), initialisers and nodes into `b`, names
    kept; an unnamed node gets a fresh name after its op type, so its gradient nodes have one."""
    weights = {t.name for t in graph.initializer}
    b.inputs.extend(vi for vi in graph.input if vi.name not in weights)
    b.initializers.extend(graph.initializer)
    b.reserve(*(vi.name for vi in graph.input), *weights,
              *(name for n in graph.node for name in (n.name, *n.output) if name))
    for node in graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.name = node.name or b.fresh(node.op_type)
        b.nodes.append(node)


def copy_nodes(b: Builder, nodes, rename: dict[str, str]) -> dict[str, str]:
    """Append copies of `nodes` (in graph order) to `b`, reading `rename[name]` for each input
    (the graph's inputs and initialisers must be in it) and writing fresh names under `b`'s
    scope; `rename` gains every output and is returned."""
    for node in nodes:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.name = b.fresh((node.name or node.op_type).strip("/"))
        node.input[:] = [rename[i] if i else "" for i in node.input]
        for o in [o for o in node.output if o]:
            rename[o] = b.fresh(o.strip("/") or node.op_type)
        node.output[:] = [rename.get(o, "") for o in node.output]
        b.nodes.append(node)
    return rename
