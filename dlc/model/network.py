"""From a validated spec to a network: layers, per-sample shapes, parameters, outputs.

The semantic pass runs every layer's shape rule in order, then the checks of
dlc.model.semantics (ids, outputs against their tasks, softmax, monitor); each problem becomes a
Diagnostic at the spec position it is about, and build_network raises them all at once.
"""

from __future__ import annotations

import difflib
import heapq
import math
from dataclasses import dataclass, field, replace

from dlc.errors import Diagnostic, DlcError, SpecError
from dlc.model import semantics
from dlc.model.layers import Layer, Param, Shape, ShapeError, build_layer
from dlc.model.names import HEAD, class_count, spec_heads, spec_inputs

# Limits that keep a valid spec compilable: every parameter is a float32 initializer inside one
# ONNX file, which protobuf caps at 2 GB; shapes become int64 ONNX dimensions and attributes.
MAX_PARAMS = 500_000_000
MAX_VALUES = 2 ** 31 - 1  # values per sample of a model input or of a layer's output


@dataclass(frozen=True)
class Head:
    """One output of the network: the node holding its logits (the task's activation stripped),
    their per-sample shape and the task (`outputs:` entries add layer, target and weight)."""

    name: str  # "" for a `task:` spec
    task: dict
    node: str
    shape: Shape
    # target_scaling: standard, once the training split is known: {"offset": [...], "scale": [...]}
    # per target column (dlc.model.losses.scale_targets)
    target_norm: dict | None = None

    @property
    def kind(self) -> str:
        return self.task["kind"]

    @property
    def classes(self) -> int:
        """Classes of a classification or binary output (see class_count)."""
        return class_count(self.kind, self.shape[-1])

    @property
    def weight(self) -> float:
        return float(self.task.get("weight", 1.0))

    def targets(self, y):
        """This head's targets in a split's y (a mapping by output name for `outputs:`)."""
        return y[self.name] if self.name else y


@dataclass
class Node:
    """One layer in the graph: where its inputs come from and the shapes it sees."""

    layer: Layer
    sources: list[str]  # "input" or names of earlier layers
    in_shapes: list[Shape]
    out_shape: Shape

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass
class Network:
    spec: dict
    nodes: list[Node]  # topological order
    params: list[Param]  # each parameter once (shared layers use their owner's)
    heads: list[Head] = field(default_factory=list)  # the outputs, in spec order
    graph: list[Node] = field(default_factory=list)  # every spec layer, unstripped (summary)
    # parameters of `trainable: false` layers: trainable=False here, like buffers, but constant
    frozen: frozenset[str] = frozenset()

    @property
    def buffers(self) -> list[Param]:
        """Running statistics: not differentiated, updated by the train graph itself."""
        return [p for p in self.params if not p.trainable and p.name not in self.frozen]

    @property
    def inputs(self) -> dict[str, tuple[Shape, str]]:
        """name -> (per-sample shape, dtype), in spec order."""
        return {name: (tuple(cfg["shape"]), cfg.get("dtype", "float32"))
                for name, cfg in spec_inputs(self.spec).items()}

    @property
    def input_shape(self) -> Shape:  # the first (for single-input models: the) input's
        return next(iter(self.inputs.values()))[0]

    @property
    def input_dtype(self) -> str:
        return next(iter(self.inputs.values()))[1]

    @property
    def head(self) -> Head:
        """The one output of a `task:` model; a clear error for code that handles only those."""
        if len(self.heads) != 1 or self.heads[0].name:
            raise DlcError("this works on models with one output (`task:`); this one has "
                           f"outputs: {', '.join(h.name for h in self.heads)}")
        return self.heads[0]

    @property
    def output(self) -> str:  # the node whose output is the logits
        return self.head.node

    @property
    def output_shape(self) -> Shape:
        return self.head.shape

    @property
    def kind(self) -> str:
        return self.head.kind

    def init_params(self, seed: int) -> dict:
        """Seeded initial values: parameter i draws from its own stream (seed, i)."""
        import numpy as np

        return {p.name: p.init(np.random.default_rng([seed, i]), p.shape)
                for i, p in enumerate(self.params)}


def _strip_head(node: Node, kind: str) -> Node | None:
    """The output node without the activation the task implies (None: drop the node)."""
    head, cfg = HEAD[kind], node.layer.cfg
    if head is None:
        return node
    if cfg["type"] == head:
        return None
    if cfg.get("activation") == head:
        return replace(node, layer=replace(node.layer, cfg={**cfg, "activation": "linear"}))
    return node


