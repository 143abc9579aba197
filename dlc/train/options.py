"""The training options as small typed objects, built once from a validated spec.

The schema has filled every default by then (`dlc expand` shows them), so these read
`cfg[key]` and never repeat a default; a field the schema leaves unset (an optimizer
hyperparameter its type does not use, an absent early_stopping) is None.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


def _pick(cls, cfg: dict):
    """`cls` from the keys of `cfg` it declares (absent optional ones: their field default)."""
    return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})


@dataclass(frozen=True)
class OptimizerConfig:
    type: str
    lr: float
    weight_decay: float
    momentum: float | None = None  # momentum, nesterov
    beta1: float | None = None  # adam, adamw
    beta2: float | None = None
    eps: float | None = None  # adam, adamw, rmsprop
    alpha: float | None = None  # rmsprop


@dataclass(frozen=True)
class ScheduleConfig:
    type: str
    warmup_epochs: int
    step_size: int
    gamma: float
    min_lr: float
    factor: float
    patience: int


@dataclass(frozen=True)
class EarlyStopping:
    monitor: str
    patience: int
    min_delta: float
    restore_best: bool


@dataclass(frozen=True)
class OnDivergence:
    action: str  # stop, skip or retry
    retries: int

    @property
    def retry_budget(self) -> int:
        """Retries of an epoch before stopping (0 unless the action is retry)."""
        return self.retries if self.action == "retry" else 0


@dataclass(frozen=True)
class CheckpointPolicy:
    every: int  # epochs between saves (and the last epoch)
    keep: int  # per-epoch copies kept in checkpoints/
    best: bool  # checkpoints/best.npz


@dataclass(frozen=True)
class TrainOptions:
    epochs: int
    batch_size: int
    seed: int
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    on_divergence: OnDivergence
    checkpoint: CheckpointPolicy
    early_stopping: EarlyStopping | None = None
    clip_norm: float | None = None

    @classmethod
    def of(cls, spec_data: dict) -> TrainOptions:
        """The options of a validated spec's `train:` section."""
        train = spec_data["train"]
        es = train.get("early_stopping")
        return cls(train["epochs"], train["batch_size"], train["seed"],
                   _pick(OptimizerConfig, train["optimizer"]),
                   _pick(ScheduleConfig, train["schedule"]),
                   _pick(OnDivergence, train["on_divergence"]),
                   _pick(CheckpointPolicy, train["checkpoint"]),
                   _pick(EarlyStopping, es) if es else None, train.get("clip_norm"))
