"""Activation functions: one lowering each, shared by activation layers and `activation:` shorthands."""

from __future__ import annotations

import math

from dlc.model.layers.base import Layer, Shape, numel
from dlc.model.layers.fields import Field, defaults, enum, number


def _gelu(b, x, cfg):
    if cfg["approximate"] == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = b.Mul(b.Mul(x, x), x)
        inner = b.Mul(b.Add(x, b.Mul(x3, b.const(0.044715))), b.const(math.sqrt(2 / math.pi)))
        return b.Mul(b.Mul(x, b.const(0.5)), b.Add(b.Tanh(inner), b.const(1.0)))
    erf = b.Erf(b.Mul(x, b.const(1 / math.sqrt(2))))  # exact: 0.5 x (1 + erf(x / sqrt 2))
    return b.Mul(b.Mul(x, b.const(0.5)), b.Add(erf, b.const(1.0)))


ACTIVATIONS = {
    "linear": lambda b, x, cfg: x,
    "relu": lambda b, x, cfg: b.Relu(x),
    "leaky_relu": lambda b, x, cfg: b.LeakyRelu(x, alpha=float(cfg["alpha"])),
    "elu": lambda b, x, cfg: b.Elu(x, alpha=float(cfg["alpha"])),
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
    """`fn` on x; its parameters (alpha, approximate) from `cfg`, else from its layer's defaults
    (`activation: leaky_relu` on a dense layer takes the leaky_relu layer's alpha)."""
    with b.scope(fn):
        return ACTIVATIONS[fn](b, x, {**defaults(LAYER_CLASSES[fn].fields), **(cfg or {})})


class Activation(Layer):
    """`{type: relu}` and friends: an activation function as a layer of its own."""
    schema_name = "activation"
    spec_doc = ("An activation layer without parameters (relu, selu, silu, sigmoid, tanh, softmax,"
                " softplus, linear).")
    type_doc = "Layer type: an activation applied element-wise."

    def flops(self, in_shape: Shape) -> int:
        return 0 if self.cfg["type"] == "linear" else numel(in_shape)

    def lower(self, b, x, p, ctx, in_shape):
        return apply(b, x, self.cfg["type"], self.cfg)


class LeakyReLU(Activation):
    schema_name = "leaky_relu"
    spec_doc = "Leaky ReLU activation layer."
    type_doc = "Layer type: leaky ReLU, max(x, alpha * x)."
    fields = (Field("alpha", "Slope for negative inputs.", number(minimum=0), default=0.01),)


class ELU(Activation):
    schema_name = "elu"
    spec_doc = "ELU activation layer."
    type_doc = "Layer type: ELU, x if x > 0 else alpha * (exp(x) - 1)."
    fields = (Field("alpha", "Scale of the negative part.", number(exclusiveMinimum=0),
                    default=1.0),)


class GELU(Activation):
    schema_name = "gelu"
    spec_doc = "GELU activation layer."
    type_doc = "Layer type: GELU."
    fields = (Field("approximate", "none: the exact erf form; tanh: the tanh approximation.",
                    enum("none", "tanh"), default="none"),)


_PARAMETRISED = {"leaky_relu": LeakyReLU, "elu": ELU, "gelu": GELU}  # those with fields
LAYER_CLASSES = {name: _PARAMETRISED.get(name, Activation) for name in ACTIVATIONS}
