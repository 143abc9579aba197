"""Column kinds of a table input (`input.columns`): per-column encoders learnt from the training
split, as a pure step the in-graph front (dlc.model.columns) repeats exactly.

    fit(config, raw columns of the training rows, normalize) -> state (JSON: travels in the model)
    encode(state, raw columns) -> float32 [n, width]

Raw columns are what a CSV holds: a numeric column is float64 with NaN for a missing cell, a
categorical or binary one an object array of stripped strings where a missing cell keeps its
marker (`""`, `NA`, ... : MISSING). Kinds: numeric (missing cells filled, then normalised;
`indicator` adds a 0/1 column), categorical (one-hot over the training vocabulary, values seen
fewer than `min_frequency` times and unseen ones go to the last, out-of-vocabulary, column),
binary (two values -> 0/1 in sorted order), text (free text -> max_length token ids through the
model's text front, dlc.model.text_front, with a vocabulary of the training split: an int64 input,
read by an embedding). `missing: drop` rows are left out of training and
refused at predict time; the default fill is data.missing's strategy, else median (numeric) or
most_frequent (categorical, binary).
"""

from __future__ import annotations

import warnings

import numpy as np

from dlc.data import strings
from dlc.data._split import FILLS, compute_norm
from dlc.data._table import MISSING, Table
from dlc.data.tokens import TextSpec
from dlc.errors import DlcError

MARKERS = sorted(MISSING)
_CATEGORY_FILLS = ("most_frequent", "constant", "drop")  # what a string column can be filled by
MANY_VALUES = 20  # a string column with more distinct values may be text or an identifier
TEXT_WORDS = 3  # ... text when its cells hold this many words on average
TEXT = {"max_length": 32, "vocab_size": 10000, "min_frequency": 1, "lowercase": True}


def column_config(value) -> dict:
    """One `input.columns` entry: a kind (`island: categorical`) or a mapping -> a mapping."""
    return {"kind": value} if isinstance(value, str) else dict(value or {})


