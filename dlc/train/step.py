"""The train-step graph: forward, loss, dlc's own backward pass and the optimizer update, as one
standard ONNX model so that one onnxruntime `run` is one training step.

Inputs: x, y, lr (`LR`), step, the dropout noise tensors, `params` (every trainable parameter in
one flat vector), `state.<s>` (each optimizer state, flat alike), the buffers (running statistics)
and the frozen parameters (`trainable: false`: inputs by name, with no `.new` output).
Training features (dlc.train.features.registry) add their hooks: keep-masks, frozen inputs, lr scales, loss
terms and persistent tensors.
Outputs: loss, logits, grad_norm (before clipping), `params.new`, `state.<s>.new`, `<buffer>.new`.
The eval graph is the same forward and loss without dropout or update.

A model with several outputs (`outputs:`) takes `y.<output>` and returns `logits.<output>` and
`loss.<output>` for each; `loss` is then the sum of weight * loss over the outputs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import onnx

from dlc.autodiff import gradients
from dlc.graph import Builder
from dlc.model import losses
from dlc.model.compile import lower_body
from dlc.model.layers import Ctx, Shape
from dlc.model.layers.base import numel
from dlc.model.names import suffixed, x_names
from dlc.model.network import Head, Network
from dlc.train.features import registry as features
from dlc.train.optim import Optimizer
from dlc.train.options import TrainOptions


LR = "lr"  # the learning-rate input of the train step, fed each step by the Trainer


def target_spec(head: Head) -> tuple[str, list]:
    """dtype and shape of an output's `y` input."""
    if head.kind == "classification":  # [N], or [N, steps] for per-token (steps, classes) outputs
        return "int64", ["N", *head.shape[:-1]]
    return "float32", ["N", head.shape[0]]


