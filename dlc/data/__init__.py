"""Data loading for training, evaluation and prediction.

Sources (`data.source`): `builtin:digits|iris|wine|breast_cancer|diabetes` (scikit-learn's bundled
copies, shipped as package data), `csv:PATH`, `npz:PATH`, `folder:PATH` (one sub-folder of PNG/JPEG images per class; paths
relative to the spec file). Image arrays are channels-first; `data.layout: nhwc` reads
channels-last arrays. `data.augment` is checked here and applied per training batch by the trainer
(`dlc.data.augment.augment`). `data.window` turns a csv/npz series into forecasting windows
(`dlc.data.windows`, split in time order); `data.text` turns a CSV of raw text into token ids with a
vocabulary from the training split (`dlc.data.text`, stored in the model as `Dataset.text`). Every
data problem raises a one-line DlcError. Pillow is imported lazily, only for folder sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc.data._common import fit_shape
from dlc.data._inputs import _csv_table, read_inputs
from dlc.data._sources import load_raw, parse_source, resolve_path
from dlc.data._split import apply_norm, check_split_sizes, compute_norm, split_indices
from dlc.data.augment import check_augment
from dlc.data.text import TextSpec, load_text_csv, read_texts, text_config
from dlc.data.windows import (Window, check_window_spec, input_windows, load_series,
                              make_windows, read_series_csv, split_series, window_config,
                              window_norm)
from dlc.errors import DlcError
from dlc.files.untrusted import check_file

__all__ = ["Dataset", "Split", "TextSpec", "load_arrays", "load_dataset", "model_inputs",
           "read_inputs"]

_SPLIT_DEFAULTS = {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0}


@dataclass
class Split:
    """x: float32 [n, *input_shape] (int64 [n, T] token ids for text); y: int64 [n]
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
    text: dict | TextSpec | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None]:
    """Raw (x, y, labels, features) from one source, x float32 [n, *input.shape] unnormalised.

    Column options (target, features, header, x_key, y_key) come from spec["data"] when present.
    `labels`: the model's class names; categorical targets must be among them (strict), integer
    targets must index them. Without it, task.labels is used when it covers the data. With
    require_target false, a missing target column/array gives y None. `origin` names where the
    source came from in the file-not-found message (e.g. "--data").

    With data.window: every window of the whole series (no split). With data.text: x int64 token
    ids, tokenised with `text` (a trained model's stored settings and vocabulary)."""
    task = spec.get("task") or {}
    known = list(labels) if labels else (list(task["labels"]) if task.get("labels") else None)
    win = window_config(spec.get("data") or {})
    if win is not None:
        return _window_arrays(source, spec, Path(spec_dir), win, origin)
    if text_config(spec) is not None:
        stored = TextSpec.from_meta(text) if isinstance(text, dict) else text
        if stored is None:
            raise DlcError("data.text: tokenising needs a trained model's vocabulary; "
                           "evaluate a model trained with dlc train")
        path, display = _csv_path(source, spec_dir, origin, "data.text")
        texts, y, found = load_text_csv(path, display, spec, stored, known, bool(labels),
                                        require_target)
        return stored.encode(texts), y, found, None
    x, y, found, features = load_raw(
        source, spec, Path(spec_dir), known, bool(labels), require_target, origin
    )
    shape = (spec.get("input") or {}).get("shape") or list(x.shape[1:])
    x = fit_shape(x, shape, str(source))
    return x, y, found, features


def _csv_path(source: str, spec_dir: Path, origin: str, key: str) -> tuple[Path, str]:
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


def _split_config(data: dict) -> dict:
    cfg = dict(_SPLIT_DEFAULTS)
    cfg.update({k: v for k, v in (data.get("split") or {}).items() if v is not None})
    for key in ("val", "test"):
        if not 0 <= float(cfg[key]) < 1:
            raise DlcError(f"data.split.{key}: expected a fraction in [0, 1), found {cfg[key]}")
    return cfg


def _subset(x: np.ndarray, y: np.ndarray, idx: np.ndarray, norm: dict | None) -> Split:
    xs = x[idx] if x.dtype == np.int64 else apply_norm(x[idx], norm)  # ids stay ids
    return Split(np.ascontiguousarray(xs), np.ascontiguousarray(y[idx]))


def load_dataset(spec: dict, spec_dir: Path) -> Dataset:
    """Load spec's data.source, split it (test first, then val; fractions of the whole set) and
    normalise every split with statistics of the training split. data.augment is only checked
    against the input shape here; the trainer applies it per batch. data.window and data.text
    have their own paths (time-order split; vocabulary from the training split)."""
    if spec.get("inputs") or spec.get("outputs"):  # several named inputs or outputs: one CSV
        from dlc.data.multi import load_multi

        return load_multi(spec, spec_dir)
    data = spec.get("data") or {}
    if not data.get("source"):
        raise DlcError("the spec has no data.source; add a data: section to train or evaluate")
    win = window_config(data)
    if win is not None:
        return _window_dataset(spec, Path(spec_dir), win)
    ts = text_config(spec)
    if ts is not None:
        return _text_dataset(spec, Path(spec_dir), ts)
    x, y, labels, features = load_arrays(data["source"], spec, spec_dir)
    assert y is not None
    check_augment(data.get("augment"), x.shape[1:])
    tr, va, te = _random_split(spec, y, len(x), _split_config(data))
    if (spec.get("input") or {}).get("dtype") == "int64":  # token ids: exact, never normalised
        x, norm = _as_ids(x, spec, data["source"]), None
    else:
        norm = compute_norm(x[tr], data.get("normalize") or "standard")
    return Dataset(
        train=_subset(x, y, tr, norm),
        val=_subset(x, y, va, norm) if len(va) else None,
        test=_subset(x, y, te, norm) if len(te) else None,
        labels=labels,
        features=features,
        norm=norm,
    )


