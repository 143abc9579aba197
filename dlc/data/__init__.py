"""Data loading for training, evaluation and prediction.

Sources (`data.source`): `builtin:digits|iris|wine|breast_cancer|diabetes` (scikit-learn's bundled
copies, shipped as package data), `csv:PATH`, `npz:PATH`, `folder:PATH` (one sub-folder of PNG/JPEG images per class; paths
relative to the spec file). Image arrays are channels-first; `data.layout: nhwc` reads
channels-last arrays. `data.augment` is checked here and applied per training batch by the trainer
(`dlc.data.augment.augment`). `data.window` turns a csv/npz series into forecasting windows
(`dlc.data.windows`, split in time order); `data.text` turns a CSV of raw text into token ids with a
vocabulary from the training split (`dlc.data.text`, stored in the model as `Dataset.text`);
`input.columns` (or `columns` per `inputs:` entry) encodes table columns by kind with encoders
learnt from the training split (`dlc.data.columns`, stored as `Dataset.columns`). Every
data problem raises a one-line DlcError. Pillow is imported lazily, only for folder sources.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlc.data._inputs import _csv_table, read_inputs
from dlc.data import cache, stats
from dlc.data._common import fit_shape
from dlc.data._csv import load_column_table
from dlc.data._sources import TABLES, parse_source, resolve_path
from dlc.data._split import apply_norm, check_split_sizes, compute_norm, split_indices
from dlc.data.arrays import Dataset, Split, load_arrays, text_csv_path
from dlc.data.augment import check_augment
from dlc.data.columns import column_config, entries, fit, learnt_vocab
from dlc.data.multi import Columns, check_ids, load_multi
from dlc.data.text import TextSpec, load_text_csv, read_texts, text_config
from dlc.data.windows import (Window, check_window_spec, input_windows, load_series, make_windows,
                              read_series_csv, split_series, window_config, window_norm)
from dlc.errors import DlcError
from dlc.files.untrusted import check_file

__all__ = ["Dataset", "Split", "TextSpec", "load_arrays", "load_dataset", "model_inputs",
           "read_inputs"]

_SPLIT_DEFAULTS = {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0}


def _split_config(data: dict) -> dict:
    cfg = dict(_SPLIT_DEFAULTS)
    cfg.update({k: v for k, v in (data.get("split") or {}).items() if v is not None})
    for key in ("val", "test"):
        if not 0 <= float(cfg[key]) < 1:
            raise DlcError(f"data.split.{key}: expected a fraction in [0, 1), found {cfg[key]}")
    return cfg


def _subset(x: np.ndarray, y: np.ndarray, idx: np.ndarray, norm: dict | None) -> Split:
    xs = x[idx] if x.dtype == np.int64 else stats.transform(x[idx], norm)  # ids stay ids
    return Split(np.ascontiguousarray(xs), np.ascontiguousarray(y[idx]))


def load_dataset(spec: dict, spec_dir: Path) -> Dataset:
    """Load spec's data.source, split it (test first, then val; fractions of the whole set) and
    normalise every split with statistics of the training split. data.augment is only checked
    against the input shape here; the trainer applies it per batch. data.window and data.text
    have their own paths (time-order split; vocabulary from the training split)."""
    if entries(spec) and not spec.get("outputs"):
        return _columns_dataset(spec, Path(spec_dir))
    if spec.get("inputs") or spec.get("outputs"):  # several named inputs or outputs: one CSV
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
    cached, (x, y, labels, features), shape = _arrays(spec, Path(spec_dir))
    check_augment(data.get("augment"), shape)
    tr, va, te = _random_split(spec, y, len(x), _split_config(data))
    if (spec.get("input") or {}).get("dtype") == "int64":  # token ids: exact, never normalised
        x, norm = _as_ids(x, spec, data["source"]), None
    else:
        norm = stats.fit(x, tr, data)

    def subset(idx: np.ndarray) -> Split | None:
        if not len(idx):
            return None
        if cached or x.dtype == np.uint8:  # raw until a batch is gathered
            return Split(stats.Rows(x, idx, norm, shape), np.ascontiguousarray(y[idx]))
        return _subset(x, y, idx, norm)

    return Dataset(subset(tr), subset(va), subset(te), labels, features, norm)


def _arrays(spec: dict, spec_dir: Path) -> tuple[bool, tuple, list]:
    """(whether memory-mapped, (x, y, labels, features), input shape) of data.source: a table
    from the data cache (x stays raw on disk, each batch normalised) or arrays in memory."""
    data = spec["data"]
    table = cache.table_source(spec, spec_dir)
    if table is None:
        arrays = load_arrays(data["source"], spec, spec_dir, pixels=True)
        return False, arrays, list(arrays[0].shape[1:])
    arrays = cache.open_table(*table, spec)
    shape = list((spec.get("input") or {}).get("shape") or arrays[0].shape[1:])
    fit_shape(arrays[0][:0], shape, data["source"])  # the same check as for a table in memory
    return True, arrays, shape


def table_arrays(source: str, spec: dict, spec_dir: Path, labels: list[str] | None,
                 origin: str) -> tuple:
    """load_arrays with a target for a trained model (dlc evaluate --data): a table that
    data.cache sends to the cache (auto: from 64 MiB) comes memory-mapped, raw (the model fills
    and normalises), so that it is never read whole; anything else is read into memory."""
    data = spec.get("data") or {}
    own = {**spec, "data": {**data, "source": source}}
    table = None if window_config(data) or text_config(spec) else \
        cache.table_source(own, spec_dir, origin)
    if table is None:
        return load_arrays(source, spec, spec_dir, require_target=True, labels=labels,
                           origin=origin)
    x, y, found, features = cache.open_table(*table, own, labels)
    return fit_shape(x, (spec.get("input") or {}).get("shape") or x.shape[1:], source), y, \
        found, features


def _as_ids(x: np.ndarray, spec: dict, source: str) -> np.ndarray:
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
    columns = compute_norm(series.inputs[slice(*parts[0])], data.get("normalize") or "standard")
    inputs = apply_norm(series.inputs, columns)  # per time step: the windows stay views
    splits = []
    for start, stop in parts:
        if stop <= start:  # a split fraction of 0: no such part
            splits.append(None)
            continue
        x, y = make_windows(inputs[start:stop], series.target[start:stop], win)
        splits.append(Split(x.reshape((len(x), *shape)), y) if len(x) else None)
    return Dataset(splits[0], splits[1], splits[2], None, None, window_norm(columns, win.length))


def read_columns(source: str, spec: dict, spec_dir: Path, labels: list[str] | None = None,
                 require_target: bool = True, origin: str = "data.source in spec"):
    """(raw columns, y, labels, kinds) of an `input.columns` model's table source (see
    dlc.data._csv.load_column_table); `labels`: a trained model's class names (strict)."""
    scheme, rest = parse_source(source)
    if scheme not in TABLES:
        raise DlcError(f"input.columns reads a table (csv:, parquet:, feather:); found '{source}'")
    task = spec.get("task") or {}
    known = list(labels) if labels else (list(task["labels"]) if task.get("labels") else None)
    return load_column_table(resolve_path(rest, spec_dir, origin), rest, spec, known,
                             bool(labels), require_target, scheme)


