"""Feedforward layers: dense, dropout, flatten, reshape."""

from __future__ import annotations

from dlc.model.layers import activations
from dlc.model.layers.base import Layer, Param, Shape, ShapeError, numel
from dlc.model.layers.fields import (AUTO_INIT_DOC, INITIALIZERS, Field, boolean, enum, integer, number,
                               ref)
from dlc.model.layers.init import initializer


class Dense(Layer):
    """y = act(x W + b), W: [in, units], over the last axis (Keras' Dense).
    Input: (..., features). Output: (..., units)."""
    schema_name = "dense"
    spec_doc = "A fully connected (dense) layer over the last axis."
    type_doc = "Layer type: a fully connected layer, y = x W + b."
    fields = (
        Field("units", "Number of output units (the size of the last axis of the output).",
              integer(minimum=1), required=True),
        Field("activation", "Activation applied after the affine map (default linear: none).",
              ref("activationName"), default="linear"),
        Field("use_bias", "Whether to add a learned bias vector.", boolean(), default=True),
        Field("initializer", AUTO_INIT_DOC, enum(*INITIALIZERS), default="auto"),
    )

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) > 2:
            raise ShapeError(f"dense takes (features,) or (steps, features), got shape "
                             f"{list(in_shape)}; add {{type: flatten}} before it")
        return (*in_shape[:-1], self.cfg["units"])

    def params(self, in_shape: Shape) -> list[Param]:
        fan_in, units = in_shape[-1], self.cfg["units"]
        init = self.cfg["initializer"]
        if init == "auto":
            init = activations.AUTO_INIT.get(self.cfg["activation"], "glorot_uniform")
        params = [Param(f"{self.name}.weight", (fan_in, units), initializer(init))]
        if self.cfg["use_bias"]:
            params.append(Param(f"{self.name}.bias", (units,), initializer("zeros")))
        return params

    def flops(self, in_shape: Shape) -> int:
        act, rows = self.cfg["activation"], numel(in_shape[:-1])
        return rows * (2 * in_shape[-1] * self.cfg["units"]
                       + (0 if act == "linear" else self.cfg["units"]))

    def lower(self, b, x, p, ctx, in_shape):
        w, bias = p[f"{self.name}.weight"], p.get(f"{self.name}.bias")
        if len(in_shape) == 1:
            y = b.Gemm(x, w, bias)
        else:
            y = b.MatMul(x, w)
            y = b.Add(y, bias) if bias else y
        return activations.apply(b, y, self.cfg["activation"], self.cfg)


class Dropout(Layer):
    """Inverted dropout. Inference: identity. Training: x * (u >= rate) / (1 - rate), where u is a
    U[0,1) tensor fed by the train loop, so masks follow the run's seeded RNG and resume exactly."""
    schema_name = "dropout"
    spec_doc = ("Dropout: zeroes each element with probability `rate` during training and rescales"
                " the rest.")
    type_doc = "Layer type: dropout (identity at inference)."
    fields = (
        Field("rate", "Probability of dropping an element, 0 <= rate < 1.",
              number(minimum=0, exclusiveMaximum=1), required=True),
    )

    def lower(self, b, x, p, ctx, in_shape):
        rate = float(self.cfg["rate"])
        if not ctx.training or rate == 0.0:
            return b.Identity(x)
        u = ctx.noise(self.name, in_shape)
        keep = b.Cast(b.GreaterOrEqual(u, b.const(rate)), to=b.float_code)
        return b.Mul(x, b.Mul(keep, b.const(1.0 / (1.0 - rate))))


class Flatten(Layer):
    schema_name = "flatten"
    spec_doc = "Flattens the per-sample shape to one axis (the batch axis is kept)."
    type_doc = "Layer type: flatten every per-sample axis into one."

    def output_shape(self, in_shape: Shape) -> Shape:
        return (numel(in_shape),)

    def lower(self, b, x, p, ctx, in_shape):
        return b.Flatten(x, axis=1)


class Reshape(Layer):
    schema_name = "reshape"
    spec_doc = "Reshapes each sample to `shape` (the batch axis is kept)."
    type_doc = "Layer type: reshape each sample."
    fields = (
        Field("shape", "Per-sample target shape: integers >= 1, at most one -1 (inferred).",
              {"type": "array", "minItems": 1,
               "x-message": "expected a non-empty list of integers ≥ 1 with at most one -1",
               "items": {"type": "integer", "minimum": -1, "not": {"const": 0},
                         "description": "A dimension: an integer >= 1, or -1 to infer it.",
                         "x-message": "expected an integer ≥ 1 or -1"},
               "contains": {"const": -1}, "minContains": 0, "maxContains": 1}, required=True),
    )

    def output_shape(self, in_shape: Shape) -> Shape:
        target = list(self.cfg["shape"])
        n = numel(in_shape)
        if target.count(-1) > 1:
            raise ShapeError("at most one -1 is allowed in reshape.shape")
        if -1 in target:
            known = numel(tuple(d for d in target if d != -1))
            if n % known:
                raise ShapeError(f"cannot reshape {list(in_shape)} ({n} values) to {target}")
            target[target.index(-1)] = n // known
        if numel(tuple(target)) != n:
            raise ShapeError(f"cannot reshape {list(in_shape)} ({n} values) to "
                             f"{list(self.cfg['shape'])} ({numel(tuple(target))} values)")
        return tuple(target)

    def lower(self, b, x, p, ctx, in_shape):
        return b.Reshape(x, b.const([-1, *self.output_shape(in_shape)]))
