"""TensorBoard tracking of a training run: `train.tracking: {backend: tensorboard}`.

Event files go to the run folder's `tb/`, one sub-folder per split as Keras' TensorBoard callback
writes them (`tb/train`, `tb/val`, `tb/test`), so TensorBoard draws a metric's train and validation
curves in one chart; `tensorboard --logdir runs/` shows every run. Written by tensorboardX (pip
install 'dlc[tensorboard]'), which needs neither TensorFlow nor PyTorch. Scalars, step = epoch:
each metrics row's `train_<m>` / `val_<m>` as `<m>` in that split's folder (`loss`, `accuracy`,
`species.accuracy`), and `lr`, `samples_per_s`, `epoch_seconds` under train; at the end the test
metrics and the inference graph (model.onnx, TensorBoard's graph tab). Each epoch is flushed, so a
running TensorBoard follows the run. A resumed run appends to the same folders; the epochs before
the resume are written again only when `tb/` is new (the run was started without tracking).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from dlc.errors import DlcError, optional_module

MISSING = "train.tracking: tensorboard needs tensorboardX: pip install 'dlc[tensorboard]'"
SPLITS = ("train", "val", "test")
RENAMED = {"seconds": "epoch_seconds"}


def writer_class():
    """tensorboardX's SummaryWriter (imported lazily); the install hint when it is missing."""
    return optional_module("tensorboardX", MISSING, "train.tracking").SummaryWriter


def split_tag(column: str) -> tuple[str, str]:
    """A metrics.csv column as (split folder, tag): val_loss -> (val, loss), lr -> (train, lr)."""
    split, sep, metric = column.partition("_")
    if sep and split in SPLITS:
        return split, metric
    return "train", RENAMED.get(column, column)


class TensorBoard:
    """The tracker interface of dlc.train.tracking (log_epoch, log_summary, a context manager
    that closes the writers) over one SummaryWriter per split, opened when first needed. Each
    writer has its own event file (tensorboardX names them by the second, so a resume within the
    same second would overwrite), and a resumed one purges the steps after the checkpoint, which
    an interrupted process may have logged already."""

    def __init__(self, log_dir: Path, purge_step: int | None):
        self.log_dir, self.purge_step, self.writers = log_dir, purge_step, {}

    def writer(self, split: str):
        if split not in self.writers:
            try:
                self.writers[split] = writer_class()(
                    logdir=str(self.log_dir / split), purge_step=self.purge_step,
                    filename_suffix=f".{time.time_ns()}")
            except OSError as e:
                raise DlcError(f"train.tracking: cannot write TensorBoard events to "
                               f"{self.log_dir}: {e.strerror or e}") from None
        return self.writers[split]

    def scalar(self, column: str, value, step: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            split, tag = split_tag(column)
            self.writer(split).add_scalar(tag, float(value), step)

    def log_rows(self, rows) -> None:
        for row in rows:
            for key, value in row.items():
                if key != "epoch":
                    self.scalar(key, value, int(row["epoch"]))
        self.flush()

    def log_epoch(self, trainer) -> None:
        self.log_rows(trainer.state.history[-1:])

    def log_summary(self, summary: dict) -> None:
        step = int(summary.get("epochs_run", 0))
        for key, value in (summary.get("test") or {}).items():
            self.scalar(f"test_{key}", value, step)
        model = self.log_dir.parent / "model.onnx"
        if model.is_file():
            with contextlib.redirect_stdout(io.StringIO()):  # tensorboardX prints node names
                self.writer("train").add_onnx_graph(str(model))
        self.flush()

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for writer in self.writers.values():
            writer.close()
        return False


def start(path: Path, history=()) -> TensorBoard:
    """The tracker of the run folder `path`; a resumed run's earlier epochs only when tb/ is
    new, else the steps after them purged."""
    log_dir = path / "tb"
    fresh = not log_dir.exists()
    purge = None if fresh or not history else int(history[-1]["epoch"]) + 1
    tracker = TensorBoard(log_dir, purge)
    if fresh:
        tracker.log_rows(history)
    tracker.writer("train")  # tb/ exists from the start: a resume knows it was tracked
    return tracker
