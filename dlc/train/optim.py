"""Optimizers as in-graph elementwise updates, with torch.optim's semantics.

The learning rate and the step count t (1-based) are graph inputs, so schedules live in Python and
bias correction needs no new graph. Each optimizer names its per-parameter state tensors.
`scale` (train.optimizer.lr_scale): per-element lr multipliers of the flat vector, one Mul.
`weight_decay` is L2 (added to the gradient) except for adamw, where it is decoupled.
"""

from __future__ import annotations

from dlc.graph import Builder
from dlc.train.options import OptimizerConfig

STATES = {"sgd": [], "momentum": ["velocity"], "nesterov": ["velocity"], "adam": ["m", "v"],
          "adamw": ["m", "v"], "rmsprop": ["square_avg"]}


class Optimizer:
    def __init__(self, b: Builder, cfg: OptimizerConfig, lr: str, step: str, scale=None):
        self.b, self.cfg, self.lr, self.step = b, cfg, lr, step
        if scale is not None:  # lr_scale: one multiplier per flat element, so the lr is a vector
            with b.scope("optimizer"):
                self.lr = b.Mul(lr, b.const(scale, name="lr_scale"))
        self.kind = cfg.type
        self.states = STATES[self.kind]
        self._scalars: dict[str, str] = {}

    def _scalar(self, key: str, make) -> str:
        """Per-step scalars (bias corrections) computed once and shared by every parameter."""
        if key not in self._scalars:
            with self.b.scope("optimizer"):
                self._scalars[key] = make()
        return self._scalars[key]

    def _bias_correction(self, beta: float) -> str:  # 1 - beta^t
        b = self.b
        return self._scalar(f"bc{beta}", lambda: b.Sub(b.const(1.0),
                                                        b.Pow(b.const(beta), self.step)))

    def update(self, w: str, g: str, state: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Emit one update of parameter `w` with gradient `g`; return (new w, new states)."""
        b, c = self.b, self.cfg
        wd = float(c.weight_decay)
        if wd and self.kind != "adamw":
            g = b.Add(g, b.Mul(w, b.const(wd)))
        return getattr(self, "_" + self.kind)(b, c, w, g, state, wd)

    def _ema(self, s: str, x: str, beta: float) -> str:  # beta s + (1 - beta) x
        b = self.b
        return b.Add(b.Mul(s, b.const(beta)), b.Mul(x, b.const(1.0 - beta)))

    def _sgd(self, b, c, w, g, state, wd):
        return b.Sub(w, b.Mul(g, self.lr)), {}

    def _momentum(self, b, c, w, g, state, wd, nesterov=False):
        mu = b.const(float(c.momentum))
        v = b.Add(b.Mul(state["velocity"], mu), g)
        direction = b.Add(g, b.Mul(v, mu)) if nesterov else v
        return b.Sub(w, b.Mul(direction, self.lr)), {"velocity": v}

    def _nesterov(self, b, c, w, g, state, wd):
        return self._momentum(b, c, w, g, state, wd, nesterov=True)

    def _adam(self, b, c, w, g, state, wd):
        beta1, beta2 = float(c.beta1), float(c.beta2)
        m = self._ema(state["m"], g, beta1)
        v = self._ema(state["v"], b.Mul(g, g), beta2)
        # lr m/bc1 / (sqrt(v/bc2) + eps) = [lr sqrt(bc2)/bc1] m / (sqrt(v) + eps sqrt(bc2)): the
        # bias corrections fold into per-step scalars, one pass over the vector fewer than
        # torch's order of operations (equal up to float rounding)
        root_bc2 = self._scalar("adam_rbc2", lambda: b.Sqrt(self._bias_correction(beta2)))
        step = self._scalar("adam_step", lambda: b.Mul(
            self.lr, b.Div(root_bc2, self._bias_correction(beta1))))
        eps = self._scalar("adam_eps", lambda: b.Mul(b.const(float(c.eps)), root_bc2))
        denom = b.Add(b.Sqrt(v), eps)
        return b.Sub(w, b.Mul(b.Div(m, denom), step)), {"m": m, "v": v}

    def _adamw(self, b, c, w, g, state, wd):
        if wd:
            w = b.Mul(w, b.Sub(b.const(1.0), b.Mul(self.lr, b.const(wd))))
        return self._adam(b, c, w, g, state, wd)

    def _rmsprop(self, b, c, w, g, state, wd):
        sq = self._ema(state["square_avg"], b.Mul(g, g), float(c.alpha))
        denom = b.Add(b.Sqrt(sq), b.const(float(c.eps)))
        return b.Sub(w, b.Mul(b.Div(g, denom), self.lr)), {"square_avg": sq}
