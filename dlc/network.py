"""From a validated spec to a network: layers, per-sample shapes, parameters, semantic checks.

The semantic pass runs every layer's shape rule in order and checks the output against the task;
each problem becomes a Diagnostic at the spec position it is about.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace

from dlc import imbalance
from dlc.errors import Diagnostic, SpecError
from dlc.layers import Layer, Param, Shape, ShapeError, build_layer

# The output activation each task kind implies. A spec may write it as its last layer (or as the
# last dense layer's activation); training then takes the loss from the logits before it.
HEAD = {"classification": "softmax", "binary": "sigmoid", "regression": None}
LOSSES = {"classification": {"cross_entropy"}, "binary": {"binary_cross_entropy"},
          "regression": {"mse", "mae", "huber"}}
METRICS = {"classification": {"accuracy", "precision", "recall", "f1"},
           "binary": {"accuracy", "precision", "recall", "f1"},
           "regression": {"mse", "mae", "r2"}}


# Limits that keep a valid spec compilable: every parameter is a float32 initializer inside one
# ONNX file, which protobuf caps at 2 GB; shapes become int64 ONNX dimensions and attributes.
MAX_PARAMS = 500_000_000
MAX_VALUES = 2 ** 31 - 1  # values per sample of a model input or of a layer's output


def spec_inputs(data: dict) -> dict[str, dict]:
    """The model's named inputs: `inputs:` as written, or the one `input:` under the name input."""
    return dict(data["inputs"]) if data.get("inputs") else {"input": data["input"]}


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
    output: str = ""  # the node whose output is the logits (the task's head stripped)
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
    def output_shape(self) -> Shape:
        return next((n.out_shape for n in self.nodes if n.name == self.output), self.input_shape)

    @property
    def kind(self) -> str:
        return self.spec["task"]["kind"]

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


def _order(spec, layers: list[Layer]) -> tuple[list[int], list[list[str]], list[Diagnostic]]:
    """Each layer's sources (default: the previous layer; the first input for the first layer)
    and a topological order; unknown names, cycles and wrong input counts as diagnostics."""
    names = {layer.name: i for i, layer in enumerate(layers)}
    model_inputs = list(spec_inputs(spec.data))
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
    # a layer that shares another's parameters is placed after it
    deps = [srcs + ([layers[i].cfg["share"]] if layers[i].cfg.get("share") in names else [])
            for i, srcs in enumerate(sources)]
    order, placed, pending = [], set(model_inputs), list(range(len(layers)))
    while pending:
        ready = [i for i in pending if all(s in placed for s in deps[i])]
        if not ready:
            cycle = ", ".join(layers[i].name for i in pending)
            return [], sources, [spec.diag(("layers", pending[0], "inputs"),
                                           f"the layers {cycle} form a cycle")]
        order.append(ready[0])
        placed.add(layers[ready[0]].name)
        pending.remove(ready[0])
    return order, sources, []


def _shared(spec, layers: list[Layer], i: int, params: list[Param], owners: dict) -> list[Param]:
    """Parameters of layer i when it has `share: other`: the owner's, checked for shape."""
    layer, other = layers[i], layers[i].cfg["share"]
    if other not in owners:
        return [spec.diag(("layers", i, "share"), f"share: no layer '{other}' with "
                                                  "parameters to share")]
    mine = [(p.name[len(layer.name) + 1:], p.shape) for p in params]
    theirs = [(p.name[len(other) + 1:], p.shape) for p in owners[other]]
    if mine != theirs:
        return [spec.diag(("layers", i, "share"), f"cannot share the parameters of '{other}': "
                                                  f"{theirs} here would need {mine}")]
    owner = next(x for x in layers if x.name == other)
    if layer.cfg.get("trainable", True) != owner.cfg.get("trainable", True):
        return [spec.diag(("layers", i, "trainable"), f"shares the parameters of '{other}', "
                          f"whose trainable is {str(owner.cfg.get('trainable', True)).lower()}; "
                          "set the same on both")]
    return []


def build_network(spec) -> Network:
    """Build and check the network of a loaded `Spec`; raise SpecError listing every problem."""
    data = spec.data
    if bool(data.get("input")) == bool(data.get("inputs")):
        raise SpecError([spec.diag((), "give exactly one of `input:` (one input) and `inputs:` "
                                       "(several named inputs)")])
    layers = [build_layer(cfg) for cfg in data["layers"]]
    order, sources, diags = _order(spec, layers)
    diags += _check_ids(spec, layers, sources)
    shapes: dict[str, Shape] = {n: tuple(c["shape"]) for n, c in spec_inputs(data).items()}
    for name, shape in shapes.items():
        if math.prod(shape) > MAX_VALUES:
            at = ("input", "shape") if data.get("input") else ("inputs", name, "shape")
            diags.append(spec.diag(at, f"{list(shape)} is {math.prod(shape):,} values per "
                                       f"sample; the limit is {MAX_VALUES:,}"))
            order = []
    nodes, params, owners, frozen = {}, [], {}, []
    for i in order:
        layer = layers[i]
        in_shapes = [shapes[s] for s in sources[i]]
        try:
            out = layer.output_shape(in_shapes if layer.multi else in_shapes[0])
            own = layer.params(in_shapes if layer.multi else in_shapes[0])
        except ShapeError as e:
            diags.append(spec.diag(("layers", i), f"{layer.cfg['type']} '{layer.name}': {e}"))
            break
        size = _too_big(layer, out, [] if layer.cfg.get("share") else own, params)
        if size:
            diags.append(spec.diag(("layers", i), size))
            break
        if layer.cfg.get("share"):
            diags += _shared(spec, layers, i, own, owners)
        else:
            if layer.cfg.get("trainable") is False:  # frozen (dlc.transfer): not in the flat vector
                frozen += [p.name for p in own if p.trainable]
                own = [replace(p, trainable=False) for p in own]
            params += own
            owners[layer.name] = own
        shapes[layer.name] = out
        nodes[i] = Node(layer, sources[i], in_shapes, out)
    last = len(layers) - 1
    diags += _check_task(spec, layers, shapes.get(layers[last].name) if not diags else None)
    if diags:
        raise SpecError(diags)
    ordered = [nodes[i] for i in order if i != last]
    head = _strip_head(nodes[last], data["task"]["kind"])
    graph = [*ordered, nodes[last]]
    if head is None:  # a trailing softmax/sigmoid layer: the logits are its input
        return Network(data, ordered, params, nodes[last].sources[0], graph, frozenset(frozen))
    return Network(data, [*ordered, head], params, head.name, graph, frozenset(frozen))


