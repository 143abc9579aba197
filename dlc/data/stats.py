"""The fitted state of a table's (or images') features: missing-value fills and normalisation statistics,
learnt from the training rows in chunks, so that a memory-mapped table is never read whole.

In memory and from the cache (dlc.data.cache) the same chunks are summed in the same order, so
both give the same bits; a training split of at most CHUNK values is one chunk, and the result
is then what numpy's mean, std, min, max and nanmean over the whole split give."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from dlc.data._images import pixels_to_float
from dlc.data._split import FILLS, apply_norm, with_fill
from dlc.data.columns import encode
from dlc.data.strings import Coded
from dlc.errors import DlcError

CHUNK = 1 << 18  # values per chunk (2 MiB as float64): 32,768 rows of 8 features


def _chunks(x: np.ndarray, rows: np.ndarray):
    """float64 [k, F] chunks of x[rows], in order (x may be a memmap: only k rows are read)."""
    k = max(1, CHUNK // max(1, _width(x)))
    for i in range(0, len(rows), k):
        part = _values(x[rows[i:i + k]])
        yield part.reshape(len(part), -1).astype(np.float64)


def _values(x: np.ndarray) -> np.ndarray:
    """The values a model input holds: uint8 images become float32 in [0, 1]."""
    return pixels_to_float(x) if x.dtype == np.uint8 else x


def fills(x: np.ndarray, rows: np.ndarray, missing: dict | None) -> np.ndarray | None:
    """Per-column fill of data.missing's strategy from the rows; None without one. A column
    missing in every row is filled with 0."""
    strategy = (missing or {}).get("strategy")
    if strategy not in FILLS:
        return None
    with warnings.catch_warnings():  # an all-missing column: NaN, then 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        if strategy == "mean":  # numpy's nanmean: the sum of the present values by their count
            total, count = 0.0, 0
            for c in _chunks(x, rows):
                total = total + np.where(np.isnan(c), 0.0, c).sum(axis=0)
                count = count + (~np.isnan(c)).sum(axis=0)
            fill = np.asarray(total / count, dtype=np.float64)
        elif strategy == "constant":
            fill = FILLS["constant"](np.empty((0, _width(x))), missing.get("value", 0))
        else:  # order statistics need each column whole: one column at a time
            flat = x.reshape(len(x), -1)
            fill = np.array([FILLS[strategy](np.concatenate(list(_chunks(flat[:, j], rows))),
                                             None)[0] for j in range(flat.shape[1])])
    return np.where(np.isnan(fill), 0.0, fill)


def _width(x: np.ndarray) -> int:
    return int(np.prod(x.shape[1:]))


def _filled(chunk: np.ndarray, fill: np.ndarray | None) -> np.ndarray:
    return chunk if fill is None else np.where(np.isnan(chunk), fill, chunk)


def moments(x: np.ndarray, rows: np.ndarray, kind: str, fill: np.ndarray | None) -> dict | None:
    """data.normalize's per-feature offset/scale from the (filled) rows (as compute_norm)."""
    if kind in (None, "none"):
        return None
    if kind not in ("standard", "minmax"):
        raise DlcError(f"data.normalize: unknown kind '{kind}'; expected none, standard or minmax")
    total, low, high = 0.0, np.inf, -np.inf
    for c in _chunks(x, rows):
        c = _filled(c, fill)
        total = total + c.sum(axis=0)
        low, high = np.minimum(low, c.min(axis=0)), np.maximum(high, c.max(axis=0))
    if kind == "standard":
        offset = total / len(rows)
        squares = 0.0
        for c in _chunks(x, rows):  # two passes, as numpy's std: squared deviations summed
            d = _filled(c, fill) - offset
            squares = squares + np.multiply(d, d, out=d).sum(axis=0)
        scale = np.sqrt(squares / len(rows))
    else:
        offset, scale = low, high - low
    scale = np.where((high - low == 0) | ~(scale > 0), 1.0, scale)
    return {"kind": kind, "offset": np.asarray(offset).tolist(),
            "scale": np.asarray(scale).tolist()}


def fit(x: np.ndarray, rows: np.ndarray, data: dict) -> dict | None:
    """What the exported graph bakes in: the fills of data.missing and data.normalize's
    statistics, both from the training rows."""
    fill = fills(x, rows, data.get("missing"))
    norm = moments(x, rows, data.get("normalize") or "standard", fill)
    return with_fill(norm, None if fill is None else fill.tolist(), _width(x))


class _Lazy:
    """A split's x kept raw, rows `index` of it turned into model input when a batch is gathered
    (`__getitem__`); np.asarray gathers every row."""

    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = self[:]
        return x if dtype is None else x.astype(dtype)


class Rows(_Lazy):
    """x of one split kept raw: rows `index` of `raw` (the cache's memory-mapped features,
    uint8 images), filled and normalised when gathered, with an in-memory split's arithmetic."""

    def __init__(self, raw: np.ndarray, index: np.ndarray, norm: dict | None, shape: list[int]):
        self.raw, self.index, self.norm = raw, index, norm
        self.shape = (len(index), *shape)
        self.dtype, self.ndim = np.dtype(np.float32), len(self.shape)

    def __getitem__(self, rows) -> np.ndarray:
        x = transform(self.raw[self.index[rows]], self.norm)
        return x.reshape((len(x), *self.shape[1:]))


class Encoded(_Lazy):
    """x of one split of an `input.columns` table kept as its raw columns (numbers, strings),
    encoded (dlc.data.columns.encode: row by row) when a batch is gathered: a table's one-hot
    columns never sit in memory whole (2M rows x 213 encoded columns: 1.7 GB of float32)."""

    def __init__(self, raw: dict[str, np.ndarray], index: np.ndarray, state: dict, dtype):
        self.raw, self.index, self.state = raw, index, state
        self.dtype, self.ndim = np.dtype(dtype), 2
        self.shape = (len(index), width(state, raw))

    def __getitem__(self, rows) -> np.ndarray:
        at = self.index[rows]
        return encode(self.state, {n: v[at] for n, v in self.raw.items()}).astype(self.dtype)


class Gathered(Mapping):
    """Raw columns at `rows`, each gathered only when read: fitting encoders column after
    column (dlc.data.columns.fit) holds one column's training rows at a time, not the table's;
    a Coded column stays coded (its categories are counted by code)."""

    def __init__(self, raw: dict, rows: np.ndarray):
        self.raw, self.rows = raw, rows

    def __getitem__(self, name: str) -> np.ndarray:
        column = self.raw[name]
        return column.take(self.rows) if isinstance(column, Coded) else column[self.rows]

    def __iter__(self):
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


def width(state: dict, raw: dict[str, np.ndarray]) -> int:
    """The encoded width of an input's columns (its first row encoded)."""
    return encode(state, {n: v[:1] for n, v in raw.items()}).shape[1]


def transform(raw: np.ndarray, norm: dict | None) -> np.ndarray:
    """Raw rows (NaN where a cell is missing) -> the float32 the train step takes: filled, then
    normalised; the exported graph repeats both for predict."""
    raw = _values(raw)
    fill = (norm or {}).get("fill")
    if fill is not None:
        flat = raw.reshape(len(raw), -1)
        raw = np.where(np.isnan(flat), np.asarray(fill), flat).reshape(raw.shape)
    return apply_norm(raw, norm)
