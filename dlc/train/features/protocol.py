"""The interface of a training feature (dlc.train.features.registry keeps the registry and the loops over it).

Its own module so that feature modules import it without importing the registry, which loads
them: no import circle, not even a lazy one.
"""

from __future__ import annotations

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

    def persistent(self, b, total: int) -> dict[str, float]:
        """Extra flat tensors the train step carries from step to step like optimizer states:
        state name -> the value every element starts at (the feature outputs the graph's
        `state.<name>.new` itself)."""
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
