"""Time-series windows (`data.window`): a series in time order -> forecasting samples.

A series is a CSV file's columns (one row per time step, in time order) or an npz array `x` of
shape [n] or [n, F]. `data.window: {length: L, horizon: H, stride: S, column: c, columns: [...]}`
makes samples x [L, F] (the `columns`, default just `column`) and targets y [H] (the next H values
of `column`, default the last column) for a regression task.

The series is split in time order before windowing: train is the first part, then val, then test
(fractions of the time steps; data.split.stratify and seed do not apply), so no window straddles a
split boundary and no training window sees a val/test value. Input normalisation statistics are
per column over the training part's time steps, repeated over the L positions (the model bakes
them in). Targets stay in the series' own units (the model predicts raw values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dlc.data._common import as_numeric, check_finite
from dlc.data._csv import _column_index
from dlc.data._table import Table, read_table
from dlc.data._sources import _read_npz, parse_source, resolve_path
from dlc.data._split import _round
from dlc.errors import DlcError


@dataclass(frozen=True)
class Window:
    length: int
    horizon: int
    stride: int
    column: str | int | None  # the target column (None: the last one)
    columns: tuple | None  # the input columns (None: just the target column)

    @property
    def span(self) -> int:
        """Time steps one training sample covers (inputs and targets)."""
        return self.length + self.horizon


@dataclass
class Series:
    inputs: np.ndarray  # float64 [n, F], the input columns
    target: np.ndarray  # float64 [n], the target column
    names: list[str]  # input column names (or "#i")
    display: str  # the source, for messages


def _positive(w: dict, key: str, default: int | None) -> int:
    value = w.get(key, default)
    if value is None:
        raise DlcError(f"data.window.{key} is required (the number of time steps per sample)")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DlcError(f"data.window.{key}: expected an integer >= 1, found {value!r}")
    return value


def window_config(data: dict) -> Window | None:
    """spec["data"]["window"] checked; None when the spec has no window."""
    w = data.get("window")
    if not w:
        return None
    if not isinstance(w, dict):
        raise DlcError(f"data.window: expected a mapping (length, horizon, ...), found {w!r}")
    for key, instead in (("target", "column"), ("features", "columns")):
        if data.get(key) is not None:
            raise DlcError(f"data.{key} does not apply to a window series; "
                           f"use data.window.{instead}")
    columns = w.get("columns")
    if columns is not None and (not isinstance(columns, list) or not columns):
        raise DlcError(f"data.window.columns: expected a non-empty list of columns, "
                       f"found {columns!r}")
    return Window(_positive(w, "length", None), _positive(w, "horizon", 1),
                  _positive(w, "stride", 1), w.get("column"),
                  tuple(columns) if columns else None)


def check_window_spec(spec: dict, win: Window, n_features: int) -> None:
    """The task and input.shape must fit the windows: regression, L x F values per sample."""
    kind = (spec.get("task") or {}).get("kind", "classification")
    if kind != "regression":
        raise DlcError(f"data.window makes regression targets (the next {win.horizon} values); "
                       f"task.kind is {kind}, set it to regression")
    inp = spec.get("input") or {}
    if inp.get("dtype", "float32") != "float32":
        raise DlcError(f"data.window: series windows are float32; input.dtype is {inp['dtype']}")
    shape = [int(d) for d in inp.get("shape") or []]
    if shape and int(np.prod(shape)) != win.length * n_features:
        raise DlcError(f"data.window: samples are [{win.length}, {n_features}] (length "
                       f"{win.length} x {n_features} column{'s' * (n_features != 1)}); input.shape "
                       f"is {shape}, set it to [{win.length}, {n_features}]")


# ---- reading a series ---------------------------------------------------------------------------
def _csv_series(path: Path, display: str, data: dict, win: Window) -> Series:
    table = read_table(path, display, bool(data.get("header", True)))
    target = _column_index(win.column if win.column is not None else -1, table,
                           "data.window.column")
    refs = win.columns if win.columns is not None else (target,)
    inputs = [_column_index(r, table, "data.window.columns") for r in refs]
    used = list(dict.fromkeys([*inputs, target]))
    values = table.numbers(used)
    pos = {c: k for k, c in enumerate(used)}
    return Series(values[:, [pos[i] for i in inputs]], values[:, pos[target]],
                  [table.columns[i] for i in inputs], display)


def _npz_index(ref: object, n: int, key: str, display: str) -> int:
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise DlcError(f"{key}: an npz series names its columns by 0-based index, found {ref!r}")
    if not -n <= ref < n:
        raise DlcError(f"{key}: column index {ref} out of range; the series in {display} has "
                       f"{n} column{'s' * (n != 1)}")
    return ref % n


def _npz_series(path: Path, display: str, data: dict, win: Window) -> Series:
    arrays = _read_npz(path, display)
    key = data.get("x_key") or "x"
    if key not in arrays:
        raise DlcError(f"{display}: no array '{key}' (data.x_key); arrays present: "
                       f"{', '.join(sorted(arrays)) or 'none'}")
    values = as_numeric(arrays[key], f"{display}: {key}")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise DlcError(f"{display}: a series array must be [n] or [n, F] (time first), "
                       f"found shape {list(values.shape)}")
    check_finite(values, f"{display}: {key}")
    f = values.shape[1]
    target = _npz_index(win.column if win.column is not None else -1, f, "data.window.column",
                        display)
    refs = win.columns if win.columns is not None else (target,)
    inputs = [_npz_index(r, f, "data.window.columns", display) for r in refs]
    return Series(values[:, inputs], values[:, target], [f"#{i}" for i in inputs], display)


def load_series(source: str, spec: dict, spec_dir: Path, win: Window, origin: str) -> Series:
    """The input and target columns of a csv: or npz: series, in time order."""
    scheme, rest = parse_source(source)
    if scheme not in ("csv", "npz"):
        raise DlcError(f"data.window needs a csv: or npz: series in time order; "
                       f"'{source}' is not one")
    path = resolve_path(rest, spec_dir, origin)
    data = spec.get("data") or {}
    reader = _csv_series if scheme == "csv" else _npz_series
    series = reader(path, rest, data, win)
    if len(series.target) < win.span:
        raise DlcError(f"{rest}: the series has {len(series.target)} time steps; one window "
                       f"needs length {win.length} + horizon {win.horizon} = {win.span}")
    return series


def read_series_csv(table: Table, win: Window) -> np.ndarray | None:
    """A predict CSV holding the model's input columns by name -> float64 [n, F]; else None."""
    refs = win.columns if win.columns is not None else (win.column,)
    if not table.has_names or not all(isinstance(r, str) and r in table.columns for r in refs):
        return None
    idx = [table.columns.index(r) for r in refs]
    return table.numbers(idx)


