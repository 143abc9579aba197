"""Training features (prune, transfer, distill, class imbalance, target scaling): one protocol,
one registry, and the loops over it that the train step, the Trainer and the run call.

A feature is a training option that reaches into several stages of a run; each implements the
hooks of `Feature` (dlc.train.features.protocol) it needs, in its own module, and the rest of dlc calls
them only through the loops below, never by name. Adding one touches its module, `REGISTRY` and
its tests.

`REGISTRY` says when a spec turns each feature on without importing its module: feature modules
need numpy, and `dlc validate` must stay free of it (a spec that uses no feature imports none).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from dlc.train.features.protocol import Feature


@dataclass(frozen=True)
class Registered:
    """A feature's module (exposing FEATURE) and whether a spec turns it on: (spec.data, net)."""

    module: str
    on: Callable[[dict, Any], bool]


REGISTRY: list[Registered] = [
    Registered("dlc.train.features.prune", lambda s, net: "prune" in s["train"]),
    Registered("dlc.train.features.finetune", lambda s, net: bool(
        net.frozen or s["train"].get("init_from") or s["train"]["optimizer"].get("lr_scale"))),
    Registered("dlc.train.features.distill", lambda s, net: "distill" in s["train"]),
    Registered("dlc.train.features.imbalance", lambda s, net: (s.get("data") or {}).get("sampling") == "balanced"
               or any(h.task.get("class_weights") is not None for h in net.heads)),
    Registered("dlc.train.features.targetscale", lambda s, net: any(
        h.task.get("target_scaling") == "standard" for h in net.heads)),
]


def active(spec_data: dict, net) -> list[Feature]:
    """The features `spec_data` turns on, in registry order (their modules imported now)."""
    return [importlib.import_module(r.module).FEATURE for r in REGISTRY if r.on(spec_data, net)]


# ---- the loops --------------------------------------------------------------------------------
def check(spec, net, base_dir) -> None:
    """Each active feature's data-free checks (dlc validate, and train/cv/tune before loading)."""
    for f in active(spec.data, net):
        f.check(spec, net, base_dir)


def resolve(net, dataset):
    """The network with each active feature's numbers from the training split filled in."""
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
    """summary.json's entries from every active feature."""
    out: dict = {}
    for f in trainer.features:
        out.update(f.summary(trainer, params))
    return out
