"""Magnitude pruning (`train.prune`): a 0/1 keep-mask over the flat parameter vector, in the graph.

The train step multiplies the flat parameters by the mask before unpacking them, multiplies the
flat gradient by it (the chain rule through that product: pruned weights get no gradient) and
multiplies the updated parameters by it (so no optimizer momentum or weight decay moves a pruned
weight off zero). The mask is the persistent tensor `state.mask` (input `state.mask`, output
`state.mask.new` unchanged), so checkpoints save it with the optimizer states and a resumed run
continues with the same mask.

Python updates the mask at the start of each due epoch, per tensor: the smallest-magnitude
weights are zeroed until the tensor reaches the scheduled sparsity (pruned weights stay pruned).
The schedule is TF-MOT's PolynomialDecay with power 3 from 0:
    s(e) = sparsity * (1 - (1 - (e - start) / (end - start)) ** 3),  start <= e <= end,
updated when (e - start) % every == 0 and at e == end (so the final sparsity is always reached).
"""

from __future__ import annotations

import numpy as np

from dlc.errors import DlcError, SpecError
from dlc.model.layers.base import numel
from dlc.train.features.protocol import Feature

PRUNABLE = ("dense", "conv1d", "conv2d")  # layer types whose `.weight` is pruned by default
MASK = "state.mask"


def config(spec_data: dict) -> dict | None:
    """train.prune with its end epoch filled (default: the last epoch), or None."""
    train = spec_data["train"]
    cfg = train.get("prune")
    if cfg is None:
        return None
    return {**cfg, "end_epoch": cfg.get("end_epoch", train["epochs"])}


# ---- checks ---------------------------------------------------------------------------------
def targets(net) -> list[str]:
    """Names of the parameters to prune: train.prune.layers' weights, or every dense/conv weight."""
    cfg = config(net.spec)
    trainable = {p.name for p in net.params if p.trainable}
    if not cfg.get("layers"):
        return [f"{n.name}.weight" for n in net.nodes
                if n.layer.cfg["type"] in PRUNABLE and f"{n.name}.weight" in trainable]
    known = {layer["name"] for layer in net.spec["layers"]}
    out = []
    for name in cfg["layers"]:
        if name not in known:
            raise DlcError(f"train.prune.layers: no layer named '{name}'")
        found = [p for p in trainable if p.startswith(f"{name}.") and "weight" in p[len(name):]]
        if not found:
            raise DlcError(f"train.prune.layers: layer '{name}' has no trainable weights to prune")
        out += sorted(found)
    return out


def check(spec, net) -> None:
    """Semantic checks of train.prune, as diagnostics at their spec positions."""
    cfg = config(spec.data)
    if cfg is None:
        return
    train, where = spec.data["train"], ("train", "prune")
    problems = []
    if cfg["end_epoch"] > train["epochs"]:
        problems.append(spec.diag((*where, "end_epoch"), f"end_epoch {cfg['end_epoch']} is after "
                                  f"the last epoch (train.epochs is {train['epochs']})"))
    if cfg["start_epoch"] > cfg["end_epoch"]:
        problems.append(spec.diag((*where, "start_epoch"), f"start_epoch {cfg['start_epoch']} is "
                                  f"after end_epoch {cfg['end_epoch']}"))
    if train.get("early_stopping"):
        problems.append(spec.diag(("train", "early_stopping"), "early stopping does not combine "
                                  "with train.prune (its best epoch may be less sparse); drop one"))
    if problems:
        raise SpecError(problems)
    try:
        if not targets(net):
            raise DlcError("the model has no dense or conv weights; name layers in "
                           "train.prune.layers")
    except DlcError as e:
        raise SpecError([spec.diag(where, str(e))]) from None


