"""The checks of a spec's training options that need no data: `dlc train` runs them before it
loads anything, `dlc validate` runs them too. Each option's module is imported only when the
spec uses it (they need numpy, which a plain `dlc validate` does not import)."""

from __future__ import annotations

from pathlib import Path


def check_training(spec, net, base_dir: Path) -> None:
    """train.prune, train.distill and the transfer options (trainable: false, lr_scale,
    init_from); raise SpecError/DlcError naming the problem. Paths (teacher, init_from) are made
    absolute, relative to `base_dir`."""
    train = spec.data.get("train") or {}
    if train.get("prune"):
        from dlc import prune

        prune.check(spec, net)
    if train.get("distill"):
        from dlc import distill

        distill.check(spec, base_dir)
    if net.frozen or train.get("init_from") or (train.get("optimizer") or {}).get("lr_scale"):
        from dlc import transfer

        transfer.check(spec, net, base_dir)
