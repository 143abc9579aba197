"""TensorBoard tracking of a training run: `train.tracking: {backend: tensorboard}`.

Event files go to the run folder's `tb/` (`tensorboard --logdir runs/` shows every run); written
by tensorboardX (pip install 'dlc[tensorboard]'), which needs neither TensorFlow nor PyTorch.
Scalars, step = epoch: each metrics row as `train/<m>` and `val/<m>` (`train/loss`,
`val/species.accuracy`), `lr`, `samples_per_s` and `epoch_seconds`; at the end `test/<m>` and the
inference graph (model.onnx) for TensorBoard's graph tab. Each epoch is flushed, so a running
TensorBoard follows the run. A resumed run appends to the same `tb/`; the epochs before the resume
are written again only when `tb/` is new (the run was started without tracking).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from dlc.errors import DlcError

MISSING = "train.tracking: tensorboard needs tensorboardX: pip install 'dlc[tensorboard]'"
RENAMED = {"seconds": "epoch_seconds"}


def writer_class():
    """tensorboardX's SummaryWriter (imported lazily); the install hint when it is missing."""
    try:
        from tensorboardX import SummaryWriter
    except ModuleNotFoundError as e:
        if e.name == "tensorboardX":
            raise DlcError(MISSING) from None
        raise DlcError(f"train.tracking: cannot import tensorboardX: {e}") from None
    return SummaryWriter


def tag(column: str) -> str:
    """A metrics.csv column as a TensorBoard tag: train_loss -> train/loss, lr -> lr."""
    split, sep, metric = column.partition("_")
    if sep and split in ("train", "val", "test"):
        return f"{split}/{metric}"
    return RENAMED.get(column, column)


class TensorBoard:
    """The tracker interface of dlc.runtime.tracking (log_epoch, log_summary, a context manager
    that closes the writer) over one SummaryWriter."""

    def __init__(self, writer, path: Path):
        self.writer, self.path = writer, path

    def log_rows(self, rows) -> None:
        for row in rows:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    self.writer.add_scalar(tag(key), float(value), int(row["epoch"]))
        self.writer.flush()

    def log_epoch(self, trainer) -> None:
        self.log_rows(trainer.state.history[-1:])

    def log_summary(self, summary: dict) -> None:
        step = int(summary.get("epochs_run", 0))
        for key, value in (summary.get("test") or {}).items():
            self.writer.add_scalar(f"test/{key}", float(value), step)
        if (self.path / "model.onnx").is_file():
            with contextlib.redirect_stdout(io.StringIO()):  # tensorboardX prints node names
                self.writer.add_onnx_graph(str(self.path / "model.onnx"))
        self.writer.flush()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.writer.close()
        return False


def start(path: Path, history=()) -> TensorBoard:
    """A writer on `path`/tb; a resumed run's earlier epochs only when tb/ is new. Each writer
    has its own event file (tensorboardX names them by the second: a resume within the same
    second would overwrite), and a resumed one purges the steps after the checkpoint, which an
    interrupted process may have logged already."""
    log_dir = path / "tb"
    fresh = not log_dir.exists()
    purge = None if fresh or not history else int(history[-1]["epoch"]) + 1
    try:
        writer = writer_class()(logdir=str(log_dir), purge_step=purge,
                                filename_suffix=f".{time.time_ns()}")
    except OSError as e:
        raise DlcError(f"train.tracking: cannot write TensorBoard events to {log_dir}: "
                       f"{e.strerror or e}") from None
    tracker = TensorBoard(writer, path)
    if fresh:
        tracker.log_rows(history)
    return tracker
