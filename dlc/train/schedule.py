"""Learning-rate schedules, in Python: the train graph takes lr as an input each step."""

from __future__ import annotations

import math


class Schedule:
    def __init__(self, cfg: dict, base_lr: float, epochs: int, steps_per_epoch: int):
        self.cfg, self.base, self.epochs, self.spe = cfg, base_lr, epochs, steps_per_epoch
        self.scale = 1.0  # multiplies every lr: plateau's factor, divergence retries' halving
        self.best: float | None = None
        self.bad_epochs = 0

    def lr(self, epoch: int, i: int) -> float:
        """Learning rate for step i (0-based) of epoch `epoch` (0-based)."""
        return self.scale * self._unscaled(epoch, i)

    def _unscaled(self, epoch: int, i: int) -> float:
        c, step = self.cfg, epoch * self.spe + i
        warm = int(round(c.get("warmup_epochs", 0) * self.spe))
        if step < warm:
            return self.base * (step + 1) / warm
        kind = c.get("type", "constant")
        if kind == "step":
            return self.base * c.get("gamma", 0.1) ** (epoch // c.get("step_size", 10))
        if kind == "exponential":
            return self.base * c.get("gamma", 0.1) ** epoch
        if kind == "cosine":
            total = max(self.epochs * self.spe - warm, 1)
            lo = c.get("min_lr", 0.0)
            return lo + (self.base - lo) * 0.5 * (1 + math.cos(math.pi * (step - warm) / total))
        return self.base

    def end_epoch(self, value: float, lower_is_better: bool) -> None:
        """Plateau bookkeeping on the monitored value."""
        if self.cfg.get("type") != "plateau":
            return
        better = self.best is None or (value < self.best if lower_is_better else value > self.best)
        if better:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.cfg.get("patience", 3):
            self.scale *= self.cfg.get("factor", 0.5)
            self.bad_epochs = 0

    def state(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]
