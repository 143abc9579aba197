"""`dlc inspect MODEL.onnx`: a one-screen report on any ONNX file (from dlc, torch.onnx.export,
Keras or a model zoo): its inputs and outputs, op counts, parameters, opset, and whether dlc can
train it, naming every node on the parameters -> outputs path whose op has no VJP rule.
Exit 0 when everything on that path trains, 1 otherwise (and for an unreadable model)."""

from __future__ import annotations

import math
from collections import Counter

import onnx

from dlc.autodiff.coverage import float_initializers, missing_rules, op_label
from dlc.errors import DlcError
from dlc.files.untrusted import read_model
from dlc.graph import OPSET
from dlc.graph.foreign import DEFAULT_DOMAINS, default_opset, to_pinned_opset

SHOWN = 20  # missing-rule nodes listed before "... and N more": the report stays one screen


def _value(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "?"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in t.shape.dim] if t.HasField("shape") else ["?"]
    return f"  {vi.name}  {dtype} [{', '.join(dims)}]"


def _parameters(graph: onnx.GraphProto) -> str:
    params = float_initializers(graph)
    count = sum(math.prod(t.dims) for t in params)
    nbytes = sum(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                 for t in params)
    other = len(graph.initializer) - len(params)
    return (f"parameters: {count:,} in {len(params)} float initialisers ({nbytes / 2**20:.3g} MiB)"
            + (f"; {other} other initialisers (integer/boolean constants)" if other else ""))


def _opset(model: onnx.ModelProto) -> str:
    default = default_opset(model)
    others = [f"{o.domain} {o.version}" for o in model.opset_import
              if o.domain not in DEFAULT_DOMAINS]
    note = "" if default == OPSET else f" (dlc trains it converted to opset {OPSET})"
    return f"opset: {default}{note}" + (f"; also {', '.join(others)}" if others else "")


def _as_trained(model: onnx.ModelProto, path: str) -> tuple[onnx.ModelProto, str | None]:
    """The model as training sees it: at dlc's opset when onnx's version converter can bring it
    there (ops change form across opsets), else as it is, with the converter's refusal."""
    foreign = any(n.domain not in DEFAULT_DOMAINS for n in model.graph.node)
    if default_opset(model) == OPSET or foreign:
        return model, None
    try:
        return to_pinned_opset(model, path), None
    except DlcError as e:
        return model, str(e)


def _trainability(model: onnx.ModelProto, path: str) -> tuple[list[str], bool]:
    model, refusal = _as_trained(model, path)
    if refusal:
        return [f"trainable: no, {refusal}"], False
    missing = missing_rules(model)
    n = len(float_initializers(model.graph))
    if not missing:
        return [f"trainable: yes, every op on the path from the {n} float initialisers to the "
                "outputs has a VJP rule"], True
    kinds = sorted({m.op_type for m in missing})
    lines = [f"trainable: no, {_count(len(missing), 'node')} on the path from the float "
             f"initialisers to the outputs without a VJP rule ({_count(len(kinds), 'op type')}: "
             f"{', '.join(kinds)}):"]
    lines += [f"  {m.render()}" for m in missing[:SHOWN]]
    if len(missing) > SHOWN:
        lines.append(f"  ... and {len(missing) - SHOWN} more")
    return lines, False


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def report(model: onnx.ModelProto, path: str) -> tuple[list[str], bool]:
    """The report's lines and whether the model trains."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in weights]  # old exports list both
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    ops = Counter(op_label(n.op_type, n.domain) for n in graph.node)
    lines = [f"{path}: {producer or 'unknown producer'}, ir_version {model.ir_version}",
             _opset(model), "inputs:", *map(_value, inputs),
             "outputs:", *map(_value, graph.output),
             f"ops ({len(graph.node)} nodes): "
             + ", ".join(f"{op} {k}" for op, k in ops.most_common()),
             _parameters(graph)]
    trains, ok = _trainability(model, path)
    return lines + trains, ok


def command(path: str) -> int:
    lines, ok = report(read_model(path), path)
    print("\n".join(lines))
    return 0 if ok else 1
