"""The spec's `base:` section: an ONNX model (torch.onnx.export, Keras 3, a model zoo, a dlc
model.onnx) as the network's first node, with the spec's layers as a head on its `cut` tensor.

The base is read once per file version (cached), brought to dlc's opset, and cut: only the nodes
the cut tensor needs are kept. It enters the network as one layer, `base`, whose parameters are
its float32 initialisers (`base.<initialiser>`: trainable by pattern, the others frozen, so
everything downstream (train step, checkpoints, resume, inference model) treats them as any
layer's), whose shape rule is onnx's shape inference of the cut tensor, and whose lowering copies
the kept nodes under fresh names. Trainability is proved here, before any data is read: every
node on the path from the trainable initialisers to the cut must have a VJP rule (what follows
the cut is dlc's own layers, which all have one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from dlc.autodiff.coverage import missing_rules, op_label
from dlc.errors import DlcError
from dlc.files.untrusted import read_model
from dlc.graph.foreign import copy_nodes, to_pinned_opset
from dlc.model.layers.base import Layer, Param, Shape
from dlc.model.names import matches
from dlc.model.spec.schema import one_line

NAME = "base"  # the network node (and parameter prefix) of the base model
STATISTICS = {"BatchNormalization": (3, 4)}  # inputs that are running statistics: never trained


@dataclass(frozen=True)
class BaseGraph:
    """A base model cut at one tensor: what the network needs of it."""

    path: str
    input: str  # the graph input it reads
    in_shape: Shape  # per sample
    cut: str
    out_shape: Shape  # the cut tensor's, per sample
    nodes: tuple[onnx.NodeProto, ...]  # the nodes the cut needs, in graph order
    weights: dict[str, np.ndarray]  # float32 initialisers the kept nodes read
    constants: dict[str, np.ndarray]  # every other initialiser they read
    statistics: frozenset[str]  # BatchNormalization running statistics among `weights`
    normalizes: bool  # a dlc model: its graph normalises its raw input itself
    model: onnx.ModelProto  # the whole model at dlc's opset (the trainability check reads it)


def _per_sample(vi: onnx.ValueInfoProto | None) -> Shape | None:
    """The static per-sample dims of a [N, ...] tensor (None when any is unknown)."""
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = list(vi.type.tensor_type.shape.dim)[1:]
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _needed(graph: onnx.GraphProto, cut: str) -> list[onnx.NodeProto]:
    """The nodes `cut` depends on, in graph order."""
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    keep, stack = set(), [cut]
    while stack:
        k = producer.get(stack.pop())
        if k is not None and k not in keep:
            keep.add(k)
            stack.extend(i for i in graph.node[k].input if i)
    return [graph.node[k] for k in sorted(keep)]


def _read(path: str) -> onnx.ModelProto:
    model = read_model(path)
    try:
        model = to_pinned_opset(model, path)
        return onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DlcError(f"{path}: onnx cannot infer its shapes: {first}") from None


def _input(model: onnx.ModelProto, path: str) -> tuple[str, Shape]:
    weights = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in weights]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise DlcError(f"{path}: a base model takes one float32 input; this one takes "
                       f"{len(inputs)} ({', '.join(vi.name for vi in inputs)})")
    shape = _per_sample(inputs[0])
    if shape is None:
        raise DlcError(f"{path}: input '{inputs[0].name}' has no static per-sample shape")
    return inputs[0].name, shape


@lru_cache(maxsize=8)
def _load(path: str, cut: str | None, _version: tuple) -> BaseGraph:
    """The base at `path` cut at `cut` (default: its first output); `_version` (mtime, size)
    keys the cache, so an edited file is read again. DlcError (file) or KeyError (cut)."""
    model = _read(path)
    graph = model.graph
    name, in_shape = _input(model, path)
    cut = cut or (graph.output[0].name if graph.output else "")
    infos = {vi.name: vi for vi in [*graph.value_info, *graph.output]}
    if cut not in infos and cut not in {o for n in graph.node for o in n.output}:
        raise KeyError(cut)
    nodes = _needed(graph, cut)
    for node in nodes:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise DlcError(f"{path}: node {node.name or node.op_type} ({node.op_type}) holds a "
                           "subgraph; dlc copies no control flow into a model")
    out_shape = _per_sample(infos.get(cut))
    if out_shape is None:
        raise DlcError(f"{path}: the shape of '{cut}' per sample is not static, so no layer can "
                       "be placed on it")
    read = {i for n in nodes for i in n.input}
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in read}
    weights = {k: v for k, v in inits.items() if v.dtype == np.float32}
    stats = {n.input[i] for n in nodes for i in STATISTICS.get(n.op_type, ()) if i < len(n.input)}
    normalizes = any(p.key == "dlc.normalize" and p.value != "null" for p in model.metadata_props)
    return BaseGraph(path, name, in_shape, cut, out_shape, tuple(nodes), weights,
                     {k: v for k, v in inits.items() if k not in weights},
                     frozenset(stats & set(weights)), normalizes, model)


def load(path: Path, cut: str | None) -> BaseGraph:
    st = path.stat() if path.is_file() else None
    return _load(str(path), cut, (st.st_mtime_ns, st.st_size) if st else ())


def trainable(base: BaseGraph, setting) -> tuple[set[str], list[str]]:
    """(the initialisers that train, the patterns of `setting` that select none)."""
    names = [n for n in base.weights if n not in base.statistics]
    if setting in ("all", "none"):
        return (set(names) if setting == "all" else set()), []
    chosen = {n for n in names if any(matches(k, n) for k in setting)}
    return chosen, [k for k in setting if not any(matches(k, n) for n in names)]


@dataclass
class BaseLayer(Layer):
    """The base model as the network's first node: its parameters and its copied graph."""

    graph: BaseGraph | None = None
    train: frozenset[str] = frozenset()

    def output_shape(self, in_shape: Shape) -> Shape:
        return self.graph.out_shape

    def params(self, in_shape: Shape) -> list[Param]:
        return [Param(f"{NAME}.{k}", v.shape, lambda rng, shape, v=v: v.copy(), k in self.train)
                for k, v in self.graph.weights.items()]

    def lower(self, b, x: str, p: dict[str, str], ctx, in_shape: Shape) -> str:
        """Copy the kept nodes: the input is `x`, the weights are `p`'s tensors, every other
        name is a fresh one under this layer's scope (`base/...`)."""
        rename = {self.graph.input: x, **{k: p[f"{NAME}.{k}"] for k in self.graph.weights}}
        for k, v in self.graph.constants.items():
            rename[k] = b.const(v, name=k.strip("/"))
        return copy_nodes(b, self.graph.nodes, rename)[self.graph.cut]

    def flops(self, in_shape: Shape) -> int:
        return 0  # not counted: the summary's FLOPs are those of dlc's own layers