def _as_ids(x: np.ndarray, spec: dict, source: str) -> np.ndarray:
    from dlc.data.multi import check_ids

    if (x != np.round(x)).any() or (x < 0).any():
        raise DlcError(f"{source}: an int64 input needs non-negative integer ids")
    ids, per = x.astype(np.int64), int(np.prod(x.shape[1:]))
    check_ids(spec, "input", ids, lambda at: f"{source}: sample {at // per}")
    return ids


def _random_split(spec: dict, y: np.ndarray, n: int, cfg: dict):
    """(train, val, test) indices: shuffled, stratified for class targets when asked."""
    kind = (spec.get("task") or {}).get("kind", "classification")
    classes = bool(cfg["stratify"]) and kind in ("classification", "binary")
    val, test = float(cfg["val"]), float(cfg["test"])
    tr, va, te = split_indices(y, n, val, test, classes, int(cfg["seed"]))
    check_split_sizes(n, val, test, (len(tr), len(va), len(te)))
    return tr, va, te


def _window_dataset(spec: dict, spec_dir: Path, win: Window) -> Dataset:
    """Split the series in time order (train, val, test), then window each part; input
    statistics from the training part's time steps; targets unnormalised."""
    data = spec["data"]
    series = load_series(data["source"], spec, spec_dir, win, "data.source in spec")
    n_features = series.inputs.shape[1]
    check_window_spec(spec, win, n_features)
    shape = (spec.get("input") or {}).get("shape") or [win.length, n_features]
    check_augment(data.get("augment"), shape)
    cfg = _split_config(data)
    parts = split_series(len(series.target), float(cfg["val"]), float(cfg["test"]), win,
                         series.display)
    norm = window_norm(series.inputs[slice(*parts[0])], data.get("normalize") or "standard",
                       win.length)
    splits = []
    for start, stop in parts:
        if stop <= start:  # a split fraction of 0: no such part
            splits.append(None)
            continue
        x, y = make_windows(series.inputs[start:stop], series.target[start:stop], win)
        x = apply_norm(x, norm).reshape((len(x), *shape)) if len(x) else x
        splits.append(Split(x, y) if len(x) else None)
    return Dataset(splits[0], splits[1], splits[2], None, None, norm)


def _text_dataset(spec: dict, spec_dir: Path, ts: TextSpec) -> Dataset:
    """Split the texts like any table (stratified), build the vocabulary from the training
    texts only, and encode every split with it (no normalisation: x are token ids)."""
    data = spec["data"]
    if data.get("augment"):
        raise DlcError("data.augment does not apply to text (token ids); remove it")
    path, display = _csv_path(data["source"], spec_dir, "data.source in spec", "data.text")
    task = spec.get("task") or {}
    texts, y, labels = load_text_csv(path, display, spec, ts, task.get("labels"), False)
    tr, va, te = _random_split(spec, y, len(texts), _split_config(data))
    built = ts.build(texts[i] for i in tr)
    x = built.encode(texts)

    def subset(idx: np.ndarray) -> Split | None:
        return Split(x[idx], np.ascontiguousarray(y[idx])) if len(idx) else None

    return Dataset(subset(tr), subset(va), subset(te), labels, None, None, built.to_meta())


def model_inputs(path: Path, spec: dict, features: list[str] | None = None,
                 text: dict | None = None) -> np.ndarray:
    """`dlc predict` inputs for a trained model (its resolved spec and stored metadata).

    Text models (data.text): raw texts from a .txt file (one per line) or a CSV (the text column
    by name, or a single column), tokenised with the stored vocabulary `text` -> int64 [n, T].
    Window models (data.window): a CSV series holding the input columns by name -> every window,
    the last ending at the series' end. Otherwise, and for ready-made windows, `read_inputs`."""
    path = Path(path)
    shape = [int(d) for d in spec["input"]["shape"]]
    if text_config(spec) is not None:
        if text is None:
            raise DlcError("this model stores no vocabulary (dlc.text); only a model trained "
                           "with dlc train can tokenise raw text")
        check_file(path, "input file")
        stored = TextSpec.from_meta(text)
        return stored.encode(read_texts(path, stored.column))
    win = window_config(spec.get("data") or {})
    if win is not None and path.suffix.lower() == ".csv" and path.is_file():
        values = read_series_csv(_csv_table(path), win)
        if values is not None:
            return input_windows(values, win).reshape((-1, *shape))
    layout = (spec.get("data") or {}).get("layout", "nchw")
    x = read_inputs(path, features, shape, layout)
    if spec["input"].get("dtype") == "int64":  # ids, checked against the embedding's vocabulary
        return _as_ids(x, spec, path.name)
    return x