def infer_kind(cells: np.ndarray) -> str:
    """The kind of a column from all its cells (stripped): numeric when every present cell is a
    number, binary for two distinct values, categorical for other strings, except a string
    column whose distinct values are over half its cells (and over MANY_VALUES): `text` when
    its cells hold TEXT_WORDS words on average, else `identifier` (a value per row). The one
    rule of `auto` (dlc.data._csv.resolve_kinds) and of `dlc init`."""
    present = cells[~is_missing(cells)]
    values = strings.distinct(present)
    if len(values) == 2:
        return "binary"
    try:
        [float(c) for c in values]
    except ValueError:
        if len(values) <= max(MANY_VALUES, len(cells) // 2):
            return "categorical"
        return "text" if mean_words(present) >= TEXT_WORDS else "identifier"
    return "numeric"


def mean_words(cells: np.ndarray) -> float:
    """The mean number of words (whitespace-separated) of the cells."""
    return float(np.mean([len(c.split()) for c in cells])) if len(cells) else 0.0


def raw_columns(table: Table, names: list[str], kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """The raw cells of the named columns (kinds: name -> kind; 'auto' resolved by the caller)."""
    out = {}
    for name in names:
        c = table.columns.index(name)
        if kinds[name] == "numeric":  # float32, as the model's input and the data cache
            out[name] = table.numbers([c], missing=True)[:, 0].astype(np.float32)
        else:
            out[name] = strings.stripped_cells(table.text(c))
    return out


def is_missing(values: np.ndarray) -> np.ndarray:
    """bool [n]: the missing cells of one raw column."""
    if values.dtype == object:
        return strings.is_in(values, MARKERS)
    return np.isnan(values)


def strategy(cfg: dict, kind: str, default: dict | None) -> str:
    """The column's missing-value strategy: its own, else data.missing's, else the kind's."""
    chosen = cfg.get("missing") or (default or {}).get("strategy")
    if kind != "numeric" and chosen not in _CATEGORY_FILLS:
        chosen = "most_frequent"  # a mean of categories: data.missing's numeric strategy
    return chosen or "median"


def dropped_rows(config: dict, raw: dict, default: dict | None) -> np.ndarray:
    """bool [n]: rows with a missing cell in a `missing: drop` column."""
    drop = np.zeros(len(next(iter(raw.values()))), bool)
    for name, values in raw.items():
        cfg = column_config(config[name])
        if strategy(cfg, cfg["kind"], default) == "drop":
            drop |= is_missing(values)
    return drop


def _counts(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    return strings.counts(values, MARKERS)


def _fit_numeric(cfg: dict, how: str, values: np.ndarray, normalize: str, name: str) -> dict:
    """The fill and the normalisation of one column; one float64 copy of its training rows,
    filled in place (a 2M-row table's column: 16 MB, the fit's peak a few of them)."""
    fill, value, values = None, cfg.get("value", 0), values.astype(np.float64)
    if how == "constant" and not isinstance(value, (int, float)):
        raise DlcError(f"input.columns.{name}.value: a numeric column's fill is a number, "
                       f"not {value!r}")
    if how != "drop":
        with warnings.catch_warnings():  # a column missing in every training row: 0
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = float(FILLS[how](values[:, None], float(value))[0])
        fill = 0.0 if np.isnan(fill) else fill
    absent = np.isnan(values)
    if fill is None:  # missing: drop, whose training rows hold no missing cell
        values = values[~absent]
    else:
        values[absent] = fill
    norm = compute_norm(values[:, None], normalize) if normalize else None
    return {"fill": fill, "offset": norm["offset"][0] if norm else 0.0,
            "scale": norm["scale"][0] if norm else 1.0}


def _fit_categories(cfg: dict, how: str, values: np.ndarray, kind: str, name: str) -> dict:
    names, counts = _counts(values)
    if kind == "binary":
        if len(names) > 2:
            raise DlcError(f"input.columns.{name}: binary, but the training rows hold "
                           f"{len(names)} values ({', '.join(names[:4])}, ...); use categorical")
        keep = names
    else:
        keep = [v for v, k in zip(names, counts) if k >= int(cfg.get("min_frequency", 1))]
    state = {"values": keep, "fill": None}
    if how == "constant":
        state["fill"] = str(cfg.get("value", ""))
    elif how == "most_frequent" and len(names):
        state["fill"] = names[int(np.argmax(counts))]
    return state


def _fit_text(cfg: dict, how: str, values: np.ndarray) -> dict:
    """A text column's front settings and its vocabulary, built from the training split's texts
    as data.text builds its own (TextSpec.build); a missing cell is an empty text (no tokens)
    unless filled with a constant."""
    settings = {**TEXT, **{k: cfg[k] for k in TEXT if k in cfg}}
    fill = str(cfg.get("value", "")) if how == "constant" else ""
    spec = text_spec(settings).build(np.where(is_missing(values), fill, values).tolist())
    return {**settings, "fill": fill, "vocab": list(spec.vocab)}


def text_spec(c: dict) -> TextSpec:
    """The TextSpec of a text column's settings (and vocabulary, once fitted)."""
    return TextSpec(c.get("name", "text"), "word", int(c["max_length"]), bool(c["lowercase"]),
                    int(c["vocab_size"]), int(c["min_frequency"]), tuple(c.get("vocab", ())))


def fit(config: dict, raw: dict[str, np.ndarray], normalize: str | None,
        default: dict | None = None) -> dict:
    """The encoder state learnt from the training rows' raw columns (config: input.columns with
    kinds resolved; default: data.missing, whose strategy and value hold where a column sets
    none)."""
    columns, ids = [], 0  # ids: embedding columns share one id space, each after the last
    for name, values in raw.items():
        cfg = column_config(config[name])
        if "missing" not in cfg and "value" in (default or {}):
            cfg["value"] = default["value"]
        kind, how = cfg["kind"], strategy(cfg, cfg["kind"], default)
        entry = {"name": name, "kind": kind, "drop": how == "drop",
                 "indicator": bool(cfg.get("indicator", False))}
        if kind == "numeric":
            entry.update(_fit_numeric(cfg, how, values, normalize, name))
        elif kind == "text":
            entry.update(_fit_text(cfg, how, values), offset=ids)
            ids += len(entry["vocab"])
        else:
            entry.update(_fit_categories(cfg, how, values, kind, name))
        if kind == "categorical" and cfg.get("encoding") == "embedding":
            entry.update(embedding=True, offset=ids)
            ids += len(entry["values"]) + 1
        columns.append(entry)
    return {"markers": MARKERS, "columns": columns, "ids": ids}


def entries(spec: dict) -> dict[str, dict]:
    """The spec's inputs that take table columns by kind (the spec's own mappings)."""
    found = spec["inputs"] if spec.get("inputs") else {"input": spec.get("input") or {}}
    return {name: cfg for name, cfg in found.items() if cfg.get("columns")}


def width(c: dict) -> int:
    """How many encoded columns one fitted column takes (encode's layout, in state order)."""
    kind = {"numeric": 1, "binary": 1, "text": c.get("max_length")}.get(c["kind"])
    own = kind or (1 if c.get("embedding") else len(c["values"]) + 1)
    return own + int(c["indicator"])


def table_columns(spec: dict) -> dict:
    """Every input's columns, by column name: what is read from the table."""
    return {col: cfg for e in entries(spec).values() for col, cfg in e["columns"].items()}


def learnt_vocab(spec: dict, name: str, state: dict) -> None:
    """Embedding layers reading input `name` without a vocab_size get its number of ids; one
    with a smaller vocab_size is an error (its Gather would fail mid-training)."""
    first = next(iter(entries(spec))) == name and not spec["layers"][0].get("inputs")
    for i, layer in enumerate(spec["layers"]):
        reads = name in (layer.get("inputs") or []) or (i == 0 and first)
        if layer.get("type") != "embedding" or not reads:
            continue
        if not layer.get("vocab_size"):
            layer["vocab_size"] = state["ids"]
        elif layer["vocab_size"] < state["ids"]:
            raise DlcError(f"layers[{i}].vocab_size: {layer['vocab_size']} ids, but the "
                           f"categorical columns of input '{name}' have {state['ids']}; leave "
                           "vocab_size out to use the number learnt")


def category_table(c: dict, markers: list[str]) -> tuple[list[str], list[int], int]:
    """(keys, ids, default) of a categorical or binary column: its values number 0, 1, ...;
    a missing marker takes the fill's id (categorical without a fill in the vocabulary: the
    out-of-vocabulary id); any other value the default: the out-of-vocabulary id of a
    categorical column, the fill's of a binary one. The graph's LabelEncoder holds this table."""
    values = list(c["values"])
    oov = len(values) if c["kind"] == "categorical" else 0
    fill = values.index(c["fill"]) if c["fill"] in values else oov
    keys = values + [m for m in markers if m not in values]
    ids = list(range(len(values))) + [fill] * (len(keys) - len(values))
    return keys, ids, oov if c["kind"] == "categorical" else fill


def absent_cells(c: dict, values: np.ndarray) -> np.ndarray:
    """bool [n]: the cells that count as missing for a fitted column (its fill, its indicator):
    a missing marker; in a binary column also a value the training split never held, which no
    0/1 could stand for (the graph front's rule too: dlc.model.columns)."""
    if c["kind"] == "binary":
        return ~strings.is_in(values, c["values"])
    return is_missing(values)


def _encode_one(c: dict, values: np.ndarray, markers: list[str]) -> list[np.ndarray]:
    absent = absent_cells(c, values)
    if c["kind"] == "numeric":
        x = values.astype(np.float32)
        if c["fill"] is not None:
            x = np.where(absent, np.float32(c["fill"]), x)
        parts = [(x - np.float32(c["offset"])) / np.float32(c["scale"])]
    elif c["kind"] == "text":
        ids = text_spec(c).encode(np.where(absent, c["fill"], values).tolist())
        parts = list((ids + c["offset"]).T)
    else:
        keys, ids, default = category_table(c, markers)
        found = strings.lookup(values, keys, ids, default)
        if c["kind"] == "binary":
            parts = [found.astype(np.float32)]
        elif c.get("embedding"):
            parts = [found + c["offset"]]
        else:
            parts = list((found[:, None] == np.arange(len(c["values"]) + 1)[None]).T)
    if c["indicator"]:
        parts.append(absent)
    return [p.astype(np.float32) for p in parts]


def encode(state: dict, raw: dict[str, np.ndarray]) -> np.ndarray:
    """float32 [n, encoded width]: each column's encoding, in state order (the graph front's)."""
    parts = []
    for c in state["columns"]:
        if c["name"] not in raw:
            raise DlcError(f"no column '{c['name']}', which the model expects")
        parts += _encode_one(c, raw[c["name"]], state["markers"])
    return np.stack(parts, axis=1).astype(np.float32)
