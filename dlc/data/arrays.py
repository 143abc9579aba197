"""The containers of a loaded data set (Split, Dataset) and the raw arrays of one source
(load_arrays): below dlc.data's dispatch and dlc.data.multi, which both use them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc.data._common import fit_shape
from dlc.data._images import pixels_to_float
from dlc.data._sources import load_raw, parse_source, resolve_path
from dlc.data._split import apply_norm
from dlc.data.text import load_text_csv, text_config
from dlc.data.windows import Window, check_window_spec, load_series, make_windows, window_config
from dlc.errors import DlcError


@dataclass
class Split:
    """x: float32 [n, *input_shape] (int64 [n, T] token ids for text), or for a cached table
    or images a dlc.data.stats.Rows view, kept raw, that gives float32 rows when indexed
    (np.asarray(x) gives them all); y: int64 [n]
    (classification), float32 [n, 1] (binary), float32 [n, k] (regression; [n, horizon] for
    windows)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Dataset:
    train: Split
    val: Split | None
    test: Split | None
    labels: list[str] | None  # class names (classification/binary); None for regression
    features: list[str] | None  # per-feature names when known
    norm: dict | None  # {"kind", "offset", "scale"}: x_norm = (x_raw - offset) / scale
    text: dict | None = None  # text data: tokenizer settings and vocabulary (TextSpec.to_meta())
    categories: dict | None = None  # several inputs: {input: {column: values}} (data/multi.py)
    columns: dict | None = None  # input.columns: the encoders' state (data/columns.py)
    # with `outputs:`, y of each split is a Columns mapping (output -> targets) and labels a
    # mapping (output -> class names or None)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Apply this data set's normalisation to raw x [n, *input_shape] -> float32."""
        return apply_norm(x, self.norm)

    @property
    def n_classes(self) -> int | None:
        return len(self.labels) if self.labels is not None else None


def load_arrays(
    source: str,
    spec: dict,
    spec_dir: Path,
    require_target: bool = True,
    labels: list[str] | None = None,
    origin: str = "data.source in spec",
    pixels: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None]:
    """Raw (x, y, labels, features) from one source, x float32 [n, *input.shape] unnormalised.

    Column options (target, features, header, x_key, y_key) come from spec["data"] when present.
    `labels`: the model's class names; categorical targets must be among them (strict), integer
    targets must index them. Without it, task.labels is used when it covers the data. With
    require_target false, a missing target column/array gives y None. `origin` names where the
    source came from in the file-not-found message (e.g. "--data").

    With data.window: every window of the whole series (no split). With data.text: x the raw
    texts, strings [n] (a trained model tokenises them itself).
    Images: float32 in [0, 1] (`pixels`: uint8)."""
    task = spec.get("task") or {}
    known = list(labels) if labels else (list(task["labels"]) if task.get("labels") else None)
    win = window_config(spec.get("data") or {})
    if win is not None:
        return _window_arrays(source, spec, Path(spec_dir), win, origin)
    ts = text_config(spec)
    if ts is not None:
        path, display = text_csv_path(source, spec_dir, origin, "data.text")
        texts, y, found = load_text_csv(path, display, spec, ts, known, bool(labels),
                                        require_target)
        return np.array(texts, dtype=object), y, found, None
    x, y, found, features = load_raw(
        source, spec, Path(spec_dir), known, bool(labels), require_target, origin
    )
    shape = (spec.get("input") or {}).get("shape") or list(x.shape[1:])
    x = fit_shape(x if pixels or x.dtype != np.uint8 else pixels_to_float(x), shape, str(source))
    return x, y, found, features


def text_csv_path(source: str, spec_dir: Path, origin: str, key: str) -> tuple[Path, str]:
    scheme, rest = parse_source(source)
    if scheme != "csv":
        raise DlcError(f"{key} needs a csv: source with a text column; found '{source}'")
    return resolve_path(rest, Path(spec_dir), origin), rest


def _window_arrays(source: str, spec: dict, spec_dir: Path, win: Window, origin: str):
    series = load_series(source, spec, spec_dir, win, origin)
    check_window_spec(spec, win, series.inputs.shape[1])
    x, y = make_windows(series.inputs, series.target, win)
    shape = (spec.get("input") or {}).get("shape") or list(x.shape[1:])
    return x.reshape((len(x), *shape)), y, None, None
