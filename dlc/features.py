"""Training features (prune, transfer, distill, class imbalance, target scaling): one protocol,
one registry, and the loops over it that the train step, the Trainer and the run call.

A feature is a training option that reaches into several stages of a run; each implements the
hooks of `Feature` it needs, in its own module, and the rest of dlc calls them only through the
loops below, never by name. Adding one touches its module, `REGISTRY` and its tests.

`REGISTRY` says when a spec turns each feature on without importing its module: feature modules
need numpy, and `dlc validate` must stay free of it (a spec that uses no feature imports none).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


class Feature:
    """The hooks of one training feature; each default does nothing. `name`: its key in a
    Trainer's `feature_state` (what `start`/`begin` returned) and in messages."""

    name = ""

    # ---- before any data (dlc validate, dlc train before loading) ----------------------------
    def check(self, spec, net, base_dir) -> None:
        """Raise SpecError/DlcError naming the problem; may make paths absolute in spec.data."""

    # ---- with the data ------------------------------------------------------------------------
    def resolve(self, net, dataset):
        """The network with what this feature computes from the training split filled in."""
        return net

    # ---- the train-step graph -----------------------------------------------------------------
    def keep_mask(self, b, net, total: int) -> str | None:
        """A flat 0/1 mask multiplying the parameters, their gradient and their update."""
        return None

    def frozen_inputs(self, b, net) -> dict[str, str]:
        """Parameters fed as plain inputs: read, never differentiated nor written."""
        return {}

    def lr_scale(self, net, layout, total: int):
        """Per-element learning-rate multipliers of the flat parameter vector, or None."""
        return None

    def loss(self, b, net, inputs: dict[str, str], logits: dict[str, str], loss: str,
             data_norm: dict | None) -> str:
        """The train step's loss with this feature's term (`inputs`: each model input's tensor,
        `logits`: each output's, by output name)."""
        return loss

    def persistent(self, b, total: int) -> dict[str, Any]:
        """Extra tensors the train step carries from step to step like optimizer states: state
        name -> its initial flat value (the feature outputs `state.<name>.new` itself)."""
        return {}

    # ---- the Trainer and the run --------------------------------------------------------------
    def start(self, trainer) -> Any:
        """When a Trainer is built; what it returns is kept in trainer.feature_state."""
        return None

    def begin(self, trainer, note: Callable[[str], None], fresh: bool) -> Any:
        """Before the first epoch of a run or fold (fresh: not a resume, whose parameters come
        from its checkpoint); what it returns (not None) replaces trainer.feature_state[name]."""
        return None

    def epoch_start(self, trainer) -> None:
        """At the start of each epoch, before its first step."""

    def epoch_order(self, rng, y, spec_data: dict):
        """The training-sample order of one epoch, or None for the Trainer's shuffle."""
        return None

    def summary(self, trainer, params: dict) -> dict:
        """Entries for summary.json."""
        return {}


@dataclass(frozen=True)
class Registered:
    """A feature's module (exposing FEATURE) and whether a spec turns it on: (spec.data, net)."""

    module: str
    on: Callable[[dict, Any], bool]


def _train(spec_data: dict) -> dict:
    return spec_data.get("train") or {}


REGISTRY: list[Registered] = [
    Registered("dlc.prune", lambda s, net: bool(_train(s).get("prune"))),
    Registered("dlc.transfer", lambda s, net: bool(
        net.frozen or _train(s).get("init_from") or _train(s)["optimizer"].get("lr_scale"))),
    Registered("dlc.distill", lambda s, net: bool(_train(s).get("distill"))),
    Registered("dlc.imbalance", lambda s, net: (s.get("data") or {}).get("sampling") == "balanced"
               or any(h.task.get("class_weights") is not None for h in net.heads)),
    Registered("dlc.targetscale", lambda s, net: any(
        h.task.get("target_scaling") == "standard" for h in net.heads)),
]


def active(spec_data: dict, net) -> list[Feature]:
    """The features `spec_data` turns on, in registry order (their modules imported now)."""
    return [importlib.import_module(r.module).FEATURE for r in REGISTRY if r.on(spec_data, net)]


# ---- the loops --------------------------------------------------------------------------------
def check(spec, net, base_dir) -> None:
    for f in active(spec.data, net):
        f.check(spec, net, base_dir)


def resolve(net, dataset):
    for f in active(net.spec, net):
        net = f.resolve(net, dataset)
    return net


def _keep(trainer, f: Feature, state) -> None:
    if state is not None:
        trainer.feature_state[f.name] = state


def start(trainer) -> None:
    """When the Trainer is built (its stepper holds the initial values)."""
    for f in trainer.features:
        _keep(trainer, f, f.start(trainer))


def begin(trainer, note: Callable[[str], None], fresh: bool = True) -> None:
    """Before the first epoch of a run (fresh) or a resume, or of a cross-validation fold."""
    for f in trainer.features:
        _keep(trainer, f, f.begin(trainer, note, fresh))


def summary(trainer, params: dict) -> dict:
    out: dict = {}
    for f in trainer.features:
        out.update(f.summary(trainer, params))
    return out
