"""Encoders: a raw record batch of a table -> the arrays dlc trains on, one batch at a time.

The cache (dlc.data.cache) streams a table through an encoder and appends what it returns to
memory-mapped files; what is learnt from the training rows (fills, normalisation: dlc.data.stats)
is fitted afterwards, on the encoded arrays. An encoder states what it reads (`columns`, and the
Arrow types a CSV reader must give them) and what its output depends on (`key`), so that a
changed setting builds a new cache. TableEncoder is the numeric-features encoder of a single
`input:`; the column-kinds encoder (dlc.data.encode_columns.ColumnEncoder) plugs in through the
same members (columns, key, prepare, encode, finish, meta)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlc.data._csv import _feature_indices, _target_index
from dlc.data._table import Table
from dlc.data._targets import encode_cells
from dlc.errors import DlcError


@dataclass
class TableEncoder:
    """Features -> float32 [n, F] (NaN where data.missing lets a cell be missing; rows with one
    dropped under strategy drop); the target -> codes of its distinct cells (classes) or float32
    [n, 1] (regression). `finish` turns the codes into class indices once every value is seen."""

    display: str
    names: list[str]  # every column of the file
    features: list[str]
    target: str
    kind: str  # task.kind
    missing: dict
    labels: list[str] | None = None  # task.labels, or a trained model's class names
    strict: bool = False  # a trained model's: every target cell among its labels
    source: Path | None = None  # the CSV streamed, whose lines name a bad cell's row
    header: bool = True
    _codes: dict[str, int] = field(default_factory=dict)  # target cell -> code, as first seen
    _first: list[int] = field(default_factory=list)  # the row where each code first appears

    @classmethod
    def for_spec(cls, spec: dict, display: str, names: list[str],
                 labels: list[str] | None = None) -> TableEncoder:
        data, inp = spec.get("data") or {}, spec.get("input") or {}
        header = Table.of_names(display, names, bool(data.get("header", True)))
        target = _target_index(data, header, True, int(np.prod(inp.get("shape") or [0])))
        fcols = _feature_indices(data, header, target, inp.get("features"))
        task = spec.get("task") or {}
        return cls(display, names, [names[i] for i in fcols], names[target],
                   task.get("kind", "classification"), data.get("missing") or {},
                   labels or task.get("labels"), labels is not None)

    @property
    def reads_missing(self) -> bool:
        """Whether a missing marker in a number column reads as null (NaN), not an error."""
        return bool(self.missing)

    def table(self, batch: pa.RecordBatch, first_row: int) -> Table:
        """One streamed batch (rows from `first_row` of the file) as a Table whose messages
        name a cell by its CSV line (or row)."""
        return Table(self.display, batch.schema.names, True, pa.Table.from_batches([batch]),
                     None, self.header, first_row, self.source)

    def meta(self) -> dict:
        """What the cache's metadata keeps beside the arrays."""
        return {"features": self.features}

    def prepare(self, stream) -> None:
        """Before a build: nothing to learn from the file first (see ColumnEncoder)."""

    @property
    def columns(self) -> dict[str, pa.DataType]:
        """The columns read, with the type a CSV reader gives them (streamed blocks must agree:
        a type guessed from the first block could fail on a later one)."""
        kinds = {n: pa.float64() for n in self.features}
        kinds[self.target] = pa.float64() if self.kind == "regression" else pa.string()
        return kinds

    def key(self) -> dict:
        """What the encoded arrays depend on (part of the cache key)."""
        return {"encoder": "table/2", "features": self.features, "target": self.target,
                "kind": self.kind, "drop": self.missing.get("strategy") == "drop",
                "missing": bool(self.missing), "labels": self.labels, "strict": self.strict}

    def encode(self, batch: pa.RecordBatch, first_row: int) -> dict[str, np.ndarray]:
        """One batch (rows from `first_row` of the file) -> {"x": float32, "y": codes or
        values}; DlcError naming the row of a bad cell."""
        names = batch.schema.names
        table = self.table(batch, first_row)
        x = table.numbers([names.index(n) for n in self.features], bool(self.missing))
        column = names.index(self.target)
        if self.kind == "regression":
            y = table.numbers([column]).astype(np.float32)
        else:
            y = self._target_codes(table.data.column(column), first_row + np.arange(len(x)))
        if self.missing.get("strategy") == "drop":
            keep = ~np.isnan(x).any(axis=1)
            x, y = x[keep], y[keep]
        return {"x": x.astype(np.float32), "y": y}

    def _target_codes(self, column: pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
        """The code of each target cell (rows: the file row of each, for messages)."""
        cells = pc.utf8_trim_whitespace(pc.cast(column, pa.string())).combine_chunks()
        coded = cells.dictionary_encode()
        lookup = np.empty(len(coded.dictionary), np.int32)
        for i, value in enumerate(coded.dictionary.to_pylist()):  # distinct cells: few
            if value not in self._codes:
                self._codes[value] = len(self._codes)
                self._first.append(int(rows[pc.index(cells, value).as_py()]))
            lookup[i] = self._codes[value]
        return lookup[coded.indices.to_numpy(zero_copy_only=False)]

    def finish(self, y: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
        """The codes of every row -> (targets, class names), by the rules of a column read whole
        (dlc.data._targets.encode_cells) applied to the distinct cells."""
        if self.kind == "regression":
            return y, None
        cells = list(self._codes)
        empty = self.table(pa.record_batch({}), 0)
        where = lambda i: empty.where(self._first[i])  # noqa: E731
        per_cell, labels = encode_cells(cells, self.kind, self.labels, self.strict, where,
                                        self.target)
        if per_cell.dtype.kind in "iu":  # class ids in the narrowest type: 1 byte a row, not 8
            per_cell = per_cell.astype(np.min_scalar_type(int(per_cell.max(initial=0))))
        return per_cell[y], labels


def batch_error(display: str, e: Exception) -> DlcError:
    """An Arrow error while streaming a table, as one line."""
    text = (str(e).splitlines() or [type(e).__name__])[0]
    return DlcError(f"{display}: cannot read: {text}")
