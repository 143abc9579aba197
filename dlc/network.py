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


def spec_heads(data: dict) -> dict[str, dict]:
    """The model's outputs, each a task (kind, loss, metrics, ...): `outputs:` as written, or
    the one `task:` under the empty name (its graph names then carry no output name)."""
    return dict(data["outputs"]) if data.get("outputs") else {"": data["task"]}


def head_path(name: str, *keys) -> tuple:
    """The spec path of a head's key: ("task", key) or ("outputs", name, key)."""
    return ("outputs", name, *keys) if name else ("task", *keys)


def suffixed(base: str, head: str) -> str:
    """A train/eval graph name of one head: `y`, `logits` for `task:`, `y.<head>` for outputs."""
    return f"{base}.{head}" if head else base


def column(split: str, head: str, metric: str) -> str:
    """A metrics.csv column: `val_accuracy`, or `val_<output>.accuracy` for `outputs:`."""
    return f"{split}_{head}.{metric}" if head else f"{split}_{metric}"


@dataclass(frozen=True)
class Head:
    """One output of the network: the node holding its logits (the task's activation stripped),
    their per-sample shape and the task (`outputs:` entries add layer, target and weight)."""

    name: str  # "" for a `task:` spec
    task: dict
    node: str
    shape: Shape
    # target_scaling: standard, once the training split is known: {"offset": [...], "scale": [...]}
    # per target column (dlc.losses.scale_targets)
    target_norm: dict | None = None

    @property
    def kind(self) -> str:
        return self.task["kind"]

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
            from dlc.errors import DlcError

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
    layer_of = _head_layers(spec, layers)  # output name -> index of the layer it reads
    diags += _check_task(spec, layers, layer_of, shapes if not diags else None)
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
    return Network(data, list(kept.values()), params, heads, [nodes[i] for i in order],
                   frozenset(frozen))


def _head_layers(spec, layers: list[Layer]) -> dict[str, int]:
    """Each output's layer index: the last layer for `task:`, the named one for `outputs:`
    (unknown names are reported by _check_task)."""
    if not spec.data.get("outputs"):
        return {"": len(layers) - 1}
    index = {layer.name: i for i, layer in enumerate(layers)}
    return {name: index.get(cfg["layer"], -1) for name, cfg in spec.data["outputs"].items()}


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


def _check_task(spec, layers: list[Layer], layer_of: dict[str, int],
                shapes: dict[str, Shape] | None) -> list[Diagnostic]:
    """Each output's loss, metrics, layer and shape against its kind; where softmax may stand.
    `layer_of`: output name -> its layer's index (-1: unknown); `shapes`: every built layer's
    output shape (None when earlier errors left them unknown)."""
    diags, heads = [], spec_heads(spec.data)
    for name, task in heads.items():
        kind, i = task["kind"], layer_of[name]
        if task["loss"] not in LOSSES[kind]:
            allowed = ", ".join(sorted(LOSSES[kind]))
            diags.append(spec.diag(head_path(name, "loss"), f"loss '{task['loss']}' does not "
                                   f"fit a {kind} task; use one of {allowed}"))
        for j, metric in enumerate(task["metrics"]):
            if metric not in METRICS[kind]:
                diags.append(spec.diag(head_path(name, "metrics", j), f"metric '{metric}' does "
                                       f"not fit a {kind} task; use one of "
                                       f"{', '.join(sorted(METRICS[kind]))}"))
        if task.get("target_scaling", "none") != "none" and kind != "regression":
            diags.append(spec.diag(head_path(name, "target_scaling"), "target scaling applies "
                                   f"to regression targets, not to a {kind} task"))
        out = shapes.get(layers[i].name) if shapes is not None and i >= 0 else None
        if i < 0:
            hint = difflib.get_close_matches(task["layer"], [x.name for x in layers], n=1)
            diags.append(spec.diag(head_path(name, "layer"), f"unknown layer '{task['layer']}'"
                                   + (f"; did you mean '{hint[0]}'?" if hint else "")))
        elif out is not None:
            diags += _check_output(spec, name, task, out, i)
        diags += imbalance.check(spec, name, task, out)  # class_weights, data.sampling
    readers: dict[int, str] = {}
    for name, i in layer_of.items():
        if i >= 0 and i in readers:
            diags.append(spec.diag(head_path(name, "layer"), f"outputs '{readers[i]}' and "
                                   f"'{name}' read the same layer; give each its own"))
        readers.setdefault(i, name)
    diags += _check_softmax(spec, layers, {i: heads[n]["kind"] for n, i in layer_of.items()})
    diags += _check_monitor(spec, heads)
    for name, cfg in spec_inputs(spec.data).items():
        feats, shape = cfg.get("features"), cfg["shape"]
        at = ("input",) if name == "input" and "input" in spec.data else ("inputs", name)
        if feats is not None and (len(shape) != 1 or len(feats) != shape[0]):
            diags.append(spec.diag((*at, "features"), f"{len(feats)} feature names for input "
                                   f"shape {shape}; give one name per feature of a flat input"))
    return diags


