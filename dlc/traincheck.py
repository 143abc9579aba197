"""The checks of a spec's training options that need no data: `dlc train` runs them before it
loads anything, `dlc validate` runs them too. Each feature's module is imported only when the
spec uses it (they need numpy, which a plain `dlc validate` does not import): dlc.features."""

from __future__ import annotations

from pathlib import Path

from dlc import features


def check_training(spec, net, base_dir: Path) -> None:
    """Each training feature's data-free checks (train.prune, train.distill, the transfer
    options: trainable: false, lr_scale, init_from); raise SpecError/DlcError naming the
    problem. Paths (teacher, init_from) are made absolute, relative to `base_dir`."""
    features.check(spec, net, base_dir)
