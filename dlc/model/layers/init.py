"""Weight initialisers: `initializer(name, fans)` -> (rng, shape) -> float32 array.

Fans default to Keras' rule for [in, out] kernels; conv layers pass theirs ([F, C/G, k...]).
numpy is imported when an initialiser runs, not at import: `dlc validate` builds layers too.
"""

from __future__ import annotations

import math

# name -> (distribution, variance as a function of (fan_in, fan_out))
SCALES = {
    "glorot_uniform": ("uniform", lambda fi, fo: 2.0 / (fi + fo)),
    "glorot_normal": ("normal", lambda fi, fo: 2.0 / (fi + fo)),
    "he_uniform": ("uniform", lambda fi, fo: 2.0 / fi),
    "he_normal": ("normal", lambda fi, fo: 2.0 / fi),
    "lecun_normal": ("normal", lambda fi, fo: 1.0 / fi),
}


def dense_fans(shape) -> tuple[int, int]:
    if len(shape) < 2:
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive = math.prod(shape[2:])
    return shape[0] * receptive, shape[1] * receptive


def _constant(value: float):
    def init(rng, shape):
        import numpy as np

        return np.full(shape, value, np.float32)
    return init


def initializer(name: str, fans: tuple[int, int] | None = None):
    if name in ("zeros", "ones"):
        return _constant(1.0 if name == "ones" else 0.0)
    dist, variance = SCALES[name]

    def init(rng, shape):
        import numpy as np

        var = variance(*(fans or dense_fans(shape)))
        if dist == "uniform":
            limit = math.sqrt(3.0 * var)
            return rng.uniform(-limit, limit, size=shape).astype(np.float32)
        return (rng.standard_normal(size=shape) * math.sqrt(var)).astype(np.float32)
    return init
