"""Target scaling (`target_scaling: standard` on a regression output): the loss compares
standardised targets, with the training split's mean and std per target column baked into the
graphs as constants (dlc.losses lowers them); metrics and predictions stay in the target's units.
"""

from __future__ import annotations

from dlc.train.features.protocol import Feature
from dlc.model.losses import scale_targets


class TargetScaling(Feature):
    """The statistics come from the training split, so each cross-validation fold has its own."""

    name = "target_scaling"

    def resolve(self, net, dataset):
        return scale_targets(net, dataset)


FEATURE = TargetScaling()
