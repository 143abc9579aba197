"""Tables a user names (CSV, Parquet, Feather), read column by column through pyarrow.

Arrow parses a CSV in C++ into typed columns (int64/double where every cell is a number, text
elsewhere), so numeric features reach numpy without a Python string per cell: about 5x faster
and half the memory of the stdlib csv -> lists -> numpy path it replaced. Arrow knows no line
numbers, so they are found only when a message needs one, by the stdlib csv reader, which also
finds the ragged row or bad byte behind an Arrow parse error (messages stay `file:line: ...`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq

from dlc.data._common import finite32, parse_float
from dlc.errors import DlcError
from dlc.files.untrusted import MAX_TABLE_BYTES, check_file

# The file kinds dlc reads as tables, by suffix (Feather v2 is the Arrow IPC file format).
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".feather": "feather",
                  ".arrow": "feather"}
# What a missing cell reads as, where data.missing lets cells be missing (NaN in x).
MISSING = frozenset(["", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None", "?"])
_MISSING = pa.array(sorted(MISSING), pa.string())
# Every cell keeps its text unless it is a number: no NA markers, booleans or dates are guessed
# (a missing or odd cell stays an error that names its line).
# A quoted cell may span lines: Arrow's parallel and streaming readers cut a file into blocks at
# line ends, and without this a block cut inside such a cell fails ("out of sync with chunker").
# It cost nothing measurable on the 2M-row bench table (147 MiB, 1 MiB blocks).
PARSE = pacsv.ParseOptions(newlines_in_values=True)
CONVERT = pacsv.ConvertOptions(null_values=[], strings_can_be_null=False, true_values=[],
                               false_values=[], timestamp_parsers=[])


@dataclass
class Table:
    display: str  # the file name as the user wrote it, for messages
    columns: list[str]  # header names, or "#<i>" without a header
    has_names: bool
    data: pa.Table  # one column per file column
    path: Path | None = None  # the CSV file whose lines `line` counts; None: rows are numbered
    header: bool = True
    first_row: int = 0  # rows are numbered from here on (a record batch of a streamed table)
    source: Path | None = None  # a streamed batch's CSV, whose lines name its rows (`where`)
    _lines: list[int] | None = field(default=None, repr=False)
    _text: pa.Table | None = field(default=None, repr=False)

    @classmethod
    def of_names(cls, display: str, names: list[str], has_names: bool) -> Table:
        """A Table of column names and no rows: what finds a column by name (or `#<i>`) and
        says so in messages, before any row of a streamed file is read."""
        return cls(display, names, has_names, pa.table({}))

    def __len__(self) -> int:
        return self.data.num_rows

    def where(self, i: int) -> str:
        """`file:line` (CSV) or `file: row N` of data row i, for messages."""
        if self.path is None and self.source is None:
            return f"{self.display}: row {self.first_row + i + 1}"
        return f"{self.display}:{self.lines[self.first_row + i]}"

    @property
    def lines(self) -> list[int]:
        """1-based line in the file of each data row (a stdlib csv pass, made once on demand;
        of a streamed batch's whole CSV, counting its rows as Arrow's reader does)."""
        if self._lines is None:
            self._lines = _scan(self.path or self.source, self.display, self.header,
                                arrow_rows=self.path is None)
        return self._lines

    def strings(self, col: int) -> list[str]:
        """The cells of one column as Python strings (see text)."""
        return self.text(col).to_pylist()

    def text(self, col: int) -> pa.ChunkedArray:
        """The cells of one column as Arrow text (a missing cell of a typed file: ""). An
        integer column prints its values (`007` reads `7`: cheap, and integer classes and ids
        stay what they were); a float or date column of a CSV is read again as text, so that
        class `1.50` stays `1.50`; of another file, Python prints each value."""
        column = self.data.column(col)
        if pa.types.is_integer(column.type) or pa.types.is_string(column.type) \
                or pa.types.is_large_string(column.type):
            return pc.fill_null(pc.cast(column, pa.string()), "")
        if self.path is None:
            return pa.chunked_array([pa.array(["" if v is None else str(v)
                                               for v in column.to_pylist()], pa.string())])
        if self._text is None:
            self._text = read_csv(self.path, self.display, self.header, strings=True).data
        return self._text.column(col)

    @property
    def rows(self) -> list[list[str]]:
        """Row-major text cells, for readers that still walk rows (categories, text)."""
        return [list(r) for r in zip(*(self.strings(c) for c in range(len(self.columns))))]

    def numbers(self, cols: list[int], missing: bool = False) -> np.ndarray:
        """float64 [n, len(cols)]; the first cell that is not a finite float32 number (nor, with
        `missing`, one of MISSING, which reads NaN) is named by its line and column."""
        out = np.empty((len(self), len(cols)), dtype=np.float64)
        for j, c in enumerate(cols):
            out[:, j] = self._column_numbers(c, missing)
        return out

    def _column_numbers(self, c: int, missing: bool) -> np.ndarray:
        column = self.data.column(c)
        values = None
        if column.null_count == 0 or missing:
            if missing and pa.types.is_string(column.type):  # MISSING cells -> null -> NaN
                absent = pc.is_in(pc.utf8_trim_whitespace(column), value_set=_MISSING)
                column = pc.if_else(absent, pa.scalar(None, pa.string()), column)
            try:
                values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values = None
        if values is not None and (finite32(values) | (missing & np.isnan(values))).all():
            return values
        name = self.columns[c]  # slow path: Python's float(), and the first bad cell named
        return np.array([_number(v, self.where(i), name, missing)
                         for i, v in enumerate(self.strings(c))], dtype=np.float64)


def _number(text: str, where: str, column: str, missing: bool) -> float:
    """One feature cell: a number, NaN for a missing one when `missing`; else DlcError naming
    the cell, with the spec field that handles it when it is a missing value or text."""
    if missing and text.strip() in MISSING:
        return np.nan
    try:
        return parse_float(text, where, column)
    except DlcError as e:
        if text.strip() in MISSING:
            hint = "data.missing fills or drops missing values"
        elif _is_float(text):
            raise
        else:
            hint = "a column of categories goes through a named input with dtype: int64"
        raise DlcError(f"{e} ({hint}; see docs/your-own-data.md)") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def name_refused_row(path: Path, display: str, header: bool) -> None:
    """After Arrow's streaming reader refused a CSV (it knows no lines): the stdlib csv pass,
    which raises the DlcError naming the ragged row or bad byte by its line, counting rows as
    that reader does; returns when it finds nothing to name."""
    _scan(path, display, header, arrow_rows=True)


def _scan(path: Path, display: str, header: bool, arrow_rows: bool = False) -> list[int]:
    """The stdlib csv pass: the first line of each data row (a quoted cell may span lines);
    DlcError for what Arrow refused (a ragged row, a bad byte). Rows of blank cells are skipped
    as a table read whole skips them, or (`arrow_rows`) only empty lines, as Arrow's streaming
    reader does. Keeps line numbers only, not the cells."""
    lines: list[int] = []
    width, end = None, 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row or not (arrow_rows or any(cell.strip() for cell in row)):
                    continue
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    raise DlcError(f"{display}:{start}: expected {width} columns, "
                                   f"found {len(row)}")
                lines.append(start)
    except (csv.Error, UnicodeDecodeError) as e:
        raise DlcError(f"{display}: cannot read as CSV: {e}") from None
    return lines[1:] if header else lines


def _drop_blank_rows(data: pa.Table) -> pa.Table:
    """Rows whose every cell is blank (`,,`) are skipped, as blank lines are; only a table of
    text columns can hold one (a number is never blank)."""
    if data.num_columns == 0 or not all(pa.types.is_string(t) for t in data.schema.types):
        return data
    blank = None
    for column in data.columns:
        empty = pc.equal(pc.utf8_trim_whitespace(column), "")
        blank = empty if blank is None else pc.and_(blank, empty)
    return data.filter(pc.invert(blank)) if pc.any(blank).as_py() else data


def read_csv(path: Path, display: str, header: bool, strings: bool = False) -> Table:
    """A CSV file as a Table (`strings`: every column as text)."""
    read = pacsv.ReadOptions(autogenerate_column_names=not header)
    convert = CONVERT
    if strings:
        names = pacsv.open_csv(path, read_options=read, parse_options=PARSE).schema.names
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                       strings_can_be_null=False)
    try:
        data = pacsv.read_csv(path, read_options=read, parse_options=PARSE,
                              convert_options=convert)
        names = [n.strip() for n in data.column_names]  # Arrow decodes the header only here
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        if not _scan(path, display, header):  # or names the ragged row or the bad byte
            raise DlcError(f"{display}: no data rows") from None
        raise DlcError(f"{display}: cannot read as CSV: {str(e).splitlines()[0]}") from None
    columns = names if header else [f"#{i}" for i in range(data.num_columns)]
    return Table(display, columns, header, _drop_blank_rows(data), path, header)


def _read_arrow(path: Path, display: str, kind: str) -> Table:
    """A Parquet or Feather file as a Table (its column names are its header)."""
    try:
        data = pq.read_table(path) if kind == "parquet" else feather.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DlcError(f"{display}: cannot read as {kind.title()}: "
                       f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return Table(display, [str(n).strip() for n in data.column_names], True, data, None)


def read_table(path: Path, display: str, header: bool, kind: str | None = None) -> Table:
    """Every non-blank row of a CSV, Parquet or Feather file (`kind`, else by suffix, else
    CSV); a ragged CSV row raises DlcError naming its line."""
    check_file(path, "data file", MAX_TABLE_BYTES)
    kind = kind or TABLE_SUFFIXES.get(Path(path).suffix.lower(), "csv")
    try:
        table = (read_csv(path, display, header) if kind == "csv"
                 else _read_arrow(path, display, kind))
    except OSError as e:
        raise DlcError(f"cannot read {display}: {e.strerror or e}") from None
    if len(table) == 0:
        raise DlcError(f"{display}: no data rows")
    return table
