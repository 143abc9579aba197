"""A table streamed in record batches for `dlc predict` and `dlc evaluate --data`: a trained
model's inputs (and targets) one batch at a time, so that a table bigger than memory is never
read whole (a 2M-row CSV with string columns: ~750 MiB read whole).

The batches are the data cache's (dlc.data.cache: CSV blocks through pyarrow.csv.open_csv with
the readers' options, Parquet row groups, Feather batches); each is a `Table` whose messages
name a bad cell by its CSV line, turned into raw inputs by the very function that reads a table
whole: dlc.data._csv.column_cells (columns by kind), Table.numbers (numeric features). Every
column is read as text, as the cache reads columns by kind; Table.numbers casts a number column
from it (tests/test_stream.py: the same bytes as the typed column of a table read whole)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dlc.data._csv import column_cells, column_target, feature_cells, feature_columns
from dlc.data._inputs import input_columns, is_number
from dlc.data._sources import TABLES, parse_source, resolve_path
from dlc.data._table import CONVERT, PARSE, TABLE_SUFFIXES, Table, name_refused_row
from dlc.data.cache import (BLOCK, HEAD, column_names, csv_read_options, record_batches,
                            table_source)
from dlc.data.columns import column_config, table_columns
from dlc.data.encode import batch_error
from dlc.errors import DlcError
from dlc.files.untrusted import check_file


def tables(path: Path, display: str, kind: str, header: bool, wanted: list[str]
           ) -> Iterator[Table]:
    """The `wanted` columns (named as dlc.data.cache.column_names names them), as text, one
    Table a record batch; a ragged CSV row or a bad byte is named by its line."""
    try:
        names = column_names(path, kind, header)  # dlc.data.cache's, to name its batches' columns
        batches = record_batches(path, kind, header, names, dict.fromkeys(wanted, pa.string()))
        seen = 0
        for batch in batches:
            yield Table(display, wanted, header, pa.Table.from_batches([batch]), None, header,
                        seen, path if kind == "csv" else None)
            seen += batch.num_rows
    except (pa.ArrowException, ValueError, OSError) as e:
        if kind == "csv" and isinstance(e, pa.ArrowInvalid):
            name_refused_row(path, display, header)
        raise batch_error(display, e) from None
    if seen == 0:
        raise DlcError(f"{display}: no data rows")


def column_batches(source: str, spec: dict, spec_dir: Path, labels: list[str] | None,
                   require_target: bool, origin: str):
    """(raw columns, y or None) per batch of an input.columns model's table, as
    dlc.data.read_columns reads them whole; None where it must be read whole (a column of kind
    `auto`, resolved from all its cells; class names to learn from the targets)."""
    config = table_columns(spec)
    kinds = {n: column_config(c).get("kind", "auto") for n, c in config.items()}
    if "auto" in kinds.values():
        return None
    table = _source(source, spec, spec_dir, labels, require_target, origin)
    if table is None:
        return None
    path, display, scheme, header, head = table
    target = column_target(spec, head, require_target)
    wanted = list(dict.fromkeys([*config, *([head.columns[target]] if target is not None
                                            else [])]))
    at = None if target is None else wanted.index(head.columns[target])
    return (column_cells(t, spec, kinds, at, labels, bool(labels))[:2]
            for t in tables(path, display, scheme, header, wanted))


def feature_batches(source: str, spec: dict, spec_dir: Path, labels: list[str] | None,
                    origin: str):
    """(x float64, y) per batch of a one-input model's table of numeric features with its
    targets, as dlc.data.load_arrays reads them whole; None where it is read otherwise: from
    the data cache where data.cache sends it (dlc.data.table_arrays), or whole (see _source)."""
    own = {**spec, "data": {**(spec.get("data") or {}), "source": source}}
    table = _source(source, spec, spec_dir, labels, True, origin)
    if table is None or table_source(own, spec_dir, origin):
        return None
    path, display, scheme, header, head = table
    target, fcols = feature_columns(spec, head, True)
    wanted = [head.columns[i] for i in [*fcols, target]]
    return (feature_cells(t, spec, list(range(len(fcols))), len(fcols), labels, True)[:2]
            for t in tables(path, display, scheme, header, wanted))


def _source(source: str, spec: dict, spec_dir: Path, labels: list[str] | None,
            require_target: bool, origin: str) -> tuple | None:
    """(path, display, kind, header, a Table of the column names) of a table source to stream
    with its targets; None for a source that is not a table, or when a class model's targets
    are to be scored without its class names (learnt from every target cell when read whole)."""
    scheme, rest = parse_source(source)
    classes = (spec.get("task") or {}).get("kind") != "regression"
    if scheme not in TABLES or require_target and classes and not labels:
        return None
    path = resolve_path(rest, spec_dir, origin)
    header = bool((spec.get("data") or {}).get("header", True))
    return path, rest, scheme, header, _head(path, rest, scheme, header)


def input_batches(path: Path, features: list[str] | None, need: int, missing: bool
                  ) -> Iterator[np.ndarray] | None:
    """float64 [n, need] per batch of a table of numeric features, the columns picked as
    dlc.data._inputs.read_inputs picks them (a CSV has a header when its first row is not all
    numbers); None for a file that is not a table."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return None
    check_file(path, "input file")
    header = kind != "csv" or not _first_row_numbers(path)
    head = _head(path, path.name, kind, header)
    wanted = [head.columns[c] for c in input_columns(head, features, need)]
    return (t.numbers(list(range(len(wanted))), missing)
            for t in tables(path, path.name, kind, header, wanted))


def _head(path: Path, display: str, kind: str, header: bool) -> Table:
    """A Table of the file's column names only."""
    try:
        return Table.of_names(display, column_names(path, kind, header), header)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise batch_error(display, e) from None


def _first_row_numbers(path: Path) -> bool:
    """Whether every cell of the CSV's first row is a number (read from one small block, as
    cache._csv_names reads the header)."""
    def first(block: int) -> pa.RecordBatch:
        reader = pacsv.open_csv(path, read_options=csv_read_options(False, block),
                                parse_options=PARSE, convert_options=CONVERT)
        return reader.read_next_batch()

    try:
        try:
            batch = first(HEAD)
        except pa.ArrowInvalid:  # a row wider than HEAD
            batch = first(BLOCK)
    except (pa.ArrowException, ValueError, OSError, StopIteration) as e:
        raise batch_error(path.name, e) from None
    return all(is_number(str(c[0].as_py())) for c in batch.columns)
