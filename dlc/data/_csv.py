"""Table data sources (CSV, Parquet, Feather): the target/feature column selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlc.data._common import suggest
from dlc.data._table import Table, read_table
from dlc.data.columns import (column_config, dropped_rows, infer_kind, is_missing,
                              raw_columns, table_columns)
from dlc.data._targets import encode_cells
from dlc.data.strings import distinct, distinct_codes, stripped_cells
from dlc.errors import DlcError


def _column_index(ref: object, table: Table, key: str) -> int:
    """A column named by header name or 0-based index -> its index; DlcError otherwise."""
    n = len(table.columns)
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise DlcError(f"{key}: expected a column name or 0-based index, found {ref!r}")
    if isinstance(ref, int):
        if not -n <= ref < n:
            raise DlcError(
                f"{key}: column index {ref} out of range; {table.display} has {n} columns"
            )
        return ref % n
    if not table.has_names:
        raise DlcError(
            f"{key}: '{ref}' is a column name but data.header is false; use a 0-based index"
        )
    if ref not in table.columns:
        raise DlcError(
            f"{key}: column '{ref}' not in {table.display}; {suggest(ref, table.columns)}"
        )
    return table.columns.index(ref)


def _target_index(data: dict, table: Table, require: bool, n_inputs: int) -> int | None:
    """The target column's index, or None when it is absent and not required."""
    ref = data.get("target")
    if require:
        return _column_index(ref if ref is not None else -1, table, "data.target")
    if isinstance(ref, str):
        return table.columns.index(ref) if ref in table.columns else None
    feats = data.get("features")
    if ref is None and feats and table.has_names and all(isinstance(f, str) for f in feats):
        return None if table.columns[-1] in feats else len(table.columns) - 1
    if len(table.columns) == n_inputs:  # exactly the model's inputs: no target column
        return None
    return _column_index(ref if ref is not None else -1, table, "data.target")


def _feature_indices(
    data: dict, table: Table, target: int | None, input_features: list[str] | None
) -> list[int]:
    """data.features (names or indices), else input.features when all present, else the rest."""
    refs = data.get("features")
    if refs:
        out = [_column_index(r, table, "data.features") for r in refs]
        if target is not None and target in out:
            raise DlcError(
                f"data.features: column '{table.columns[target]}' is also the target column"
            )
        return out
    if input_features and table.has_names and all(f in table.columns for f in input_features):
        out = [table.columns.index(f) for f in input_features]
        if target not in out:
            return out
    return [i for i in range(len(table.columns)) if i != target]


def load_table(
    path: Path,
    display: str,
    spec: dict,
    known: list[str] | None,
    strict: bool,
    require_target: bool,
    kind: str = "csv",
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None]:
    """(x float64 [n, F], y or None, labels, features) from a CSV, Parquet or Feather file."""
    table = read_table(path, display, bool((spec.get("data") or {}).get("header", True)), kind)
    target, fcols = feature_columns(spec, table, require_target)
    x, y, labels = feature_cells(table, spec, fcols, target, known, strict)
    features = [table.columns[i] for i in fcols] if table.has_names else \
        (spec.get("input") or {}).get("features")
    return x, y, labels, features


def feature_columns(spec: dict, table: Table, require_target: bool
                    ) -> tuple[int | None, list[int]]:
    """(target index or None, feature indices) of a table of numeric features; `table` may hold
    only the header (a streamed one)."""
    data, inp = spec.get("data") or {}, spec.get("input") or {}
    target = _target_index(data, table, require_target, int(np.prod(inp.get("shape") or [0])))
    return target, _feature_indices(data, table, target, inp.get("features"))


def feature_cells(table: Table, spec: dict, fcols: list[int], target: int | None,
                  known: list[str] | None, strict: bool):
    """(x float64, y or None, labels) of one table of numeric features, read whole or a
    streamed batch (dlc.data.stream): the one rule of both. See load_table."""
    missing = (spec.get("data") or {}).get("missing") or {}
    x = table.numbers(fcols, missing=bool(missing))
    kind = spec.get("task", {}).get("kind", "classification")
    if target is None:
        return x, None, known if kind != "regression" else None
    y, labels = encode_cells(table.strings(target), kind, known, strict, table.where,
                             table.columns[target])
    if missing.get("strategy") == "drop":  # rows with a missing feature: not trained, not scored
        keep = ~np.isnan(x).any(axis=1)
        x, y = x[keep], y[keep]
    return x, y, labels


