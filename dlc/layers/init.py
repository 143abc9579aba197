"""Weight initialisers: name -> (rng, shape) -> float32 array. Fans follow Keras for [in, out] kernels.

numpy is imported when an initialiser runs, not at import: `dlc validate` builds layers too."""

from __future__ import annotations

import math


def _fans(shape):
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[0] * receptive, shape[1] * receptive


def _uniform(scale_fn):
    def init(rng, shape):
        limit = math.sqrt(3.0 * scale_fn(*_fans(shape)))
        return rng.uniform(-limit, limit, size=shape).astype("float32")
    return init


def _normal(scale_fn):
    def init(rng, shape):
        scale = math.sqrt(scale_fn(*_fans(shape)))
        return (rng.standard_normal(size=shape) * scale).astype("float32")
    return init


def _zeros(rng, shape):
    import numpy as np

    return np.zeros(shape, np.float32)


INITIALIZERS = {
    "glorot_uniform": _uniform(lambda fi, fo: 2.0 / (fi + fo)),
    "glorot_normal": _normal(lambda fi, fo: 2.0 / (fi + fo)),
    "he_uniform": _uniform(lambda fi, fo: 2.0 / fi),
    "he_normal": _normal(lambda fi, fo: 2.0 / fi),
    "lecun_normal": _normal(lambda fi, fo: 1.0 / fi),
    "zeros": _zeros,
}


def initializer(name: str):
    return INITIALIZERS[name]
