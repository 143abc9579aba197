"""The one validation pipeline: a loaded spec (its schema already checked by dlc.model.spec) is
built into a network (shape rules and semantic checks), then its training options are checked
without data. `dlc validate`, `train`, `cv` and `tune` all go through `checked_network`.

Each training feature's module is imported only when the spec uses it (the registry imports it
by name): they need numpy, which a plain `dlc validate` does not import."""

from __future__ import annotations

from pathlib import Path

from dlc.model.network import Network, build_network
from dlc.train.features import registry


def checked_network(spec, base_dir: Path | None = None) -> Network:
    """The spec's network after every data-free check; SpecError/DlcError naming each problem.
    Relative paths in the training options resolve against `base_dir` (default: the spec's
    folder)."""
    net = build_network(spec)
    check_training(spec, net, base_dir or Path(spec.file).resolve().parent)
    return net


def check_training(spec, net, base_dir: Path) -> None:
    """Each training feature's data-free checks (train.prune, train.distill, the transfer
    options: trainable: false, lr_scale, init_from); raise SpecError/DlcError naming the
    problem. Paths (teacher, init_from) are made absolute, relative to `base_dir`."""
    registry.check(spec, net, base_dir)