def load_column_table(path: Path, display: str, spec: dict, known: list[str] | None,
                      strict: bool, require_target: bool, kind: str = "csv"):
    """(raw columns, y or None, labels, kinds) of an input with column kinds (`input.columns`;
    kinds as written, `auto` resolved: see resolve_kinds). Rows with a missing cell in a
    `missing: drop` column are left out when there is a target (training, evaluation), refused
    by line otherwise (predict); rows whose target cell is missing are left out (a label no one
    knows)."""
    data = spec.get("data") or {}
    table = read_table(path, display, bool(data.get("header", True)), kind)
    target = column_target(spec, table, require_target)
    kinds = resolve_kinds(table_columns(spec), table)
    raw, y, labels = column_cells(table, spec, kinds, target, known, strict)
    return raw, y, labels, kinds


def column_target(spec: dict, table: Table, require_target: bool) -> int | None:
    """The target column's index in a table of input.columns (whose every column it checks);
    None when absent and not required. `table` may hold only the header (a streamed one)."""
    for name in table_columns(spec):
        _column_index(name, table, "the columns of input.columns")
    return _target_index({**(spec.get("data") or {}), "features": list(table_columns(spec))},
                         table, require_target, -1)


def column_cells(table: Table, spec: dict, kinds: dict[str, str], target: int | None,
                 known: list[str] | None, strict: bool):
    """(raw columns, y or None, labels) of one table of input.columns, read whole or a
    streamed batch (dlc.data.stream): the one rule of both. See load_column_table."""
    config = table_columns(spec)
    raw = raw_columns(table, list(config), kinds)
    drop = dropped_rows({n: {**column_config(c), "kind": kinds[n]} for n, c in config.items()},
                        raw, (spec.get("data") or {}).get("missing"))
    if target is None:
        if drop.any():
            raise DlcError(f"{table.where(int(np.argmax(drop)))}: a missing cell in a column "
                           "whose missing values are dropped (missing: drop); fill it")
        return raw, None, known
    keep = ~drop & ~is_missing(stripped_cells(table.text(target)))
    rows = np.flatnonzero(keep)  # the target's rules on its distinct cells, spread to the rows
    cells, codes, first = distinct_codes(table.text(target).take(rows))
    y, labels = encode_cells(cells, spec.get("task", {}).get("kind", "classification"), known,
                             strict, lambda i: table.where(int(rows[first[i]])),
                             table.columns[target])
    return {k: v[keep] for k, v in raw.items()}, y[codes], labels


def resolve_kinds(config: dict, table: Table) -> dict[str, str]:
    """Each column's kind: as written, or (auto) inferred from its cells (infer_kind), where
    free text and identifiers are refused: one-hot would give each distinct value a column."""
    kinds = {}
    for name, value in config.items():
        kind = column_config(value).get("kind", "auto")
        if kind == "auto":
            kind = auto_kind(name, stripped_cells(table.text(table.columns.index(name))))
        kinds[name] = kind
    return kinds


def auto_kind(name: str, cells: np.ndarray) -> str:
    """`auto`'s kind of a column (infer_kind), never text nor an identifier: DlcError saying
    what to write instead."""
    kind = infer_kind(cells)
    if kind in ("numeric", "binary", "categorical"):
        return kind
    found = f"{len(distinct(cells)):,} distinct values in {len(cells):,} rows"
    if kind == "text":
        raise DlcError(f"input.columns.{name}: auto found free text ({found}); declare it "
                       "{kind: text} under an int64 input of its own, as dlc init writes it "
                       "(see docs/your-own-data.md), or categorical with a min_frequency")
    raise DlcError(f"input.columns.{name}: auto found an identifier ({found}: a value per row), "
                   "which no category generalises from; leave the column out, or declare it "
                   "categorical with a min_frequency")
