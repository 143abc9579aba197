"""The preprocessed, memory-mapped cache of a table (data.cache): a table bigger than memory
trains from it, and any big table skips parsing after the first run.

Built once per (data file, encoder settings): the file is streamed through pyarrow in record
batches (CSV blocks, Parquet row groups, Feather batches), each batch encoded
(dlc.data.encode: numeric features; dlc.data.encode_columns: columns by kind) and appended to
raw files in a temporary folder, renamed into
`<cache>/tables/<key>/` when whole (dlc.files.cachedir: `$DLC_CACHE_DIR`, `~/.cache/dlc`); an
interrupted build leaves no half cache. The key hashes the file's path, size, modification time
and its first and last MiB, and the encoder's settings: a changed file or spec builds a new
cache, never reuses a stale one. Splits, fills and normalisation are not cached: they are
computed per run from the memory-mapped arrays (dlc.data.stats), and a split's x is a `stats.Rows`
view that gathers, fills and normalises one batch at a time, so the table never sits in memory.
The `KEEP` most recently used caches are kept."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dlc.data._sources import TABLES, parse_source, resolve_path
from dlc.data._table import MISSING, PARSE, name_refused_row
from dlc.data.encode import TableEncoder, batch_error
from dlc.data.encode_columns import ColumnEncoder, raw_columns
from dlc.errors import DlcError
from dlc.files import cachedir

AUTO_BYTES = 64 * 2**20  # data.cache auto: tables from this size on
KEEP = 4  # caches kept (the least recently used are deleted beyond that)
BLOCK = 2**20  # bytes of CSV per record batch (8 MiB: the same speed, 150 MiB more at peak)
STAMP = 2**20  # bytes hashed at each end of the file
HEAD = 2**16  # bytes of CSV read for the column names (the header row and the first rows)


def table_source(spec: dict, spec_dir: Path, origin: str = "data.source in spec"
                 ) -> tuple[Path, str, str] | None:
    """(path, display, kind) of a table to read through the cache, by data.cache: true,
    false, or auto (the default: tables of AUTO_BYTES and more); None to read it into memory.
    The cache holds the numeric features of a single input (not token ids), or a table's
    columns by kind (input.columns: dlc.data.encode_columns)."""
    data = spec.get("data") or {}
    setting = data.get("cache", "auto")
    if setting is False:
        return None
    scheme, rest = parse_source(data["source"])
    single = spec.get("input") or {}
    ids = single.get("dtype") == "int64" and not single.get("columns")
    if scheme not in TABLES or ids:
        if setting is True:
            raise DlcError("data.cache: true needs a csv, parquet or feather source of numeric "
                           f"features; found '{data['source']}'" + (" with int64 ids" * ids))
        return None
    path = resolve_path(rest, spec_dir, origin)
    if setting == "auto" and path.stat().st_size < AUTO_BYTES:
        return None
    return path, rest, scheme


def csv_read_options(header: bool, block: int = 0) -> pacsv.ReadOptions:
    """Reads of BLOCK bytes on threads (they read ahead); of a given `block` without threads."""
    return pacsv.ReadOptions(block_size=block or BLOCK, use_threads=not block,
                             autogenerate_column_names=not header)


def _csv_names(path: Path, header: bool) -> list[str]:
    """The CSV's own column names, from one HEAD block read without threads (a threaded reader
    reads ahead: ~100 MiB of Arrow's pool on the 2M-row table, which its allocator keeps); a
    row wider than HEAD is read again with BLOCK."""
    def names(block: int) -> list[str]:
        return pacsv.open_csv(path, read_options=csv_read_options(header, block),
                              parse_options=PARSE).schema.names

    try:
        return names(HEAD)
    except pa.ArrowInvalid:  # a row wider than HEAD straddles the block
        return names(BLOCK)


def column_names(path: Path, kind: str, header: bool) -> list[str]:
    """The file's column names as dlc.data._table names them (`#i` without a header)."""
    if kind == "parquet":
        names = pq.ParquetFile(path).schema_arrow.names
    elif kind == "feather":
        names = pa.ipc.open_file(pa.memory_map(str(path))).schema.names
    else:
        names = _csv_names(path, header)
    return [str(n).strip() for n in names] if header else [f"#{i}" for i in range(len(names))]


