"""The one validation pipeline: a loaded spec (its schema already checked by dlc.model.spec) is
built into a network (shape rules and semantic checks), then its training options are checked
without data. `dlc validate`, `train`, `cv` and `tune` all go through `checked_network`.

Each training feature's module is imported only when the spec uses it: they need numpy, which a
plain `dlc validate` does not import (an allow-listed lazy import in tests/test_layout.py)."""

from __future__ import annotations

from pathlib import Path

from dlc.model.network import Network, build_network


def checked_network(spec, base_dir: Path | None = None) -> Network:
    """The spec's network after every data-free check; SpecError/DlcError naming each problem.
    Relative paths in the training options resolve against `base_dir` (default: the spec's
    folder)."""
    net = build_network(spec)
    check_training(spec, net, base_dir or Path(spec.file).resolve().parent)
    return net


def check_training(spec, net, base_dir: Path) -> None:
    """train.prune, train.distill and the transfer options (trainable: false, lr_scale,
    init_from); raise SpecError/DlcError naming the problem. Paths (teacher, init_from) are made
    absolute, relative to `base_dir`."""
    train = spec.data.get("train") or {}
    if train.get("prune"):
        from dlc.train.features import prune

        prune.check(spec, net)
    if train.get("distill"):
        from dlc.train.features import distill

        distill.check(spec, base_dir)
    if net.frozen or train.get("init_from") or (train.get("optimizer") or {}).get("lr_scale"):
        from dlc.train.features import finetune

        finetune.check(spec, net, base_dir)
