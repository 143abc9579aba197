"""The run folder: made with a unique default name, locked while a training writes in it, and
emptied of dlc's own files by --force.

The lock is an OS lock (flock) on `.dlc.lock` in the folder, so it dies with its process (kill -9
included) and never needs cleaning up; the file holds the owner's pid for the message the second
process prints. --force deletes only the files dlc writes (OWN_FILES), not the whole folder, so
that `--out .` or a folder holding the user's own notes is safe; moving the old run aside would
move those too. What remains of the old run afterwards is nothing dlc reads back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from dlc.errors import DlcError

LOCK = ".dlc.lock"
# everything a run writes: with --force none of it may survive into the new run
OWN_FILES = ("model.onnx", "train.onnx", "checkpoint.npz", "metrics.csv", "spec.yaml", "run.json",
             "summary.json")
OWN_CHECKPOINTS = ("epoch-*.npz", "best.npz")  # in checkpoints/


def create(out: str | None, name: str) -> Path:
    """The run folder, made: `out`, or runs/<name>/<UTC time>[-k] (a fresh folder, even for two
    runs started in the same second: mkdir either creates it or fails)."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise DlcError(f"output path {path} exists and is not a folder")
        _mkdir(path, exist_ok=True)
        return path
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        path = Path("runs") / name / (stamp if k == 1 else f"{stamp}-{k}")
        if _mkdir(path, exist_ok=False):
            return path
    raise DlcError(f"cannot find a free run folder name under runs/{name}; pass --out")


def _mkdir(path: Path, exist_ok: bool) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)  # like runs/<name>/<time>: parents are made
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise DlcError(f"cannot create the run folder {path}: {e.strerror or e}") from None


def check_empty(path: Path, force: bool) -> None:
    """A non-empty folder is only used with --force, and then dlc's own files go first."""
    if not any(p.name != LOCK for p in path.iterdir()):
        return
    if not force:
        raise DlcError(f"output folder {path} is not empty; pass --force to overwrite it")
    folder = path / "checkpoints"
    try:
        for name in OWN_FILES:
            (path / name).unlink(missing_ok=True)
        for pattern in OWN_CHECKPOINTS:
            for old in folder.glob(pattern):
                old.unlink()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError as e:
        raise DlcError(f"cannot clear the old run in {path} (--force): "
                       f"{e.strerror or e}: {e.filename}") from None


@contextlib.contextmanager
def locked(path: Path):
    """Hold the run folder's lock (and check it is writable) for the body; DlcError naming the
    other process when a training already holds it."""
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise DlcError(f"cannot write in the run folder {path}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise DlcError(f"run folder {path} is in use by another dlc training{who}; wait for "
                           "it to end or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as e:
            raise DlcError(f"cannot write in the run folder {path}: {e.strerror or e}") from None
        check_writable(path)
        yield path
    finally:
        os.close(fd)  # releases the lock


def check_writable(path: Path) -> None:
    """Fail before the first epoch, not at the first checkpoint, in a folder dlc cannot write."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".dlc-probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise DlcError(f"cannot write in the run folder {path}: {e.strerror or e}") from None
