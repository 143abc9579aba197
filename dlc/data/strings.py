"""String columns of a table through pyarrow.compute: raw cells read, counted and looked up in C,
without a Python loop or a Python string per cell.

A column's cells are dictionary-encoded once (Arrow's `dictionary_encode`): the raw column
`values[codes]` is an object array whose cells are references to its few distinct strings (8
bytes a cell, where a Python string per cell took ~60). Counting and looking up go through
Arrow (`value_counts`, `index_in`). dlc.data.columns keeps its definition of each step; these are
the same results, faster (tests/test_columns_strings.py checks them against the per-cell
definitions)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def stripped_cells(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """object [n]: each cell of a text column with surrounding whitespace removed, the cells
    of one value sharing one Python string."""
    coded = pc.utf8_trim_whitespace(text)
    if isinstance(coded, pa.ChunkedArray):
        coded = coded.combine_chunks()
    coded = coded.dictionary_encode()
    values = np.array(coded.dictionary.to_pylist(), dtype=object)
    return values[coded.indices.to_numpy(zero_copy_only=False)]


def distinct_codes(text: pa.ChunkedArray | pa.Array) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(the distinct cells in order of first appearance, each row's index into them, the row
    where each first appears): a per-cell rule is then applied to the distinct cells only and
    spread back by the codes, with the row of its first failure."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    coded = text.dictionary_encode()
    codes = coded.indices.to_numpy(zero_copy_only=False)
    return coded.dictionary.to_pylist(), codes, np.unique(codes, return_index=True)[1]


def _text(cells: np.ndarray) -> pa.Array:
    """The cells as Arrow text; a cell that is no string (a number or None from a JSON row) as
    null, which matches no key and no marker, as in a per-cell dict lookup."""
    try:
        return pa.array(cells, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([c if isinstance(c, str) else None for c in cells], pa.string())


def distinct(cells: np.ndarray) -> list[str]:
    """The distinct cells of a string column (any order)."""
    return _text(cells).unique().to_pylist()


def counts(cells, without: list[str] = ()) -> tuple[list[str], np.ndarray]:
    """(distinct cells in sorted order, how often each occurs): np.unique's answer over the
    cells that are none of `without`; of Coded cells, counted by code (no string per cell)."""
    if isinstance(cells, Coded):
        found = np.bincount(cells.codes, minlength=len(cells.values))
        present = (found > 0) & ~is_in(cells.values, list(without)) if len(found) else found > 0
        values, found = cells.values[present].tolist(), found[present]
    else:
        table = _text(cells[~is_in(cells, list(without))] if len(without) else cells)
        table = table.value_counts()
        values, found = table.field("values").to_pylist(), table.field("counts").to_numpy()
    order = sorted(range(len(values)), key=values.__getitem__)
    return [values[i] for i in order], np.asarray(found).astype(np.int64)[order]


class Coded:
    """A string column as int32 codes into its distinct cells (the data cache's form:
    dlc.data.encode_columns): `column[rows]` is the object array of stripped cells a column
    read into memory gives (one string per value), `column.take(rows)` the rows still coded."""

    def __init__(self, codes: np.ndarray, values):
        self.codes, self.values = codes, np.array(values, dtype=object).reshape(-1)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows) -> np.ndarray:
        return self.values[self.codes[rows]]

    def take(self, rows) -> Coded:
        return Coded(self.codes[rows], self.values)


def lookup(cells: np.ndarray, keys: list[str], ids: list[int], default: int) -> np.ndarray:
    """int64 [n]: the id of each cell's key, `default` for a cell among no keys (what a
    LabelEncoder with these keys, ids and default gives)."""
    where = pc.index_in(_text(cells), value_set=pa.array(keys, pa.string()))
    table = np.append(np.asarray(ids, np.int64), default)
    return table[pc.fill_null(where, len(keys)).to_numpy(zero_copy_only=False)]


def is_in(cells: np.ndarray, markers: list[str]) -> np.ndarray:
    """bool [n]: the cells that are one of `markers`."""
    found = pc.is_in(_text(cells), value_set=pa.array(markers, pa.string()))
    return found.to_numpy(zero_copy_only=False)
