"""Atomic file writes: a temp file in the same folder, fsync, rename. A reader (or a crash at any
moment) sees either the old file or the new one, never a torn one.

A write that fails (disk full, `ulimit -f`, a read-only folder, a path that is a folder) leaves
the old file as it was and raises DlcError naming the file: a user's problem, not a bug. New files
get the mode the umask gives (mkstemp alone would make every file 0600)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

from dlc.errors import DlcError


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


class WriteError(DlcError):
    """A file could not be written (the old one, if any, is intact)."""


def write_error(path: str | Path, e: OSError) -> WriteError:
    """The one-line error of a failed write of `path`."""
    return WriteError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb"):
    path = Path(path)
    if not path.parent.is_dir():
        raise DlcError(f"output folder {path.parent} does not exist")
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def finite_or_none(value):
    """`value` with every NaN or infinite float replaced by None (JSON null), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, value, indent: int = 2) -> None:
    """Standard JSON (never the bare NaN/Infinity Python's json writes): non-finite -> null."""
    write_text(path, json.dumps(finite_or_none(value), indent=indent, allow_nan=False) + "\n")