@dataclass
class Step:
    model: onnx.ModelProto
    params: list[str]  # trainable parameters, in flat-vector order
    states: list[str]  # optimizer state names ("m", "v", ...): inputs `state.<s>`, each [total]
    fills: dict[str, float] = field(default_factory=dict)  # a state's start value, when not 0
    noise: list[tuple[str, Shape]] = field(default_factory=list)  # (input name, per-sample shape)
    layout: list[tuple[str, int, Shape]] = field(default_factory=list)  # (param, offset, shape)
    total: int = 0
    frozen: list[str] = field(default_factory=list)  # `trainable: false` parameters: plain inputs

    def pack(self, params: dict) -> np.ndarray:
        """The flat float32 vector of the trainable parameters."""
        return np.concatenate([np.asarray(params[n], np.float32).ravel()
                               for n, _, _ in self.layout]) if self.layout else np.zeros(0, np.float32)

    def unpack(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of `flat`, one per trainable parameter (no copies)."""
        return {n: flat[o:o + numel(s)].reshape(s) for n, o, s in self.layout}


def persistent_values(net: Network, step: Step, params: dict) -> dict[str, np.ndarray]:
    """What the train step carries from step to step, at the start of training: the flat
    parameters, each optimizer state at zero (or a feature's start value: train.prune's
    keep-mask at one) and the buffers."""
    return {"params": step.pack(params),
            **{f"state.{s}": np.full(step.total, step.fills.get(s, 0.0), np.float32)
               for s in step.states},
            **{p.name: params[p.name] for p in net.buffers}}


def flat_layout(net: Network) -> tuple[list[tuple[str, int, Shape]], int]:
    layout, offset = [], 0
    for p in net.params:
        if p.trainable:
            layout.append((p.name, offset, tuple(p.shape)))
            offset += numel(p.shape)
    return layout, offset


def y_feeds(yb) -> dict:
    """Target feeds: `y`, or `y.<output>` for each output of an `outputs:` model; class ids
    kept narrower (a table cache's uint8 codes) as the int64 the graph takes, per batch."""
    wide = lambda v: v.astype(np.int64, copy=False) if v.dtype.kind in "iu" else v  # noqa: E731
    if isinstance(yb, dict):
        return {suffixed("y", k): wide(v) for k, v in yb.items()}
    return {"y": wide(yb)}


def _model_inputs(b: Builder, net: Network) -> dict[str, str]:
    """Each model input's graph input, by model input name."""
    return {name: b.input(graph_name, net.inputs[name][1], ["N", *net.inputs[name][0]])
            for name, graph_name in x_names(net).items()}


def whole_batch(target: str) -> str:
    """The input of a data-parallel gradient graph that takes a target's values for the whole
    global batch (every worker is fed it), beside the worker's own rows in `target`."""
    return f"{target}.all"


def _forward_and_loss(b: Builder, net: Network, ctx: Ctx, xs: dict[str, str],
                      params: dict[str, str], split: bool = False):
    """Each output's logits, the loss (one task's, or the weighted sum over outputs, each
    output's own loss a graph output too) and the closed forms of the losses' gradients with
    respect to the logits (dlc.autodiff.gradients' `closed`). `split`: a data-parallel worker's
    gradient graph, whose class-weighted losses also take the whole batch's targets
    (`whole_batch`)."""
    logits = lower_body(b, net, xs, params, ctx)
    total, closed = None, {}
    for head in net.heads:
        name, (dtype, shape) = suffixed("y", head.name), target_spec(head)
        y = b.input(name, dtype, shape)
        y_all = b.input(whole_batch(name), dtype, ["N_all", *shape[1:]]) \
            if split and losses.weighted(head.task) else None
        with b.scope(head.name) if head.name else contextlib.nullcontext():
            stats = losses.target_stats(b, head)  # target_scaling: standard, else None
            target = losses.standardised(b, stats, y)
            loss = losses.loss(b, head.task, logits[head.name], target, head.shape[-1], y_all)
            form = losses.closed_gradient(b, head.task, logits[head.name], target,
                                          head.shape[-1])
            if form is not None:
                closed[loss] = (logits[head.name], form)
            logits[head.name] = losses.unscaled(b, stats, logits[head.name])
        if not head.name:
            return logits, loss, closed
        b.output(loss, suffixed("loss", head.name), "float32", [])
        term = b.Mul(loss, b.const(head.weight)) if head.weight != 1.0 else loss
        total = term if total is None else b.Add(total, term)
    return logits, total, closed


def _logits_outputs(b: Builder, net: Network, logits: dict[str, str]) -> None:
    for head in net.heads:
        b.output(logits[head.name], suffixed("logits", head.name), "float32",
                 ["N", *head.shape])


def build_eval_step(net: Network) -> Step:
    """Forward and loss in inference mode; every parameter a separate input."""
    b = Builder()
    params = {p.name: b.input(p.name, "float32", list(p.shape)) for p in net.params}
    logits, loss, _ = _forward_and_loss(b, net, Ctx(training=False), _model_inputs(b, net),
                                        params)
    b.output(loss, "loss", "float32", [])
    _logits_outputs(b, net, logits)
    return Step(b.model(f"{net.spec['name']}-eval"), list(params), [])


def _clip(b: Builder, g: str, clip_norm: float | None) -> tuple[str, str]:
    """Global norm of the flat gradient, and the gradient scaled so that norm <= clip_norm."""
    with b.scope("clip"):
        norm = b.Sqrt(b.ReduceSumSquare(g, keepdims=0))
        if not clip_norm:
            return g, norm
        scale = b.Min(b.const(1.0), b.Div(b.const(clip_norm), b.Add(norm, b.const(1e-6))))
        return b.Mul(g, scale), norm


def _unpack(b: Builder, flat: str, layout: list[tuple[str, int, Shape]]) -> dict[str, str]:
    """Views of the flat parameter vector, one per parameter, in its own shape: one Split (one
    kernel for every parameter; a Slice each was one kernel each) and Reshapes, which are free."""
    if not layout:
        return {}
    with b.scope("params"):
        parts = [flat] if len(layout) == 1 else b.Split(
            flat, b.const([numel(shape) for _, _, shape in layout]), outputs=len(layout), axis=0)
        return {name: b.Reshape(part, b.const(list(shape)))
                for (name, _, shape), part in zip(layout, parts)}


def _flat_gradient(b: Builder, loss: str, views: dict[str, str],
                   layout: list[tuple[str, int, Shape]], closed: dict, device: str) -> str:
    """d loss / d params as one flat vector in layout order (zeros where loss does not depend
    on a parameter), in the forms for `device`."""
    found = gradients(b, loss, list(views.values()), closed, device)
    with b.scope("grad"):
        parts = [b.Reshape(found[views[p]], b.const([-1])) if found[views[p]] else
                 b.const(np.zeros(numel(shape), np.float32)) for p, _, shape in layout]
        return b.Concat(*parts, axis=0) if len(parts) > 1 else parts[0]


def _masked(b: Builder, x: str, mask: str | None) -> str:
    """x * mask, or x unchanged without a keep-mask."""
    return x if mask is None else b.Mul(x, mask)


def _keep_mask(b: Builder, net: Network, feats: list, total: int) -> str | None:
    """The product of the features' keep-masks (None: no feature masks)."""
    mask = None
    for f in feats:
        m = f.keep_mask(b, net, total)
        if m is not None:
            mask = m if mask is None else b.Mul(mask, m)
    return mask


def _lr_scale(net: Network, feats: list, layout, total: int) -> np.ndarray | None:
    """The product of the features' per-element lr multipliers (None: none)."""
    scale = None
    for f in feats:
        s = f.lr_scale(net, layout, total)
        if s is not None:
            scale = s if scale is None else scale * s
    return scale


def _update(b: Builder, net: Network, opts: TrainOptions, feats: list, flat: str, g: str,
            mask: str | None, layout: list[tuple[str, int, Shape]]) -> tuple[str, dict[str, str]]:
    """The optimizer step on the flat vector (inputs lr, step and `state.<s>`): the new
    parameters (masked ones stay exactly zero) and each new state by name."""
    total = int(sum(numel(shape) for _, _, shape in layout))
    lr, step = b.input(LR, "float32", []), b.input("step", "float32", [])
    opt = Optimizer(b, opts.optimizer, lr, step, _lr_scale(net, feats, layout, total))
    state_in = {s: b.input(f"state.{s}", "float32", [total]) for s in opt.states}
    with b.scope("update"):
        w_new, state_new = opt.update(flat, g, state_in)
        return _masked(b, w_new, mask), {s: state_new[s] for s in opt.states}


@dataclass
class _Gradient:
    """What the gradient half of a train step leaves in its builder."""
    flat: str  # the `params` input
    mask: str | None  # the features' keep-mask
    grad: str  # the flat gradient, masked, not clipped
    loss: str
    logits: dict[str, str]
    updates: dict[str, str]  # buffer -> its new value (running statistics)
    shapes: dict[str, list]  # buffer -> shape
    noise: list[tuple[str, Shape]]
    frozen: list[str]


def _gradient_half(b: Builder, net: Network, feats: list, layout, total: int,
                   data_norm: dict | None, device: str, split: bool = False) -> _Gradient:
    """Inputs params, x, y, noise, buffers and frozen parameters; forward, loss (with the
    features' terms) and the flat gradient d loss / d params, lowered for `device` ("cpu",
    "cuda"). `split`: see _forward_and_loss."""
    noise: list[tuple[str, Shape]] = []

    def noise_input(layer: str, shape: Shape) -> str:
        noise.append((f"{layer}.noise", tuple(shape)))
        return b.input(f"{layer}.noise", "float32", ["N", *shape])

    flat = b.input("params", "float32", [total])
    mask = _keep_mask(b, net, feats, total)  # train.prune: the flat 0/1 keep-mask
    views = _unpack(b, _masked(b, flat, mask), layout)
    shapes = {p.name: list(p.shape) for p in net.buffers}
    buffers = {name: b.input(name, "float32", shape) for name, shape in shapes.items()}
    frozen = {k: v for f in feats for k, v in f.frozen_inputs(b, net).items()}
    xs = _model_inputs(b, net)
    ctx = Ctx(training=True, device=device, noise=noise_input)
    logits, loss, closed = _forward_and_loss(b, net, ctx, xs, {**views, **buffers, **frozen},
                                             split)
    for f in feats:  # train.distill: the teacher's term
        loss = f.loss(b, net, xs, logits, loss, data_norm)
    g = _flat_gradient(b, loss, views, layout, closed, device)
    g = _masked(b, g, mask)  # masked: no gradient
    return _Gradient(flat, mask, g, loss, logits, {n: ctx.updates.get(n, n) for n in buffers},
                     shapes, noise, list(frozen))


def _gradient_outputs(b: Builder, net: Network, half: _Gradient) -> None:
    b.output(half.loss, "loss", "float32", [])
    _logits_outputs(b, net, half.logits)
    for name, value in half.updates.items():  # running statistics: their update, or unchanged
        b.output(value, f"{name}.new", "float32", half.shapes[name])


def _update_half(b: Builder, net: Network, feats: list, flat: str, g: str, mask: str | None,
                 layout) -> tuple[list[str], dict[str, float]]:
    """Clipping of the flat gradient `g` and the optimizer update; outputs grad_norm,
    `params.new` and `state.<s>.new`. Returns the state names and the features' start values."""
    total, opts = int(sum(numel(shape) for _, _, shape in layout)), TrainOptions.of(net.spec)
    g, norm = _clip(b, g, opts.clip_norm)
    w_new, state_new = _update(b, net, opts, feats, flat, g, mask, layout)
    b.output(norm, "grad_norm", "float32", [])
    b.output(w_new, "params.new", "float32", [total])
    for s, value in state_new.items():
        b.output(value, f"state.{s}.new", "float32", [total])
    fills = {k: v for f in feats for k, v in f.persistent(b, total).items()}  # like states
    return [*state_new, *fills], fills


def _written_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each graph output that Builder.output renamed through an Identity written
    by its producing node instead. onnxruntime keeps such an Identity, a full copy per step,
    whenever the renamed tensor has other readers: the new Adam moments (read by the update too)
    and the logits (read by the loss)."""
    g = model.graph
    sources = {t.name for t in g.input} | {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    for node in g.node:
        if (node.op_type == "Identity" and node.output[0] in outputs
                and node.input[0] not in sources | outputs):
            rename.setdefault(node.input[0], node.output[0])
    kept = [n for n in g.node
            if not (n.op_type == "Identity" and rename.get(n.input[0]) == n.output[0])]
    for node in kept:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    del g.node[:]
    g.node.extend(kept)
    return model


def build_train_step(net: Network, data_norm: dict | None = None, device: str = "cpu") -> Step:
    """Trainable parameters and each optimizer state travel as one flat float32 vector each:
    the update is then ~12 elementwise ops in all, instead of ~12 per parameter.
    `data_norm`: the training data's normalisation (train.distill feeds the teacher raw input)."""
    b, feats = Builder(), features.active(net.spec, net)
    layout, total = flat_layout(net)
    half = _gradient_half(b, net, feats, layout, total, data_norm, device)
    _gradient_outputs(b, net, half)
    states, fills = _update_half(b, net, feats, half.flat, half.grad, half.mask, layout)
    model = _written_in_place(b.model(f"{net.spec['name']}-train"))
    return Step(model, [n for n, _, _ in layout], states, fills, half.noise, layout, total,
                half.frozen)


def build_split_step(net: Network, data_norm: dict | None = None,
                     device: str = "cpu") -> tuple[Step, Step]:
    """The train step as two graphs, for data-parallel training (dlc.distributed): the
    gradient graph (the fused step's inputs but lr, step and the states; outputs loss, logits,
    `grad` = the flat masked gradient, `<buffer>.new`) and the update graph (inputs `params`,
    `grad` (the gradient averaged over workers), lr, step, `state.<s>` and the keep-mask;
    outputs grad_norm, `params.new`, `state.<s>.new`). Between them the flat gradient is
    all-reduced; clipping sees the averaged gradient, as one process with the whole batch.
    A class-weighted loss also takes the whole batch's targets (`whole_batch`) for its
    normaliser.
    Run back to back on one process they give the fused step's result (tests/test_split_step)."""
    feats, (layout, total) = features.active(net.spec, net), flat_layout(net)
    params, name = [n for n, _, _ in layout], net.spec["name"]
    b = Builder()
    half = _gradient_half(b, net, feats, layout, total, data_norm, device, split=True)
    _gradient_outputs(b, net, half)
    b.output(half.grad, "grad", "float32", [total])
    grad = Step(_written_in_place(b.model(f"{name}-grad")), params, [], {}, half.noise, layout,
                total, half.frozen)
    u = Builder()
    flat, g = u.input("params", "float32", [total]), u.input("grad", "float32", [total])
    states, fills = _update_half(u, net, feats, flat, g, _keep_mask(u, net, feats, total), layout)
    update = _written_in_place(u.model(f"{name}-update"))
    return grad, Step(update, params, states, fills, [], layout, total)
