"""Deterministic train/val/test splits (optionally stratified) and feature normalisation."""

from __future__ import annotations

import numpy as np

from dlc.errors import DlcError


def _round(x: float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return int(np.floor(x + 0.5 + 1e-9))


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes proportionally to `counts` (largest remainder method)."""
    if total <= 0 or counts.sum() == 0:
        return np.zeros_like(counts)
    exact = counts * (total / counts.sum())
    out = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - out), kind="stable")
    for i in order[: total - int(out.sum())]:
        out[i] += 1
    return np.minimum(out, counts)


def index_dtype(n: int) -> np.dtype:
    """The narrowest index type for n rows: int32 below 2**31, half the memory of int64."""
    return np.dtype(np.int32 if n < 2**31 else np.int64)


def permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    """`rng.permutation(n)`'s draws as index_dtype(n), shuffled in place (permutation would
    copy its argument): one array of 4 bytes per row."""
    return _shuffled(np.arange(n, dtype=index_dtype(n)), rng)


def _take(pools: list[np.ndarray], counts: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Take counts[c] indices from the front of each class pool; return (taken, rest)."""
    taken = [p[:k] for p, k in zip(pools, counts)]
    rest = [p[k:] for p, k in zip(pools, counts)]
    return np.concatenate(taken) if taken else np.zeros(0, np.int64), rest


def split_indices(
    y: np.ndarray | None, n: int, val: float, test: float, classes: bool, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) index arrays: test first, then val from the rest; fractions of n.

    With `classes` (stratify on class-index targets y), every split keeps each class's share
    within one sample. Each index array is shuffled; the result depends only on (y, n, seed)."""
    rng = np.random.default_rng(seed)
    n_test, n_val = _round(test * n), _round(val * n)
    if classes and y is not None:
        keys = np.asarray(y).reshape(n, -1)[:, 0]
        keys = keys if keys.dtype.kind in "iu" else keys.astype(np.int64)
        pools = [_shuffled(np.flatnonzero(keys == c).astype(index_dtype(n)), rng)
                 for c in np.unique(keys)]
    else:
        pools = [permutation(n, rng)]
    sizes = np.array([len(p) for p in pools], dtype=np.int64)
    test_idx, pools = _take(pools, _apportion(sizes, n_test))
    left = np.array([len(p) for p in pools], dtype=np.int64)
    val_counts = np.minimum(_apportion(sizes, n_val), left)
    val_idx, pools = _take(pools, val_counts)
    train_idx = np.concatenate(pools)
    return _shuffled(train_idx, rng), _shuffled(val_idx, rng), _shuffled(test_idx, rng)


def _shuffled(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """idx (an array of its own) shuffled in place: the draws of `rng.permutation(idx)`,
    without its copy."""
    rng.shuffle(idx)
    return idx


def check_split_sizes(n: int, val: float, test: float, sizes: tuple[int, int, int]) -> None:
    """DlcError when a requested split (or the training split) ends up empty."""
    n_train, n_val, n_test = sizes
    for name, frac, size in (("test", test, n_test), ("val", val, n_val)):
        if frac > 0 and size == 0:
            raise DlcError(
                f"data.split: {name} {frac:g} of {n} samples leaves the {name} set empty; "
                f"raise data.split.{name} or set it to 0"
            )
    if n_train == 0:
        raise DlcError(
            f"data.split: val {val:g} + test {test:g} of {n} samples leaves no training samples"
        )


def compute_norm(x: np.ndarray, kind: str) -> dict | None:
    """Per-feature (flattened per sample) offset/scale from the training samples x."""
    if kind in (None, "none"):
        return None
    flat = np.asarray(x.reshape(len(x), -1), dtype=np.float64)  # a float64 x: no copy
    if kind == "standard":
        offset, scale = flat.mean(axis=0), flat.std(axis=0)
    elif kind == "minmax":
        offset, scale = flat.min(axis=0), flat.max(axis=0) - flat.min(axis=0)
    else:
        raise DlcError(f"data.normalize: unknown kind '{kind}'; expected none, standard or minmax")
    constant = np.ptp(flat, axis=0) == 0
    scale = np.where(constant | ~(scale > 0), 1.0, scale)
    return {"kind": kind, "offset": offset.tolist(), "scale": scale.tolist()}


def apply_norm(x: np.ndarray, norm: dict | None) -> np.ndarray:
    """(x - offset) / scale per flattened feature, as float32 in x's shape."""
    x = np.asarray(x, dtype=np.float32)
    if norm is None:
        return x
    offset = np.asarray(norm["offset"], dtype=np.float64)
    scale = np.asarray(norm["scale"], dtype=np.float64)
    flat = x.reshape(len(x), -1)
    if flat.shape[1] != len(offset):
        raise DlcError(
            f"data has {flat.shape[1]} features per sample; the normalisation expects {len(offset)}"
        )
    return ((flat - offset) / scale).astype(np.float32).reshape(x.shape)


def _most_frequent(t: np.ndarray) -> float:
    """The commonest value of one column (the smallest among ties); NaN when all are missing."""
    values, counts = np.unique(t[~np.isnan(t)], return_counts=True)
    return float(values[np.argmax(counts)]) if len(values) else np.nan


# data.missing strategies that fill a cell: per-column fill values from the training rows t.
FILLS = {
    "mean": lambda t, value: np.nanmean(t, axis=0),
    "median": lambda t, value: np.nanmedian(t, axis=0),
    "most_frequent": lambda t, value: np.array([_most_frequent(c) for c in t.T]),
    "constant": lambda t, value: np.full(t.shape[1], float(value)),
}


def with_fill(norm: dict | None, fill: list[float] | None, width: int) -> dict | None:
    """The input normalisation the exported graph bakes in, with the missing-value fills that
    come before it (kind none: offset 0, scale 1, so that the fill has a place to travel)."""
    if fill is None:
        return norm
    base = norm or {"kind": "none", "offset": [0.0] * width, "scale": [1.0] * width}
    return {**base, "fill": fill}
