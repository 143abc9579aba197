"""Layer types by spec `type`: one table, one class per type."""

from __future__ import annotations

from dlc.layers.activations import ACTIVATIONS, Activation
from dlc.layers.base import Ctx, Layer, Param, Shape, ShapeError
from dlc.layers.core import Dense, Dropout, Flatten, Reshape

LAYERS: dict[str, type[Layer]] = {
    "dense": Dense,
    "dropout": Dropout,
    "flatten": Flatten,
    "reshape": Reshape,
    **{name: Activation for name in ACTIVATIONS},
}


def build_layer(cfg: dict) -> Layer:
    layer = LAYERS[cfg["type"]].from_spec(cfg)
    return layer


__all__ = ["LAYERS", "Ctx", "Layer", "Param", "Shape", "ShapeError", "build_layer"]