def resolve(spec) -> tuple[BaseLayer | None, list]:
    """The `base` node of a spec with a `base:` section, its path made absolute and its input
    filled in (spec.data is changed); or the diagnostics that refuse it."""
    cfg = spec.data["base"]
    path = Path(cfg["model"]).expanduser()
    path = path if path.is_absolute() else Path(spec.file).resolve().parent / path
    try:
        graph = load(path, cfg.get("cut"))
    except KeyError as e:
        return None, [spec.diag(("base", "cut"), f"'{e.args[0]}' is no tensor of {path}; "
                                                 "`dlc inspect` lists its outputs")]
    except DlcError as e:  # the path as written may hold control characters: escaped
        raise DlcError(one_line(f"base.model: {e}")) from None
    cfg["model"] = str(path.resolve())
    chosen, unused = trainable(graph, cfg["trainable"])  # the schema fills in "all"
    names = list(graph.weights)
    listed = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    diags = [spec.diag(("base", "trainable"), f"'{k}' selects no float initialiser of the base "
                       f"(they are: {listed or 'none'})") for k in unused]
    diags += _check_input(spec, graph) + _trainability(spec, graph, chosen)
    return BaseLayer(NAME, {"type": NAME, "name": NAME}, graph, frozenset(chosen)), diags


def _check_input(spec, graph: BaseGraph) -> list:
    data = spec.data
    if data.get("inputs"):
        return [spec.diag(("inputs",), "a spec with `base:` takes the base model's one input; "
                                       "leave out `inputs:`")]
    given = data.setdefault("input", {"shape": list(graph.in_shape)})
    if tuple(given["shape"]) != graph.in_shape or given.get("dtype", "float32") != "float32":
        return [spec.diag(("input",), f"the base model takes float32 {list(graph.in_shape)} "
                                      "per sample; leave out `input:` or write that")]
    if graph.normalizes and (data.get("data") or {}).get("normalize", "none") != "none":
        return [spec.diag(("data", "normalize"), "the base (a dlc model) normalises its raw "
                                                 "input itself; set data.normalize: none")]
    return []


def _trainability(spec, graph: BaseGraph, chosen: set[str]) -> list:
    """One diagnostic naming the ops without a VJP rule on the path from the trainable
    initialisers to the cut, then one per node (numbered so they stay in graph order)."""
    if not chosen:
        return []
    missing = missing_rules(graph.model, chosen, [graph.cut])
    if not missing:
        return []
    width = len(str(max(m.index for m in missing)))
    kinds = sorted({op_label(m.op_type, m.domain) for m in missing})
    head = spec.diag(("base",), f"{len(missing)} node(s) between the trainable initialisers and "
                                f"'{graph.cut}' have no gradient rule ({', '.join(kinds)}); "
                                "freeze the initialisers before them (trainable: a list) or cut "
                                "before them")

    def line(m) -> str:
        return (f"node {m.index:0{width}d} {m.name} ({op_label(m.op_type, m.domain)}): "
                f"{', '.join(m.inputs)} -> {', '.join(m.outputs)}")

    return [head] + [spec.diag(("base", "model"), line(m)) for m in missing]