def column_table(spec: dict, spec_dir: Path):
    """read_columns of data.source, through the data cache where data.cache sends the table
    (memory-mapped columns: dlc.data.encode_columns), else read into memory."""
    table = cache.table_source(spec, spec_dir)
    if table is not None:
        return cache.open_columns(*table, spec)
    return read_columns(spec["data"]["source"], spec, spec_dir)


def _columns_dataset(spec: dict, spec_dir: Path) -> Dataset:
    """Tables with column kinds (input.columns, or columns per `inputs:` entry): split, learn
    each input's encoders from the training rows (dlc.data.columns.fit), encode each batch's
    rows when gathered (stats.Encoded); the exported graph repeats the encoding from the raw
    columns (dlc.model.columns).
    The spec is resolved in place: each column's kind (`auto` inferred), each input's encoded
    width as its shape and an embedding's learnt vocab_size, which the network and the stored
    spec then use."""
    data = spec["data"]
    raw, y, labels, kinds = column_table(spec, spec_dir)
    tr, va, te = _random_split(spec, y, len(y), _split_config(data))
    inputs, states = fit_columns(spec, raw, tr, kinds)

    def subset(idx: np.ndarray) -> Split | None:  # each batch encoded when gathered
        if not len(idx):
            return None
        return Split(column_rows(spec, inputs, states, idx), np.ascontiguousarray(y[idx]))

    return Dataset(subset(tr), subset(va), subset(te), labels, None, None, columns=states)