# ---- the schedule ---------------------------------------------------------------------------
def sparsity_at(cfg: dict, epoch: int) -> float:
    """Target sparsity for (1-based) epoch `epoch`: the cubic ramp from 0 to cfg['sparsity']."""
    start, end, final = cfg["start_epoch"], cfg["end_epoch"], cfg["sparsity"]
    if epoch < start:
        return 0.0
    if epoch >= end:
        return float(final)
    return float(final * (1.0 - (1.0 - (epoch - start) / (end - start)) ** 3))


def due(cfg: dict, epoch: int) -> bool:
    """Whether the mask is updated at the start of `epoch`."""
    start, end = cfg["start_epoch"], cfg["end_epoch"]
    return start <= epoch <= end and ((epoch - start) % cfg["every"] == 0 or epoch == end)


def prune_tensor(w: np.ndarray, keep: np.ndarray, sparsity: float) -> np.ndarray:
    """The keep-mask of one tensor at `sparsity`: its round(sparsity * n) smallest |w| are 0.
    Already pruned entries sort first, so they stay pruned; ties break by position."""
    n = w.size
    k = max(int(round(sparsity * n)), int(n - keep.sum()))
    score = np.where(keep > 0, np.abs(w).astype(np.float64), -1.0)
    out = np.ones(n, np.float32)
    out[np.argsort(score, kind="stable")[:k]] = 0.0
    return out


class Pruner:
    """The mask schedule of one Trainer; its mask lives in the trainer's stepper."""

    def __init__(self, cfg: dict, spans: dict[str, tuple[int, int]]):
        self.cfg, self.spans = cfg, spans  # param -> (offset, size) in the flat vector

    @classmethod
    def of(cls, trainer) -> Pruner:
        """The trainer's pruner, with an all-ones mask set."""
        cfg = config(trainer.net.spec)
        offsets = {n: (o, numel(s)) for n, o, s in trainer.step_graph.layout}
        spans = {}
        for name in targets(trainer.net):
            if name not in offsets:
                raise DlcError(f"train.prune: {name} is not trained, so it cannot be pruned")
            spans[name] = offsets[name]
        trainer.stepper.set(MASK, np.ones(trainer.step_graph.total, np.float32))
        return cls(cfg, spans)

    def update(self, trainer) -> float | None:
        """At the start of the next epoch: prune to the scheduled sparsity if due; zero the
        pruned parameters. Returns the new target sparsity, or None when not due."""
        epoch = trainer.state.epoch + 1
        if not due(self.cfg, epoch):
            return None
        target = sparsity_at(self.cfg, epoch)
        flat = np.array(trainer.stepper.get("params"), np.float32)
        mask = np.array(trainer.stepper.get(MASK), np.float32)
        for offset, size in self.spans.values():
            part = slice(offset, offset + size)
            mask[part] = prune_tensor(flat[part], mask[part], target)
        trainer.stepper.set(MASK, mask)
        trainer.stepper.set("params", flat * mask)
        return target


class Prune(Feature):
    """The keep-mask in the train step (an input, and a persistent state that starts at one),
    the magnitude schedule at each epoch's start, and the sparsity reached in summary.json."""

    name = "prune"

    def check(self, spec, net, base_dir) -> None:
        check(spec, net)

    def keep_mask(self, b, net, total: int) -> str:
        return b.input(MASK, "float32", [total])

    def persistent(self, b, total: int) -> dict[str, float]:
        b.output(MASK, f"{MASK}.new", "float32", [total])  # unchanged: Python updates it
        return {"mask": 1.0}

    def start(self, trainer) -> Pruner:
        return Pruner.of(trainer)

    def epoch_start(self, trainer) -> None:  # before the epoch the sparsity applies to
        trainer.feature_state[self.name].update(trainer)

    def summary(self, trainer, params: dict) -> dict:
        """{"sparsity": {param: fraction of exact zeros}} of the pruned tensors."""
        spans = trainer.feature_state[self.name].spans
        return {"sparsity": {name: float(np.mean(np.asarray(params[name]) == 0))
                             for name in spans}}


FEATURE = Prune()
