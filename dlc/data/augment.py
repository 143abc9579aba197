"""Training-time augmentation (`data.augment`) of normalised, channels-first float32 batches.

`augment(x, cfg, rng)` returns a new array; x is never modified. Every random draw comes from
`rng` (the trainer's checkpointed generator), so a resumed run augments exactly as an
uninterrupted one. Operations, in this order, each off at its default:

- flip: horizontal | none (default none) - mirror left-right with probability 0.5
- shift: N (default 0) - translate by up to +-N pixels in H and W, zero fill (random crop with
  padding; zero is the training mean under standard normalisation)
- rotate: D (default 0) - rotate by up to +-D degrees about the centre (bilinear, zero fill)
- cutout: N (default 0) - zero one random N x N square (inside the image) in every channel
- noise: S (default 0) - add gaussian noise of standard deviation S (any input shape)

All but noise need image samples [C, H, W] (batches [B, C, H, W]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlc.errors import DlcError

DEFAULTS: dict = {"shift": 0, "flip": "none", "rotate": 0.0, "noise": 0.0, "cutout": 0}
FLIPS = ("none", "horizontal")
SPATIAL = ("flip", "shift", "rotate", "cutout")


def _number(cfg: dict, key: str, integer: bool) -> float:
    value = cfg[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (integer and value != int(value)) or not value >= 0:
        need = "an integer" if integer else "a number"
        raise DlcError(f"data.augment.{key}: expected {need} >= 0, found {value!r}")
    return int(value) if integer else float(value)


def config(cfg: dict | None) -> dict:
    """cfg with every default filled and checked; DlcError for unknown keys or bad values."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise DlcError(
            f"data.augment: unknown key '{unknown[0]}'; expected {', '.join(DEFAULTS)}"
        )
    out = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    if out["flip"] not in FLIPS:
        raise DlcError(f"data.augment.flip: expected none or horizontal, found {out['flip']!r}")
    for key in ("shift", "cutout"):
        out[key] = _number(out, key, integer=True)
    for key in ("rotate", "noise"):
        out[key] = _number(out, key, integer=False)
    return out


def _spatial(cfg: dict) -> list[str]:
    """The enabled operations that need image samples."""
    return [k for k in SPATIAL if (cfg[k] != "none" if k == "flip" else cfg[k])]


def check_augment(cfg: dict | None, input_shape: Sequence[int]) -> None:
    """DlcError when data.augment cannot apply to samples of input_shape (checked at load)."""
    if not cfg:
        return
    c, dims = config(cfg), [int(d) for d in input_shape]
    spatial = _spatial(c)
    if spatial and len(dims) != 3:
        raise DlcError(
            f"data.augment.{spatial[0]} needs image inputs, input.shape [C, H, W]; found {dims} "
            "(only noise works for any shape)"
        )
    if not spatial:
        return
    side = min(dims[1], dims[2])
    if c["shift"] >= side:
        raise DlcError(
            f"data.augment.shift {c['shift']} must be smaller than the image ({dims[1]}x{dims[2]})"
        )
    if c["cutout"] > side:
        raise DlcError(
            f"data.augment.cutout {c['cutout']} is larger than the image ({dims[1]}x{dims[2]})"
        )


def augment(x: np.ndarray, cfg: dict, rng: np.random.Generator) -> np.ndarray:
    """A randomly augmented float32 copy of the batch x; see the module docstring."""
    c = config(cfg)
    out = np.array(x, dtype=np.float32, copy=True)
    spatial = _spatial(c)
    if spatial and out.ndim != 4:
        raise DlcError(
            f"data.augment.{spatial[0]} needs image batches [B, C, H, W], found shape "
            f"{list(out.shape)}"
        )
    if c["flip"] == "horizontal":
        flip = rng.random(len(out)) < 0.5
        out[flip] = out[flip][..., ::-1]
    if c["shift"]:
        out = _shift(out, c["shift"], rng)
    if c["rotate"]:
        angles = rng.uniform(-c["rotate"], c["rotate"], size=len(out))
        out = rotate(out, angles)
    if c["cutout"]:
        out = _cutout(out, c["cutout"], rng)
    if c["noise"]:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(c["noise"])
    return out


def _gather(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """out[b, c, i, j] = x[b, c, rows[b, i, j], cols[b, i, j]]."""
    b, c = x.shape[:2]
    bi = np.arange(b)[:, None, None, None]
    ci = np.arange(c)[None, :, None, None]
    return x[bi, ci, rows[:, None], cols[:, None]]


def _shift(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each sample by (dy, dx) in [-s, s]^2; pixels shifted in are zero."""
    b, _, h, w = x.shape
    dy, dx = rng.integers(-s, s + 1, size=(2, b))
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
    rows = (s - dy)[:, None, None] + np.arange(h)[None, :, None]  # [b, h, 1]
    cols = (s - dx)[:, None, None] + np.arange(w)[None, None, :]  # [b, 1, w]
    rows, cols = np.broadcast_arrays(rows, cols)
    return _gather(padded, rows, cols)


def rotate(x: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Rotate each sample x[i] [C, H, W] by degrees[i] about its centre; bilinear sampling of
    the inverse map, zero outside. An angle of 0 returns the sample unchanged."""
    b, _, h, w = x.shape
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64)).reshape(b, 1, 1)
    cos, sin = np.cos(theta), np.sin(theta)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    src_y = cos * yy - sin * xx + cy  # [b, h, w]: where each output pixel samples from
    src_x = sin * yy + cos * xx + cx
    return _bilinear(x, src_y, src_x)


def _bilinear(x: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """x sampled at fractional (sy, sx) [b, h, w] per sample; zero outside the image."""
    _, _, h, w = x.shape
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    fy, fx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
    out = np.zeros(x.shape, dtype=np.float32)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yi, xi = y0 + dy, x0 + dx
        weight = (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        weight = np.where(inside, weight, np.float32(0))[:, None]
        out += weight * _gather(x, yi.clip(0, h - 1), xi.clip(0, w - 1))
    return out


def _cutout(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Zero one n x n square per sample, placed uniformly inside the image, in all channels."""
    b, _, h, w = x.shape
    n = min(n, h, w)
    top = rng.integers(0, h - n + 1, size=b)[:, None]
    left = rng.integers(0, w - n + 1, size=b)[:, None]
    rows = (np.arange(h) >= top) & (np.arange(h) < top + n)  # [b, h]
    cols = (np.arange(w) >= left) & (np.arange(w) < left + n)  # [b, w]
    square = rows[:, None, :, None] & cols[:, None, None, :]
    return np.where(square, np.float32(0), x)
