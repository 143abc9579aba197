"""Learning-rate schedules, in Python: the train graph takes lr as an input each step."""

from __future__ import annotations

import math

from dlc.train.options import ScheduleConfig


class Schedule:
    def __init__(self, cfg: ScheduleConfig, base_lr: float, epochs: int, steps_per_epoch: int):
        self.cfg, self.base, self.epochs, self.spe = cfg, base_lr, epochs, steps_per_epoch
        self.scale = 1.0  # multiplies every lr: plateau's factor, divergence retries' halving
        self.best: float | None = None
        self.bad_epochs = 0

    def lr(self, epoch: int, i: int) -> float:
        """Learning rate for step i (0-based) of epoch `epoch` (0-based)."""
        return self.scale * self._unscaled(epoch, i)

    def _unscaled(self, epoch: int, i: int) -> float:
        c, step = self.cfg, epoch * self.spe + i
        warm = int(round(c.warmup_epochs * self.spe))
        if step < warm:
            return self.base * (step + 1) / warm
        kind = c.type
        if kind == "step":
            return self.base * c.gamma ** (epoch // c.step_size)
        if kind == "exponential":
            return self.base * c.gamma ** epoch
        if kind == "cosine":
            total = max(self.epochs * self.spe - warm, 1)
            lo = c.min_lr
            return lo + (self.base - lo) * 0.5 * (1 + math.cos(math.pi * (step - warm) / total))
        return self.base

    def end_epoch(self, value: float, lower_is_better: bool) -> None:
        """Plateau bookkeeping on the monitored value."""
        if self.cfg.type != "plateau":
            return
        better = self.best is None or (value < self.best if lower_is_better else value > self.best)
        if better:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.cfg.patience:
            self.scale *= self.cfg.factor
            self.bad_epochs = 0

    def state(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]
