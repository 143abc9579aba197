"""Activation functions: one lowering each, shared by activation layers and `activation:` shorthands."""

from __future__ import annotations

import math

from dlc.model.layers.base import Layer, Shape, numel


def _gelu(b, x, cfg):
    if cfg.get("approximate", "none") == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = b.Mul(b.Mul(x, x), x)
        inner = b.Mul(b.Add(x, b.Mul(x3, b.const(0.044715))), b.const(math.sqrt(2 / math.pi)))
        return b.Mul(b.Mul(x, b.const(0.5)), b.Add(b.Tanh(inner), b.const(1.0)))
    erf = b.Erf(b.Mul(x, b.const(1 / math.sqrt(2))))  # exact: 0.5 x (1 + erf(x / sqrt 2))
    return b.Mul(b.Mul(x, b.const(0.5)), b.Add(erf, b.const(1.0)))


ACTIVATIONS = {
    "linear": lambda b, x, cfg: x,
    "relu": lambda b, x, cfg: b.Relu(x),
    "leaky_relu": lambda b, x, cfg: b.LeakyRelu(x, alpha=float(cfg.get("alpha", 0.01))),
    "elu": lambda b, x, cfg: b.Elu(x, alpha=float(cfg.get("alpha", 1.0))),
    "selu": lambda b, x, cfg: b.Selu(x),
    "gelu": _gelu,
    "silu": lambda b, x, cfg: b.Mul(x, b.Sigmoid(x)),
    "sigmoid": lambda b, x, cfg: b.Sigmoid(x),
    "tanh": lambda b, x, cfg: b.Tanh(x),
    "softmax": lambda b, x, cfg: b.Softmax(x, axis=-1),
    "softplus": lambda b, x, cfg: b.Softplus(x),
}

# Weight initialiser chosen by `initializer: auto`, by the activation that follows the weights.
AUTO_INIT = {"relu": "he_uniform", "leaky_relu": "he_uniform", "elu": "he_uniform",
             "gelu": "he_uniform", "silu": "he_uniform", "selu": "lecun_normal"}


def apply(b, x: str, fn: str, cfg: dict | None = None) -> str:
    with b.scope(fn):
        return ACTIVATIONS[fn](b, x, cfg or {})


class Activation(Layer):
    """`{type: relu}` and friends: an activation function as a layer of its own."""

    def flops(self, in_shape: Shape) -> int:
        return 0 if self.cfg["type"] == "linear" else numel(in_shape)

    def lower(self, b, x, p, ctx, in_shape):
        return apply(b, x, self.cfg["type"], self.cfg)