def _too_big(layer: Layer, out: Shape, own: list[Param], before: list[Param]) -> str:
    """Why the layer's output or parameters exceed the limits ("" when they do not)."""
    what = f"{layer.cfg['type']} '{layer.name}'"
    if math.prod(out) > MAX_VALUES:
        return (f"{what}: its output {list(out)} is {math.prod(out):,} values per sample; the "
                f"limit is {MAX_VALUES:,}")
    mine = sum(math.prod(p.shape) for p in own)
    total = mine + sum(math.prod(p.shape) for p in before)
    if total > MAX_PARAMS:
        upto = "" if mine > MAX_PARAMS else f" ({total:,} with the layers before it)"
        return (f"{what} has {mine:,} parameters{upto}; the limit is {MAX_PARAMS:,} per model "
                "(an ONNX file holds at most 2 GB)")
    return ""


def _check_ids(spec, layers: list[Layer], sources: list[list[str]]) -> list[Diagnostic]:
    """int64 model inputs hold ids: only id-taking layers (embedding) read them, and those read
    nothing else."""
    ints = {n for n, c in spec_inputs(spec.data).items() if c.get("dtype", "float32") == "int64"}
    diags = []
    for i, (layer, srcs) in enumerate(zip(layers, sources)):
        takes_ids = getattr(layer, "takes_ids", False)
        for src in srcs:
            if takes_ids and src not in ints:
                diags.append(spec.diag(("layers", i), f"{layer.cfg['type']} '{layer.name}' takes "
                                       f"int64 ids, but '{src}' is not an int64 model input"))
            elif not takes_ids and src in ints:
                diags.append(spec.diag(("layers", i), f"input '{src}' holds int64 ids; only an "
                                       f"embedding layer can take it, not {layer.cfg['type']}"))
    return diags


def _check_task(spec, layers: list[Layer], out: Shape | None) -> list[Diagnostic]:
    task, diags = spec.data["task"], []
    kind = task["kind"]
    if task["loss"] not in LOSSES[kind]:
        allowed = ", ".join(sorted(LOSSES[kind]))
        diags.append(spec.diag(("task", "loss"), f"loss '{task['loss']}' does not fit a {kind} "
                                                 f"task; use one of {allowed}"))
    for j, metric in enumerate(task["metrics"]):
        if metric not in METRICS[kind]:
            diags.append(spec.diag(("task", "metrics", j), f"metric '{metric}' does not fit a "
                                   f"{kind} task; use one of {', '.join(sorted(METRICS[kind]))}"))
    for i, layer in enumerate(layers):
        fn = layer.cfg["type"] if layer.cfg["type"] in ("softmax", "sigmoid") else layer.cfg.get("activation")
        last = i == len(layers) - 1
        if fn == "softmax" and (kind != "classification" or not last):
            where = "as the output of a " + kind + " task" if last else "before the last layer"
            diags.append(spec.diag(("layers", i), f"softmax {where}: the loss '{task['loss']}' "
                                   "expects unnormalised outputs; remove it"))
    if out is not None:
        diags += _check_output(spec, kind, out, len(layers) - 1)
    diags += imbalance.check(spec, kind, out)  # task.class_weights, data.sampling
    for name, cfg in spec_inputs(spec.data).items():
        feats, shape = cfg.get("features"), cfg["shape"]
        at = ("input",) if name == "input" and "input" in spec.data else ("inputs", name)
        if feats is not None and (len(shape) != 1 or len(feats) != shape[0]):
            diags.append(spec.diag((*at, "features"), f"{len(feats)} feature names for input "
                                   f"shape {shape}; give one name per feature of a flat input"))
    return diags


def _check_output(spec, kind: str, out: Shape, last: int) -> list[Diagnostic]:
    labels = spec.data["task"].get("labels")
    at = ("layers", last)
    per_token = kind == "classification" and len(out) == 2  # (steps, classes): y is [N, steps]
    if len(out) != 1 and not per_token:
        return [spec.diag(at, f"the model output has shape {list(out)}; a {kind} task needs a "
                              "flat output (add flatten and dense layers)")]
    units = out[-1]
    if kind == "classification" and units < 2:
        return [spec.diag(at, f"a classification task needs one output unit per class "
                              f"(at least 2), got {units}; use kind: binary for one unit")]
    if kind == "binary" and units != 1:
        return [spec.diag(at, f"a binary task needs 1 output unit, got {units}")]
    if kind == "classification" and labels is not None and len(labels) != units:
        return [spec.diag(("task", "labels"), f"{len(labels)} labels for {units} output units")]
    return []
