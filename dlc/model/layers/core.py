"""Feedforward layers: dense, dropout, flatten, reshape."""

from __future__ import annotations

from dlc.model.layers import activations
from dlc.model.layers.base import Layer, Param, Shape, ShapeError, numel
from dlc.model.layers.init import initializer


class Dense(Layer):
    """y = act(x W + b), W: [in, units], over the last axis (Keras' Dense).
    Input: (..., features). Output: (..., units)."""

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) > 2:
            raise ShapeError(f"dense takes (features,) or (steps, features), got shape "
                             f"{list(in_shape)}; add {{type: flatten}} before it")
        return (*in_shape[:-1], self.cfg["units"])

    def params(self, in_shape: Shape) -> list[Param]:
        fan_in, units = in_shape[-1], self.cfg["units"]
        init = self.cfg.get("initializer", "auto")
        if init == "auto":
            init = activations.AUTO_INIT.get(self.cfg.get("activation", "linear"), "glorot_uniform")
        params = [Param(f"{self.name}.weight", (fan_in, units), initializer(init))]
        if self.cfg.get("use_bias", True):
            params.append(Param(f"{self.name}.bias", (units,), initializer("zeros")))
        return params

    def flops(self, in_shape: Shape) -> int:
        act, rows = self.cfg.get("activation", "linear"), numel(in_shape[:-1])
        return rows * (2 * in_shape[-1] * self.cfg["units"]
                       + (0 if act == "linear" else self.cfg["units"]))

    def lower(self, b, x, p, ctx, in_shape):
        w, bias = p[f"{self.name}.weight"], p.get(f"{self.name}.bias")
        if len(in_shape) == 1:
            y = b.Gemm(x, w, bias)
        else:
            y = b.MatMul(x, w)
            y = b.Add(y, bias) if bias else y
        return activations.apply(b, y, self.cfg.get("activation", "linear"), self.cfg)


class Dropout(Layer):
    """Inverted dropout. Inference: identity. Training: x * (u >= rate) / (1 - rate), where u is a
    U[0,1) tensor fed by the train loop, so masks follow the run's seeded RNG and resume exactly."""

    def lower(self, b, x, p, ctx, in_shape):
        rate = float(self.cfg["rate"])
        if not ctx.training or rate == 0.0:
            return b.Identity(x)
        u = ctx.noise(self.name, in_shape)
        keep = b.Cast(b.GreaterOrEqual(u, b.const(rate)), to=b.float_code)
        return b.Mul(x, b.Mul(keep, b.const(1.0 / (1.0 - rate))))


class Flatten(Layer):
    def output_shape(self, in_shape: Shape) -> Shape:
        return (numel(in_shape),)

    def lower(self, b, x, p, ctx, in_shape):
        return b.Flatten(x, axis=1)


class Reshape(Layer):
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