def _order(spec, layers: list[Layer],
           model_inputs: list[str]) -> tuple[list[int], list[list[str]], list[Diagnostic]]:
    """Each layer's sources (default: the previous layer; the first of `model_inputs` (the
    model's inputs, or the base) for the first layer) and a topological order; unknown names,
    cycles and wrong input counts as diagnostics."""
    names = {layer.name: i for i, layer in enumerate(layers)}
    sources, diags = [], []
    for i, layer in enumerate(layers):
        given = layer.cfg.get("inputs")
        srcs = list(given) if given else [model_inputs[0] if i == 0 else layers[i - 1].name]
        for j, src in enumerate(srcs):
            if src not in model_inputs and src not in names:
                hint = difflib.get_close_matches(src, [*model_inputs, *names], n=1)
                diags.append(spec.diag(("layers", i, "inputs", j), f"unknown layer '{src}'"
                                       + (f"; did you mean '{hint[0]}'?" if hint else "")))
            elif src == layer.name:
                diags.append(spec.diag(("layers", i, "inputs", j), "a layer cannot take itself"))
        if len(srcs) > 1 and not layer.multi:
            diags.append(spec.diag(("layers", i, "inputs"), f"{layer.cfg['type']} takes one "
                                   f"input, got {len(srcs)}; merge them first (add, concat, ...)"))
        sources.append(srcs)
    if diags:
        return [], sources, diags
    order = _topological(layers, sources, names, set(model_inputs))
    if len(order) < len(layers):
        pending = sorted(set(range(len(layers))) - set(order))
        cycle = ", ".join(layers[i].name for i in pending)
        return [], sources, [spec.diag(("layers", pending[0], "inputs"),
                                       f"the layers {cycle} form a cycle")]
    return order, sources, []


def _topological(layers: list[Layer], sources: list[list[str]], names: dict[str, int],
                 model_inputs: set[str]) -> list[int]:
    """Kahn's algorithm, always placing the lowest-numbered ready layer (so a spec already in
    order keeps its order); a layer with `share: other` is placed after `other`. Layers on a
    cycle are left out. Linear in layers + edges (a min-heap of the ready ones)."""
    waiting, users = [], [[] for _ in layers]
    for i, srcs in enumerate(sources):
        deps = set(srcs) | ({layers[i].cfg["share"]} if layers[i].cfg.get("share") in names
                            else set())
        deps -= model_inputs
        for d in deps:
            users[names[d]].append(i)
        waiting.append(len(deps))
    ready = [i for i, n in enumerate(waiting) if n == 0]
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    return order


def _shared(spec, layers: list[Layer], i: int, params: list[Param], owners: dict) -> list[Param]:
    """Parameters of layer i when it has `share: other`: the owner's, checked for shape."""
    layer, other = layers[i], layers[i].cfg["share"]
    if other not in owners:
        return [spec.diag(("layers", i, "share"), f"share: no layer '{other}' with "
                                                  "parameters to share")]
    mine = [(p.name[len(layer.name) + 1:], p.shape) for p in params]
    owner, owned = owners[other]
    theirs = [(p.name[len(other) + 1:], p.shape) for p in owned]
    if mine != theirs:
        return [spec.diag(("layers", i, "share"), f"cannot share the parameters of '{other}': "
                                                  f"{theirs} here would need {mine}")]
    if layer.cfg.get("trainable", True) != owner.cfg.get("trainable", True):
        return [spec.diag(("layers", i, "trainable"), f"shares the parameters of '{other}', "
                          f"whose trainable is {str(owner.cfg.get('trainable', True)).lower()}; "
                          "set the same on both")]
    return []