# ---- windows and splits -------------------------------------------------------------------------
def _windows(values: np.ndarray, length: int, first: int, count: int, stride: int
             ) -> np.ndarray:
    """Windows of `length` rows of values [n, F] starting at first + i * stride, float32
    [count, length, F]: a strided view of one float32 copy of the series, not `length` copies
    of each value (fancy indexing made those)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    view = sliding_window_view(values, length, axis=0)  # [n - length + 1, F, length]
    return view[first:first + count * stride:stride].transpose(0, 2, 1)


def make_windows(inputs: np.ndarray, target: np.ndarray, win: Window
                 ) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [m, L, F] and y float32 [m, H], read-only views of the series: window i starts
    at i * stride; its targets are the H values right after it. m = (n - L - H) // S + 1 (0 when
    the series is too short)."""
    n, f = inputs.shape
    m = (n - win.span) // win.stride + 1 if n >= win.span else 0
    if not m:
        return np.zeros((0, win.length, f), np.float32), np.zeros((0, win.horizon), np.float32)
    x = _windows(inputs, win.length, 0, m, win.stride)
    y = _windows(target[:, None], win.horizon, win.length, m, win.stride)[:, :, 0]
    return x, y


def input_windows(inputs: np.ndarray, win: Window) -> np.ndarray:
    """Every input window for prediction, float32 [m, L, F], aligned so the last one ends at the
    series' last time step (its prediction is the forecast past the end)."""
    n = len(inputs)
    if n < win.length:
        raise DlcError(f"the series has {n} time steps; the model's windows need {win.length}")
    first = (n - win.length) % win.stride
    return _windows(inputs, win.length, first, (n - win.length - first) // win.stride + 1,
                    win.stride)


def split_series(n: int, val: float, test: float, win: Window, display: str
                 ) -> list[tuple[int, int]]:
    """[(start, stop)] of train, val and test, in time order (fractions of the n time steps).
    A part too short for one window is an error unless its fraction is 0."""
    n_test, n_val = _round(test * n), _round(val * n)
    bounds = [0, n - n_val - n_test, n - n_test, n]
    parts = list(zip(bounds[:-1], bounds[1:]))
    for name, frac, (a, b) in zip(("train", "val", "test"), (1.0, val, test), parts):
        if frac > 0 and b - a < win.span:
            what = "the rest" if name == "train" else f"{name} {frac:g}"
            raise DlcError(
                f"data.split: the {name} part of {display} ({what} of {n} time steps) has "
                f"{b - a}; one window needs length {win.length} + horizon {win.horizon} = "
                f"{win.span}; use a longer series, a shorter window or a larger {name} fraction")
    return parts


def window_norm(norm: dict | None, length: int) -> dict | None:
    """Per-column statistics (of the training time steps) repeated over the window positions:
    the flattened [L, F] order the model's input normalisation uses."""
    if norm is None:
        return None
    return {"kind": norm["kind"], "offset": list(norm["offset"]) * length,
            "scale": list(norm["scale"]) * length}
