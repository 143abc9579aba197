"""The train-step graph: forward, loss, dlc's own backward pass and the optimizer update, as one
standard ONNX model so that one onnxruntime `run` is one training step.

Inputs: x, y, lr, step, the dropout noise tensors, every parameter and optimizer state.
Outputs: loss, logits, grad_norm (before clipping), then `<param>.new` and `<param>.<state>.new`.
The eval graph is the same forward and loss without dropout or update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from dlc import losses
from dlc.autodiff import gradients
from dlc.compile import lower_body
from dlc.graph import Builder
from dlc.layers import Ctx, Shape
from dlc.network import Network
from dlc.optim import Optimizer


def target_spec(net: Network) -> tuple[str, list]:
    """dtype and shape of the `y` input for the network's task."""
    if net.kind == "classification":
        return "int64", ["N"]
    return "float32", ["N", net.output_shape[0]]


@dataclass
class Step:
    model: onnx.ModelProto
    params: list[str]
    states: list[str]  # "<param>.<state>"
    noise: list[tuple[str, Shape]] = field(default_factory=list)  # (input name, per-sample shape)


def _forward_and_loss(b: Builder, net: Network, ctx: Ctx) -> tuple[str, str, dict[str, str]]:
    x = b.input("x", "float32", ["N", *net.input_shape])
    y = b.input("y", *target_spec(net))
    params = {p.name: b.input(p.name, "float32", list(p.shape)) for p in net.params}
    logits = lower_body(b, net, x, params, ctx)
    loss = losses.loss(b, net.spec["task"], logits, y, net.output_shape[0])
    return logits, loss, params


def build_eval_step(net: Network) -> Step:
    b = Builder()
    logits, loss, params = _forward_and_loss(b, net, Ctx(training=False))
    b.output(loss, "loss", "float32", [])
    b.output(logits, "logits", "float32", ["N", net.output_shape[0]])
    return Step(b.model(f"{net.spec['name']}-eval"), list(params), [])


def _clip(b: Builder, grads: list[str], clip_norm: float | None) -> tuple[list[str], str]:
    """Global gradient norm, and the gradients scaled so that norm <= clip_norm."""
    with b.scope("clip"):
        squares = [b.ReduceSum(b.Mul(g, g), keepdims=0) for g in grads]
        norm = b.Sqrt(b.Sum(*squares))
        if not clip_norm:
            return grads, norm
        scale = b.Min(b.const(1.0), b.Div(b.const(clip_norm), b.Add(norm, b.const(1e-6))))
        return [b.Mul(g, scale) for g in grads], norm


def build_train_step(net: Network) -> Step:
    b = Builder()
    noise: list[tuple[str, Shape]] = []

    def noise_input(layer: str, shape: Shape) -> str:
        noise.append((f"{layer}.noise", tuple(shape)))
        return b.input(f"{layer}.noise", "float32", ["N", *shape])

    ctx = Ctx(training=True, noise=noise_input)
    logits, loss, params = _forward_and_loss(b, net, ctx)
    lr, step = b.input("lr", "float32", []), b.input("step", "float32", [])
    trainable = [p.name for p in net.params if p.trainable]
    found = gradients(b, loss, trainable)
    shapes = {p.name: p.shape for p in net.params}
    grads = [found[p] or b.const(np.zeros(shapes[p], np.float32)) for p in trainable]
    train = net.spec.get("train", {})
    grads, norm = _clip(b, grads, train.get("clip_norm"))
    opt = Optimizer(b, train.get("optimizer", {"type": "adam", "lr": 1e-3}), lr, step)
    b.output(loss, "loss", "float32", [])
    b.output(logits, "logits", "float32", ["N", net.output_shape[0]])
    b.output(norm, "grad_norm", "float32", [])
    for p in net.params:  # buffers: their in-graph update, or unchanged
        if not p.trainable:
            b.output(ctx.updates.get(p.name, p.name), f"{p.name}.new", "float32", list(p.shape))
    states = []
    for p, g in zip(trainable, grads):
        state_in = {s: b.input(f"{p}.{s}", "float32", list(shapes[p])) for s in opt.states}
        with b.scope(f"{p}.update"):
            w_new, state_new = opt.update(p, g, state_in)
        b.output(w_new, f"{p}.new", "float32", list(shapes[p]))
        for s in opt.states:
            b.output(state_new[s], f"{p}.{s}.new", "float32", list(shapes[p]))
            states.append(f"{p}.{s}")
    return Step(b.model(f"{net.spec['name']}-train"), trainable, states, noise)