def build_network(spec) -> Network:
    """Build and check the network of a loaded `Spec`; raise SpecError listing every problem."""
    data = spec.data
    base = _base(spec)
    if bool(data.get("input")) == bool(data.get("inputs")):
        raise SpecError([spec.diag((), "give exactly one of `input:` (one input) and `inputs:` "
                                       "(several named inputs)")])
    layers = [build_layer(cfg) for cfg in data["layers"]]
    shapes: dict[str, Shape] = {n: tuple(c["shape"]) for n, c in spec_inputs(data).items()}
    order, sources, diags = _order(spec, layers, [base.name] if base else list(shapes))
    diags += semantics.check_ids(spec, layers, sources) + semantics.check_missing(spec) + \
        semantics.check_columns(spec)
    for name, shape in shapes.items():
        if math.prod(shape) > MAX_VALUES:
            at = ("input", "shape") if data.get("input") else ("inputs", name, "shape")
            diags.append(spec.diag(at, f"{list(shape)} is {math.prod(shape):,} values per "
                                       f"sample; the limit is {MAX_VALUES:,}"))
            order = []
    first = _base_node(base, shapes) if base else None
    nodes, params, frozen = _build_nodes(spec, layers, order, sources, shapes, diags)
    layer_of = _head_layers(spec, layers)  # output name -> index of the layer it reads
    diags += semantics.check_task(spec, layers, layer_of, shapes if not diags else None)
    if diags:
        raise SpecError(diags)
    kept, heads = {i: nodes[i] for i in order}, []
    for name, task in spec_heads(data).items():
        i = layer_of[name]
        head = _strip_head(nodes[i], task["kind"])
        if head is None:  # a trailing softmax/sigmoid layer: the logits are its input
            del kept[i]
            source = nodes[i].sources[0]
            heads.append(Head(name, task, source, shapes[source]))
        else:
            kept[i] = head
            heads.append(Head(name, task, head.name, head.out_shape))
    before, own = ([first], first.layer.params(first.in_shapes[0])) if first else ([], [])
    return Network(data, before + list(kept.values()), own + params, heads,
                   before + [nodes[i] for i in order],
                   frozenset(frozen + [p.name for p in own if not p.trainable]))


def _base(spec) -> Layer | None:
    """The `base:` model as a layer (None without one); its diagnostics raised here, since
    the layers' shapes depend on it. Its module (onnx, numpy) loads only for such specs."""
    if not spec.data.get("base"):
        return None
    from dlc.model import base

    layer, diags = base.resolve(spec)
    if diags:
        raise SpecError(diags)
    return layer


def _base_node(base: Layer, shapes: dict[str, Shape]) -> Node:
    """The base's node, reading the model input; `shapes` gains its output, which the first
    layer reads."""
    (name, shape), = shapes.items()
    shapes[base.name] = base.output_shape(shape)
    return Node(base, [name], [shape], shapes[base.name])


def _build_nodes(spec, layers: list[Layer], order: list[int], sources: list[list[str]],
                 shapes: dict[str, Shape], diags: list[Diagnostic]):
    """Each layer's shapes and parameters in topological order, until the first layer that
    fails (its diagnostic appended to `diags`); `shapes` gains every built layer's output.
    Returns (nodes by layer index, parameters, frozen parameter names)."""
    nodes, params, owners, frozen, total = {}, [], {}, [], 0
    for i in order:
        layer = layers[i]
        in_shapes = [shapes[s] for s in sources[i]]
        try:
            out = layer.output_shape(in_shapes if layer.multi else in_shapes[0])
            own = layer.params(in_shapes if layer.multi else in_shapes[0])
        except ShapeError as e:
            diags.append(spec.diag(("layers", i), f"{layer.cfg['type']} '{layer.name}': {e}"))
            break
        mine = 0 if layer.cfg.get("share") else sum(math.prod(p.shape) for p in own)
        size = _too_big(layer, out, mine, total)
        if size:
            diags.append(spec.diag(("layers", i), size))
            break
        total += mine
        if layer.cfg.get("share"):
            diags += _shared(spec, layers, i, own, owners)
        else:
            if layer.cfg.get("trainable") is False:  # frozen (finetune): not in the flat vector
                frozen += [p.name for p in own if p.trainable]
                own = [replace(p, trainable=False) for p in own]
            params += own
            owners[layer.name] = (layer, own)
        shapes[layer.name] = out
        nodes[i] = Node(layer, sources[i], in_shapes, out)
    return nodes, params, frozen


def _head_layers(spec, layers: list[Layer]) -> dict[str, int]:
    """Each output's layer index: the last layer for `task:`, the named one for `outputs:`
    (unknown names are reported by _check_task)."""
    if not spec.data.get("outputs"):
        return {"": len(layers) - 1}
    index = {layer.name: i for i, layer in enumerate(layers)}
    return {name: index.get(cfg["layer"], -1) for name, cfg in spec.data["outputs"].items()}


def _too_big(layer: Layer, out: Shape, mine: int, before: int) -> str:
    """Why the layer's output or parameters (`mine` values; `before` in the layers placed
    before it) exceed the limits ("" when they do not)."""
    what = f"{layer.cfg['type']} '{layer.name}'"
    if math.prod(out) > MAX_VALUES:
        return (f"{what}: its output {list(out)} is {math.prod(out):,} values per sample; the "
                f"limit is {MAX_VALUES:,}")
    total = mine + before
    if total > MAX_PARAMS:
        upto = "" if mine > MAX_PARAMS else f" ({total:,} with the layers before it)"
        return (f"{what} has {mine:,} parameters{upto}; the limit is {MAX_PARAMS:,} per model "
                "(an ONNX file holds at most 2 GB)")
    return ""