def _check_monitor(spec, heads: dict[str, dict]) -> list[Diagnostic]:
    """train.early_stopping.monitor must name a column that training reports."""
    es = (spec.data.get("train") or {}).get("early_stopping") or {}
    name = es.get("monitor", "val_loss")
    known = ["val_loss"] + [column("val", h, m) for h, task in heads.items()
                            for m in [*(["loss"] if h else []), *task["metrics"]]]
    if name in known:
        return []
    hint = difflib.get_close_matches(name, known, n=1)
    return [spec.diag(("train", "early_stopping", "monitor"), f"'{name}' is not reported; "
                      f"training reports {', '.join(known)}"
                      + (f"; did you mean '{hint[0]}'?" if hint else ""))]


def _check_softmax(spec, layers: list[Layer], kinds: dict[int, str]) -> list[Diagnostic]:
    """Softmax only as the activation of a classification output's layer, which nothing else
    reads (training takes the loss from the logits before it)."""
    diags, many = [], bool(spec.data.get("outputs"))
    read = {src for layer in layers for src in layer.cfg.get("inputs") or []}
    read |= {layers[i - 1].name for i in range(1, len(layers)) if not layers[i].cfg.get("inputs")}
    for i, layer in enumerate(layers):
        cfg = layer.cfg
        fn = cfg["type"] if cfg["type"] in ("softmax", "sigmoid") else cfg.get("activation")
        kind = kinds.get(i)
        if fn == "softmax" and kind != "classification":
            if many:
                where = f"in the layer of a {kind} output" if kind else \
                    "outside a classification output's layer"
                why = "the losses expect unnormalised outputs"
            else:
                where = f"as the output of a {kind} task" if kind else "before the last layer"
                why = f"the loss '{spec.data['task']['loss']}' expects unnormalised outputs"
            diags.append(spec.diag(("layers", i), f"softmax {where}: {why}; remove it"))
        elif many and kind and fn == HEAD[kind] and layer.name in read:
            diags.append(spec.diag(("layers", i), f"'{layer.name}' is an output's layer and "
                                   f"ends in {fn}, which training strips; other layers cannot "
                                   "read it (move the activation into a separate layer)"))
    return diags


def _check_output(spec, name: str, task: dict, out: Shape, i: int) -> list[Diagnostic]:
    kind, labels, at = task["kind"], task.get("labels"), ("layers", i)
    per_token = kind == "classification" and len(out) == 2  # (steps, classes): y is [N, steps]
    of = f"output '{name}': " if name else ""
    if len(out) != 1 and not per_token:
        return [spec.diag(at, f"{of or 'the model output '}has shape {list(out)}; a {kind} "
                              "task needs a flat output (add flatten and dense layers)")]
    units = out[-1]
    if kind == "classification" and units < 2:
        return [spec.diag(at, f"{of}a classification task needs one output unit per class "
                              f"(at least 2), got {units}; use kind: binary for one unit")]
    if kind == "binary" and units != 1:
        return [spec.diag(at, f"{of}a binary task needs 1 output unit, got {units}")]
    if kind == "classification" and labels is not None and len(labels) != units:
        return [spec.diag(head_path(name, "labels"), f"{len(labels)} labels for {units} output "
                                                     "units")]
    return []
