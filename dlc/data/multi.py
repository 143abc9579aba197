"""Several named inputs from one CSV file (`inputs:` in the spec).

Each input takes the columns named in its `features`. A float32 input parses them as numbers and
is normalised with training-split statistics; an int64 input treats them as categories: per
column, each value seen in the training split gets an id (1, 2, ... in sorted order, offset so
that the columns of one input share one id space) and anything else gets 0. The category table
travels in the exported model so `dlc predict` takes raw values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlc.data._common import parse_float, suggest
from dlc.data._csv import Table, read_table
from dlc.data._split import apply_norm, check_split_sizes, compute_norm, split_indices
from dlc.data._targets import encode_cells
from dlc.errors import DlcError


class Inputs(dict):
    """name -> array, indexed by rows like one array: `x[idx]`, `x[a:b]`, `len(x)`."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return Inputs({k: v[key] for k, v in self.items()})

    def __len__(self) -> int:
        return len(next(iter(self.values()))) if dict.__len__(self) else 0


def _columns(table: Table, names: list[str], what: str) -> list[int]:
    out = []
    for name in names:
        if name not in table.columns:
            raise DlcError(f"{what}: column '{name}' not in {table.display}"
                           f"{suggest(name, table.columns)}")
        out.append(table.columns.index(name))
    return out


def _floats(table: Table, cols: list[int]) -> np.ndarray:
    return np.asarray([[parse_float(row[c], f"{table.display}:{line}", table.columns[c])
                        for c in cols] for row, line in zip(table.rows, table.lines)], np.float32)


def categories_of(table: Table, cols: list[int], rows: np.ndarray) -> dict[str, list[str]]:
    """Per column, the sorted values seen in `rows` (the training split)."""
    return {table.columns[c]: sorted({table.rows[r][c].strip() for r in rows}) for c in cols}


def encode_categories(cells: list[list[str]], columns: list[str],
                      cats: dict[str, list[str]]) -> np.ndarray:
    """Raw category cells [n, k] -> int64 ids; column j's values follow columns before it."""
    ids, offset = np.zeros((len(cells), len(columns)), np.int64), 0
    for j, name in enumerate(columns):
        index = {v: offset + 1 + i for i, v in enumerate(cats[name])}
        ids[:, j] = [index.get(row[j].strip(), 0) for row in cells]
        offset += len(cats[name])
    return ids


def load_multi(spec: dict, spec_dir: Path):
    """Dataset whose x are `Inputs`; norm is {input: norm}; `categories` {input: {col: values}}."""
    from dlc.data import Dataset, Split

    data, task = spec.get("data") or {}, spec["task"]
    source = str(data.get("source", ""))
    if not source.startswith("csv:"):
        raise DlcError("several named inputs (`inputs:`) read their columns from a csv: source")
    path = Path(source[4:])
    path = path if path.is_absolute() else spec_dir / path
    if not path.is_file():
        raise DlcError(f"data file not found: {source[4:]} (from data.source in spec)")
    table = read_table(path, source[4:], bool(data.get("header", True)))
    target = data.get("target", table.columns[-1])
    (t,) = _columns(table, [target], "data.target")
    y, labels = encode_cells([row[t] for row in table.rows], task["kind"], task.get("labels"),
                             False, lambda i: f"{table.display}:{table.lines[i]}", target)
    split = {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0, **(data.get("split") or {})}
    strat = split["stratify"] and task["kind"] != "regression"
    tr, va, te = split_indices(y, len(y), split["val"], split["test"], strat, split["seed"])
    check_split_sizes(len(y), split["val"], split["test"], (len(tr), len(va), len(te)))
    xs, norms, cats = _inputs(spec, data, table, tr)
    subset = lambda idx: Split(xs[idx], np.ascontiguousarray(y[idx])) if len(idx) else None  # noqa: E731
    return Dataset(subset(tr), subset(va), subset(te), labels, None, norms, categories=cats)


def _inputs(spec: dict, data: dict, table: Table, train_rows: np.ndarray):
    xs, norms, cats = Inputs(), {}, {}
    for name, cfg in spec["inputs"].items():
        names = cfg.get("features")
        if not names:
            raise DlcError(f"inputs.{name}.features: name the CSV columns this input takes")
        cols = _columns(table, names, f"inputs.{name}.features")
        if cfg.get("dtype", "float32") == "int64":
            cats[name] = categories_of(table, cols, train_rows)
            cells = [[row[c] for c in cols] for row in table.rows]
            xs[name] = encode_categories(cells, names, cats[name]).reshape(-1, *cfg["shape"])
            norms[name] = None
            continue
        x = _floats(table, cols).reshape(-1, *cfg["shape"])
        norms[name] = compute_norm(x[train_rows], data.get("normalize") or "standard")
        xs[name] = apply_norm(x, norms[name])
    return xs, norms, cats


def read_multi(source: str, spec: dict, categories: dict, labels: list[str] | None,
               require_target: bool):
    """Raw inputs (and targets, when present or required) of a multi-input model from a CSV,
    encoded with the model's stored category table: for `dlc predict` and `dlc evaluate`."""
    path = Path(source[4:] if source.startswith("csv:") else source)
    if not path.is_file():
        raise DlcError(f"input file not found: {path}")
    data = spec.get("data") or {}
    table = read_table(path, str(path), bool(data.get("header", True)))
    xs = Inputs()
    for name, cfg in spec["inputs"].items():
        names = cfg.get("features")
        if not names:
            raise DlcError(f"inputs.{name}.features: the model names no CSV columns for input "
                           f"'{name}'")
        if len(names) != int(np.prod(cfg["shape"])):
            raise DlcError(f"inputs.{name}: {len(names)} columns do not fill shape "
                           f"{list(cfg['shape'])}")
        cols = _columns(table, names, f"inputs.{name}.features")
        if cfg.get("dtype", "float32") == "int64":
            stored = categories.get(name)
            if not isinstance(stored, dict) or not all(isinstance(stored.get(c), list)
                                                       for c in names):
                raise DlcError(f"this model stores no category ids for input '{name}' "
                               "(dlc.categories); only a model trained with dlc train can "
                               "encode categorical columns")
            cells = [[row[c] for c in cols] for row in table.rows]
            xs[name] = encode_categories(cells, names, stored)
        else:
            xs[name] = _floats(table, cols)
        xs[name] = xs[name].reshape(-1, *cfg["shape"])
    target = data.get("target", table.columns[-1])
    if target not in table.columns:
        if require_target:
            raise DlcError(f"--data: target column '{target}' not in {path}")
        return xs, None
    t = table.columns.index(target)
    y, _ = encode_cells([row[t] for row in table.rows], spec["task"]["kind"], labels, True,
                        lambda i: f"{table.display}:{table.lines[i]}", target)
    return xs, y
