"""Optimised graphs kept across runs, so a big graph pays onnxruntime's graph optimisation once.

onnxruntime writes the graph it optimised when `SessionOptions.optimized_model_filepath` is set;
a later session loads that file with optimisation off. Files live in `<cache>/ort-graphs/` (the
user's cache folder, dlc.files.cachedir;
`DLC_CACHE_DIR=off` disables it), named `<key>-<digest>.onnx`: the key hashes the graph's bytes,
the optimisation settings, onnxruntime's version and the machine (an optimised graph may hold
CPU-specific kernels), the digest the file's own bytes. A file whose bytes do not match its
digest, or that onnxruntime cannot load, is deleted and rebuilt; files are written atomically, so
processes racing on one key each write a whole file and the last rename wins. Only the `KEEP`
most recently used files are kept. CPU sessions only: a CUDA graph carries device copies placed for one
device.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

from dlc.errors import DlcError
from dlc.files import cachedir
from dlc.files.atomic import write_bytes

KEEP = 64  # optimised graphs kept (the least recently used are deleted beyond that)


def folder() -> Path | None:
    """The cache folder (created), or None when disabled or not writable."""
    return cachedir.folder("ort-graphs")


def _machine() -> str:
    """The CPU the optimised kernels were chosen for (model name and flags when Linux says)."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "|".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    return platform.processor() or platform.machine()


def key(model_bytes: bytes, settings: str) -> str:
    import onnxruntime as ort

    h = hashlib.sha256(model_bytes)
    h.update(f"|{settings}|{ort.__version__}|{platform.machine()}|{_machine()}".encode())
    return h.hexdigest()[:32]


def load(where: Path, name: str) -> bytes | None:
    """The cached optimised graph of `name` when present and intact (a damaged one is deleted)."""
    for path in where.glob(f"{name}-*.onnx"):
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest()[:16] == path.stem.rsplit("-", 1)[1]:
                os.utime(path)  # recently used: the last to be trimmed
                return data
            path.unlink()
    return None


def discard(where: Path, name: str) -> None:
    for path in where.glob(f"{name}-*.onnx"):
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def capture(where: Path, name: str):
    """A temporary path for onnxruntime to write the optimised graph to; once the session is
    made, the file is stored under its digest."""
    fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        _store(where, name, Path(tmp))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _store(where: Path, name: str, tmp: Path) -> None:
    """Atomically, then the oldest files beyond `KEEP` removed; a cache that cannot be written
    only costs the next run its optimisation."""
    with contextlib.suppress(OSError, DlcError):  # DlcError: the folder went away meanwhile
        data = tmp.read_bytes()
        if data:
            write_bytes(where / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.onnx", data)
            _trim(where)


def _trim(where: Path) -> None:
    """Keep the `KEEP` most recently used graphs; drop temporary files a killed process left (an
    hour old)."""
    files = []
    for p in where.glob("*.onnx"):
        with contextlib.suppress(OSError):
            files.append((p.stat().st_mtime, p))
    stale = [p for p in where.glob(".*.tmp") if _age(p) > 3600]
    for path in [p for _, p in sorted(files, reverse=True)[KEEP:]] + stale:
        with contextlib.suppress(OSError):
            path.unlink()


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