def record_batches(path: Path, kind: str, header: bool, names: list[str], columns: dict,
                   nulls: bool = False):
    """The record batches of `columns` (name -> the Arrow type a CSV reader gives it), named as
    `column_names` names them (`names`: every column of the file); `nulls`: a missing marker in a
    CSV number column reads as null."""
    wanted = list(columns)
    if kind == "parquet":
        file = pq.ParquetFile(path)
        by_name = {str(n).strip(): n for n in file.schema_arrow.names}
        batches = file.iter_batches(batch_size=1 << 16, columns=[by_name[n] for n in wanted])
    elif kind == "feather":
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        by_name = {str(n).strip(): n for n in reader.schema.names}
        batches = (reader.get_batch(i).select([by_name[n] for n in wanted])
                   for i in range(reader.num_record_batches))
    else:
        by_name = dict(zip(names, _csv_names(path, header)))
        convert = pacsv.ConvertOptions(
            column_types={by_name[n]: t for n, t in columns.items()},
            include_columns=[by_name[n] for n in wanted], strings_can_be_null=False,
            null_values=sorted(MISSING) if nulls else [])
        batches = pacsv.open_csv(path, read_options=csv_read_options(header), parse_options=PARSE,
                                 convert_options=convert)
    for batch in batches:
        yield pa.RecordBatch.from_arrays(batch.columns, names=wanted)


def _stamp(path: Path) -> dict:
    """The file's identity and a content stamp (its first and last MiB)."""
    st = path.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(STAMP))
        f.seek(max(0, st.st_size - STAMP))
        h.update(f.read(STAMP))
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "head_tail": h.hexdigest()}


def _build(tmp: Path, path: Path, kind: str, header: bool, enc) -> None:
    """Stream the table through the encoder into tmp: each array it returns appended to
    `<name>.raw` (row after row), y.npy, and meta.json with every array's dtype and shape."""
    seen, targets, arrays = 0, [], {}
    try:
        with contextlib.ExitStack() as stack:
            files = {}
            for batch in record_batches(path, kind, header, enc.names, enc.columns,
                                        enc.reads_missing):
                out = enc.encode(batch, seen)
                targets.append(out.pop("y"))
                for name, values in out.items():
                    if name not in files:
                        files[name] = stack.enter_context(open(tmp / f"{name}.raw", "wb"))
                        arrays[name] = {"dtype": values.dtype.str, "shape": [0, *values.shape[1:]]}
                    values.tofile(files[name])
                    arrays[name]["shape"][0] += len(values)
                seen += batch.num_rows
    except (pa.ArrowException, ValueError, OSError, DlcError) as e:
        raise _named_error(path, kind, header, enc, e) from None
    rows = sum(len(t) for t in targets)
    if rows == 0:
        raise DlcError(f"{enc.display}: no data rows")
    y, labels = enc.finish(np.concatenate(targets))
    np.save(tmp / "y.npy", y)
    meta = {"rows": rows, "labels": labels, "arrays": arrays, **enc.meta()}
    (tmp / "meta.json").write_text(json.dumps(meta))


def _named_error(path: Path, kind: str, header: bool, enc, e: Exception) -> DlcError:
    """An error while streaming, as one line; for a CSV, the ragged row or the bad cell named
    by its line and its text as written (Arrow's streaming reader knows neither lines nor rows,
    and a number it read prints as Python prints it): the stdlib csv pass, then the file read
    again as text through the encoder's own checks."""
    as_text = all(t == pa.string() for t in enc.columns.values())  # quoted as written already
    if kind == "csv" and (isinstance(e, pa.ArrowInvalid) or
                          isinstance(e, DlcError) and not as_text):
        try:
            name_refused_row(path, enc.display, header)
            seen = 0
            text = dict.fromkeys(enc.columns, pa.string())
            for batch in record_batches(path, kind, header, enc.names, text):
                enc.encode(batch, seen)
                seen += batch.num_rows
        except DlcError as named:
            return named
        except (pa.ArrowException, ValueError, OSError):
            pass
    return e if isinstance(e, DlcError) else batch_error(enc.display, e)


