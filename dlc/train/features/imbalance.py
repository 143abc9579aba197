"""Class imbalance: `task.class_weights` and `data.sampling: balanced`.

- `task.class_weights: [w0, w1, ...]` (one per class; a binary task has two: negative, positive)
  or `balanced`: the loss weighs each sample by its class's weight and is normalised like torch's
  `weight=` with mean reduction, sum(w_i l_i) / sum(w_i) over the batch (per-token outputs: over
  every token). With label smoothing each class's share of the smoothed target is weighted by
  that class's weight, as torch's cross_entropy does. `balanced` is scikit-learn's
  `compute_class_weight("balanced")` on the training split, n / (classes * count(class)),
  computed when the trainer is built (so each cross-validation fold uses its own training part)
  and baked into the train and eval graphs as a constant. Train and validation loss use the same
  weights.
- `data.sampling: balanced` draws each epoch's training batches with replacement, every sample
  with probability proportional to 1 / count(its class) (torch's WeightedRandomSampler with
  num_samples = the training-split size), so each class present is drawn equally often on
  average. The draw comes from the run's checkpointed generator: a resumed run continues exactly.

Their data-free checks are dlc.model.semantics.check_class_balance (they run in every `dlc
validate`, which loads no numpy).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dlc.data._split import permutation
from dlc.errors import DlcError
from dlc.train.features.protocol import Feature


def class_ids(y: np.ndarray, kind: str) -> np.ndarray:
    """Integer class of every label: classification ids as they are (per-token: every token),
    binary targets thresholded at 0.5."""
    y = np.asarray(y)
    if kind == "binary":
        return (y.reshape(len(y), -1)[:, 0] > 0.5).astype(np.int64)
    return y.astype(np.int64).ravel()


def balanced_weights(ids: np.ndarray, classes: int) -> list[float]:
    """scikit-learn's compute_class_weight("balanced", classes=arange(classes), y=ids)."""
    counts = np.bincount(ids, minlength=classes)
    if (counts == 0).any():
        missing = [int(c) for c in np.flatnonzero(counts == 0)]
        raise DlcError(f"task.class_weights: balanced needs every class in the training split; "
                       f"class {missing[0]} has no sample there; give the weights as a list")
    return [float(w) for w in len(ids) / (classes * counts.astype(np.float64))]


def resolve(net, dataset):
    """The network whose outputs with class_weights: balanced carry the numbers from the
    training split in their task (the losses and the summary read them there); the same network
    when there is nothing to resolve."""
    heads = [replace(h, task={**h.task, "class_weights": balanced_weights(
                 class_ids(h.targets(dataset.train.y), h.kind), h.classes)})
             if h.task.get("class_weights") == "balanced" else h for h in net.heads]
    return net if heads == net.heads else replace(net, heads=heads)


def epoch_order(rng: np.random.Generator, y: np.ndarray, spec_data: dict) -> np.ndarray:
    """The training-sample order of one epoch: a permutation, or with data.sampling balanced
    len(y) class-balanced draws with replacement."""
    n = len(y)
    if (spec_data.get("data") or {}).get("sampling", "shuffle") != "balanced":
        return permutation(n, rng)
    ids = class_ids(y, spec_data["task"]["kind"])
    p = 1.0 / np.bincount(ids)[ids]
    return rng.choice(n, size=n, replace=True, p=p / p.sum())


def summary(trainer) -> dict:
    """summary.json: the class weights each loss used (balanced: as computed)."""
    used = {h.name: h.task["class_weights"] for h in trainer.net.heads
            if h.task.get("class_weights") is not None}
    if not used:
        return {}
    return {"class_weights": used[""] if "" in used else used}


class Imbalance(Feature):
    """Balanced class weights from the training split, balanced sampling of each epoch, and
    the weights used in summary.json. Its checks need the output shapes: dlc.semantics runs
    `check` per output."""

    name = "imbalance"

    def resolve(self, net, dataset):
        return resolve(net, dataset)

    def epoch_order(self, rng, y, spec_data: dict):
        if spec_data["data"]["sampling"] != "balanced":
            return None  # class weights alone: the Trainer's shuffle
        return epoch_order(rng, y, spec_data)

    def summary(self, trainer, params: dict) -> dict:
        return summary(trainer)


FEATURE = Imbalance()