def fit_columns(spec: dict, raw: dict[str, np.ndarray], train: np.ndarray,
                kinds: dict[str, str] | None = None) -> tuple[dict, dict]:
    """(inputs: name -> (its raw columns, dtype); encoder states by input name) of raw table
    columns, each input's encoders fitted on the `train` rows only (kinds: the resolved kind of
    each column, else the spec's). The spec is resolved in place (kinds, encoded widths, learnt
    vocab_size), as the network that reads these rows needs it."""
    data, inputs, states = spec["data"], {}, {}
    for name, entry in entries(spec).items():
        config = {n: {**column_config(c), **({"kind": kinds[n]} if kinds else {})}
                  for n, c in entry["columns"].items()}
        states[name] = fit(config, stats.Gathered({n: raw[n] for n in config}, train),
                           data.get("normalize") or "standard", data.get("missing"))
        dtype = np.int64 if entry.get("dtype") == "int64" else np.float32
        inputs[name] = ({n: raw[n] for n in config}, dtype)
        entry.update(columns=config, shape=[stats.width(states[name], inputs[name][0])])
        learnt_vocab(spec, name, states[name])
    return inputs, states


def column_rows(spec: dict, inputs: dict, states: dict, idx: np.ndarray):
    """The rows `idx` of fitted column inputs (fit_columns), each batch encoded when gathered
    (stats.Encoded): an input's array, or Columns by input name for `inputs:`."""
    xs = Columns({n: stats.Encoded(cols, idx, states[n], dtype)
                  for n, (cols, dtype) in inputs.items()})
    return xs if spec.get("inputs") else xs["input"]


def _text_dataset(spec: dict, spec_dir: Path, ts: TextSpec) -> Dataset:
    """Split the texts like any table (stratified), build the vocabulary from the training
    texts only, and encode every split with it (no normalisation: x are token ids)."""
    data = spec["data"]
    if data.get("augment"):
        raise DlcError("data.augment does not apply to text (token ids); remove it")
    path, display = text_csv_path(data["source"], spec_dir, "data.source in spec", "data.text")
    task = spec.get("task") or {}
    texts, y, labels = load_text_csv(path, display, spec, ts, task.get("labels"), False)
    tr, va, te = _random_split(spec, y, len(texts), _split_config(data))
    built = ts.build(texts[i] for i in tr)
    x = built.encode(texts)

    def subset(idx: np.ndarray) -> Split | None:
        return Split(x[idx], np.ascontiguousarray(y[idx])) if len(idx) else None

    return Dataset(subset(tr), subset(va), subset(te), labels, None, None, built.to_meta())


def graph_fills(spec: dict) -> bool:
    """Whether the model's graph fills missing feature cells (data.missing with a fill
    strategy), so that its raw inputs may hold NaN; under drop (or without data.missing) a
    missing cell is refused where predict reads it."""
    return ((spec.get("data") or {}).get("missing") or {}).get("strategy") not in (None, "drop")


def model_inputs(path: Path, spec: dict, features: list[str] | None = None) -> np.ndarray:
    """`dlc predict` inputs for a trained model (its resolved spec and stored metadata).

    Text models (data.text): the raw texts, strings [n], from a .txt file (one per line) or a CSV
    (the text column by name, or a single column); the model tokenises them itself.
    Window models (data.window): a CSV series holding the input columns by name -> every window,
    the last ending at the series' end. Otherwise, and for ready-made windows, `read_inputs`."""
    path = Path(path)
    shape = [int(d) for d in spec["input"]["shape"]]
    ts = text_config(spec)
    if ts is not None:
        check_file(path, "input file")
        return np.array(read_texts(path, ts.column), dtype=object)
    win = window_config(spec.get("data") or {})
    if win is not None and path.suffix.lower() == ".csv" and path.is_file():
        values = read_series_csv(_csv_table(path), win)
        if values is not None:
            return input_windows(values, win).reshape((-1, *shape))
    data = spec.get("data") or {}
    x = read_inputs(path, features, shape, data.get("layout", "nchw"), missing=graph_fills(spec))
    if spec["input"].get("dtype") == "int64":  # ids, checked against the embedding's vocabulary
        return _as_ids(x, spec, path.name)
    return x