def _cached(path: Path, display: str, kind: str, spec: dict, encoder) -> tuple[Path, dict]:
    """(folder, metadata) of this table's cache for the encoder that `encoder(names)` makes,
    built first when absent; one line on stderr says which."""
    root = cachedir.folder("tables")
    if root is None:
        raise DlcError("data.cache: the cache folder is off (DLC_CACHE_DIR); set data.cache: "
                       "false to read the table into memory")
    header = bool((spec.get("data") or {}).get("header", True))
    try:
        names = column_names(path, kind, header)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise batch_error(display, e) from None
    enc = encoder(names)
    enc.source, enc.header = (path if kind == "csv" else None), header
    key = hashlib.sha256(json.dumps([_stamp(path), kind, header, enc.key()],
                                    sort_keys=True).encode()).hexdigest()[:24]
    where = root / key
    if _intact(where):
        with contextlib.suppress(OSError):
            os.utime(where)  # recently used: the last to be trimmed
        verb = "reusing"
    else:
        t0 = time.perf_counter()
        shutil.rmtree(where, ignore_errors=True)  # a damaged cache (a disk error, a hand edit)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
        try:
            enc.prepare(lambda columns: record_batches(path, kind, header, enc.names, columns))
            _build(tmp, path, kind, header, enc)
            with contextlib.suppress(OSError):  # another process built it meanwhile: keep theirs
                tmp.rename(where)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        verb = f"built in {time.perf_counter() - t0:.1f} s:"
        _trim(root)
        pa.default_memory_pool().release_unused()  # the build's blocks: back to the system
    meta = json.loads((where / "meta.json").read_text())
    print(f"data cache {verb} {display} ({meta['rows']:,} rows x {len(meta['features'])} "
          f"features) in {where}", file=sys.stderr, flush=True)
    return where, meta


def _arrays(where: Path, meta: dict) -> dict[str, np.ndarray]:
    """The cache's arrays, memory-mapped."""
    return {name: np.memmap(where / f"{name}.raw", np.dtype(a["dtype"]), "r",
                            shape=tuple(a["shape"])) if a["shape"][0] else
            np.zeros(a["shape"], a["dtype"]) for name, a in meta["arrays"].items()}


def open_table(path: Path, display: str, kind: str, spec: dict, labels: list[str] | None = None):
    """(x raw float32 memmap [n, F], y, labels, features) from the cache of this table and
    spec's numeric features, built first when absent. `labels`: a trained model's class names,
    which the target's cells must be among."""
    where, meta = _cached(path, display, kind, spec,
                          lambda names: TableEncoder.for_spec(spec, display, names, labels))
    y = np.load(where / "y.npy", mmap_mode="r")
    return _arrays(where, meta)["x"], y, meta["labels"], meta["features"]


def open_columns(path: Path, display: str, kind: str, spec: dict):
    """(raw columns, y, labels, kinds) of a table with column kinds (input.columns), as
    dlc.data.read_columns gives them, from the cache of this table and spec's column settings
    (dlc.data.encode_columns), built first when absent: numbers and category codes
    memory-mapped, only the rows a batch gathers ever read."""
    where, meta = _cached(path, display, kind, spec,
                          lambda names: ColumnEncoder.for_spec(spec, display, names))
    y = np.load(where / "y.npy", mmap_mode="r")
    return raw_columns(_arrays(where, meta), meta), y, meta["labels"], meta["kinds"]


def _intact(where: Path) -> bool:
    """A whole cache: its metadata readable, y.npy and each array of the size it states."""
    try:
        meta = json.loads((where / "meta.json").read_text())
        y = np.load(where / "y.npy", mmap_mode="r")
        return len(y) == meta["rows"] and all(
            (where / f"{name}.raw").stat().st_size ==
            np.dtype(a["dtype"]).itemsize * int(np.prod(a["shape"]))
            for name, a in meta["arrays"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0


def _trim(root: Path) -> None:
    """Keep the KEEP most recently used caches; drop builds a killed process left (an hour)."""
    done = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=_mtime,
                  reverse=True)
    stale = [p for p in root.glob(".*") if time.time() - _mtime(p) > 3600]
    for p in done[KEEP:] + stale:
        shutil.rmtree(p, ignore_errors=True)
