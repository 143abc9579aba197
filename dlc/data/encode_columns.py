"""The cache encoder of a table with column kinds (`input.columns`): a record batch -> the raw
columns dlc.data.read_columns gives, in a compact form that is appended to memory-mapped files
(dlc.data.cache), so that a table of strings never sits in memory whole.

What the cache holds does not depend on the split: a numeric column as float32 (NaN where
missing), a categorical or binary one as int32 codes into its distinct cells (kept in the
cache's metadata, in order of first appearance), a text column as its UTF-8 bytes and the end
offset of each cell. Rows a `missing: drop` column or a missing target leaves out are not
written. Encoders are learnt per run from the training rows (dlc.data.columns.fit, one
column's rows gathered at a time), as from a table read into memory, to the same bits: the
cells a split gathers are the very strings and float32 values the in-memory reader gives."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dlc.data._csv import _column_index, _target_index, auto_kind
from dlc.data._table import Table
from dlc.data.columns import column_config, dropped_rows, is_missing, table_columns
from dlc.data.encode import TableEncoder
from dlc.data.strings import Coded, stripped_cells


@dataclass
class ColumnEncoder(TableEncoder):
    """Features by kind -> numbers, codes or text bytes per column (`c<i>`, by position in
    input.columns: any column name is a file name then); the target as TableEncoder's."""

    config: dict = field(default_factory=dict)  # column -> its input.columns mapping
    kinds: dict = field(default_factory=dict)  # column -> kind (`auto` until `prepare`)
    _values: dict = field(default_factory=dict)  # string column -> {cell: code}
    _bytes: dict = field(default_factory=dict)  # text column -> UTF-8 bytes written so far

    @classmethod
    def for_spec(cls, spec: dict, display: str, names: list[str],
                 labels: list[str] | None = None) -> ColumnEncoder:
        data, task = spec.get("data") or {}, spec.get("task") or {}
        config = {n: column_config(c) for n, c in table_columns(spec).items()}
        header = Table.of_names(display, names, bool(data.get("header", True)))
        for name in config:
            _column_index(name, header, "the columns of input.columns")
        target = _target_index({**data, "features": list(config)}, header, True, -1)
        return cls(display, names, list(config), names[target],
                   task.get("kind", "classification"), data.get("missing") or {},
                   task.get("labels"), config=config,
                   kinds={n: c.get("kind", "auto") for n, c in config.items()})

    @property
    def reads_missing(self) -> bool:
        return False  # every column is read as text; Table.numbers reads the markers

    @property
    def columns(self) -> dict[str, pa.DataType]:
        return dict.fromkeys([*self.features, self.target], pa.string())

    def key(self) -> dict:
        return {"encoder": "columns/1", "columns": self.config, "target": self.target,
                "kind": self.kind, "missing": self.missing, "labels": self.labels}

    def meta(self) -> dict:
        return {"features": self.features, "kinds": self.kinds,
                "values": {n: list(v) for n, v in self._values.items()}}

    def prepare(self, stream) -> None:
        """Resolve `auto` kinds as a table read whole does (dlc.data._csv.auto_kind), from
        each such column's cells: one column in memory at a time (`stream(columns)`: the
        file's record batches of those columns)."""
        for name in [n for n in self.features if self.kinds[n] == "auto"]:
            parts = [stripped_cells(self.table(b, 0).text(0)) for b in stream({name: pa.string()})]
            self.kinds[name] = auto_kind(name, np.concatenate(parts) if parts else
                                         np.array([], dtype=object))

    def encode(self, batch: pa.RecordBatch, first_row: int) -> dict[str, np.ndarray]:
        """One batch -> {"y": target codes or values, "c<i>": column i's arrays} for its kept
        rows; DlcError naming the line (or row) of a bad cell."""
        table, names = self.table(batch, first_row), batch.schema.names
        raw = {n: table.numbers([names.index(n)], missing=True)[:, 0]
               if self.kinds[n] == "numeric" else stripped_cells(table.text(names.index(n)))
               for n in self.features}
        keep = ~dropped_rows({n: {**c, "kind": self.kinds[n]} for n, c in self.config.items()},
                             raw, self.missing)
        t = names.index(self.target)
        if self.kind == "regression":  # a missing value is a row no one can score
            y = table.numbers([t], missing=True)
            keep &= ~np.isnan(y[:, 0])
            out = {"y": y[keep].astype(np.float32)}
        else:
            keep &= ~is_missing(stripped_cells(table.text(t)))
            rows = np.flatnonzero(keep)
            out = {"y": self._target_codes(table.data.column(t).take(rows), first_row + rows)}
        for i, name in enumerate(self.features):
            out.update(self._column(f"c{i}", name, raw[name][keep]))
        return out

    def _column(self, key: str, name: str, cells: np.ndarray) -> dict[str, np.ndarray]:
        """One column's arrays of the kept rows."""
        kind = self.kinds[name]
        if kind == "numeric":
            return {key: cells.astype(np.float32)}
        text = pa.array(cells, pa.large_string())
        if kind == "text":
            offsets = np.frombuffer(text.buffers()[1], np.int64)[:len(text) + 1]
            data = text.buffers()[2]
            utf8 = np.frombuffer(data, np.uint8)[:offsets[-1]] if data else np.zeros(0, np.uint8)
            base = self._bytes.get(name, 0)
            self._bytes[name] = base + int(offsets[-1])
            return {f"{key}.ends": offsets[1:] + base, f"{key}.utf8": utf8}
        coded = text.dictionary_encode()
        seen = self._values.setdefault(name, {})
        lookup = np.array([seen.setdefault(v, len(seen)) for v in coded.dictionary.to_pylist()],
                          np.int32)
        return {key: lookup[coded.indices.to_numpy(zero_copy_only=False)]}


class Texts:
    """A text column as its UTF-8 bytes and each cell's end offset (memory-mapped, read as one
    Arrow array without a copy); `column[rows]` is the object array of those rows' texts."""

    def __init__(self, ends: np.ndarray, utf8: np.ndarray):
        offsets = np.concatenate([np.zeros(1, np.int64), ends])
        self.cells = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets),
                                                      pa.py_buffer(utf8))

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        return np.array(self.cells.take(pa.array(rows)).to_pylist(), dtype=object)


def raw_columns(arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """The cache's columns by name, as read_columns gives them (numbers: float32 memmaps)."""
    out = {}
    for i, name in enumerate(meta["features"]):
        kind = meta["kinds"][name]
        if kind == "numeric":
            out[name] = arrays[f"c{i}"]
        elif kind == "text":
            out[name] = Texts(arrays[f"c{i}.ends"], arrays[f"c{i}.utf8"])
        else:
            out[name] = Coded(arrays[f"c{i}"], meta["values"][name])
    return out
