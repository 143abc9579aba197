"""Progress reporting of a training run, chosen by `reporter`:

- a terminal gets a rich progress bar over the whole run (epoch, step, loss, samples/s, elapsed
  time, time remaining) with one line per finished epoch kept above it;
- anything else (a pipe, a file, CI) gets that one plain line per epoch on stderr, elapsed time
  and ETA at its end;
- `--log-format jsonl` gets one JSON object per line on stdout, for log collectors: an `epoch`
  event per epoch (the metrics row, elapsed_s, eta_s, time), a `note` event per message; nothing
  else goes to stdout, so it parses line by line;
- `--quiet` gets nothing.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

LOG_FORMATS = ("text", "jsonl")


def _fmt(row: dict) -> str:
    keys = [k for k in row if k not in ("epoch", "seconds", "lr")]
    return "  ".join(f"{k} {row[k]:.4g}" for k in keys)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Plain:
    """One line per epoch on stderr, with the run's elapsed time and an ETA."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = self.first = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        if self.t0 is None:  # a resumed run starts at its next epoch
            self.t0, self.first = time.perf_counter(), epoch

    def timing(self, epoch: int) -> tuple[float, float]:
        """(seconds since the first epoch of this process began, estimated seconds left)."""
        elapsed = time.perf_counter() - self.t0
        return elapsed, elapsed / (epoch - self.first + 1) * (self.epochs - epoch)

    def line(self, row: dict) -> str:
        elapsed, eta = self.timing(row["epoch"])
        return (f"epoch {row['epoch']}/{self.epochs}  {_fmt(row)}  elapsed {_clock(elapsed)}  "
                f"eta {_clock(eta)}")

    def step(self, i: int, n: int, loss: float) -> None:
        pass

    def end_epoch(self, row: dict) -> None:
        if not self.quiet:
            print(self.line(row), file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def json_event(event: dict) -> str:
    """One `--log-format jsonl` line: the event's fields and the UTC time."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return json.dumps({**event, "time": stamp})


class JsonLines(Plain):
    """One JSON object per event on stdout (`--log-format jsonl`)."""

    def _emit(self, event: dict) -> None:
        print(json_event(event), flush=True)

    def end_epoch(self, row: dict) -> None:
        if not self.quiet:
            elapsed, eta = self.timing(row["epoch"])
            self._emit({"event": "epoch", **row, "epochs": self.epochs,
                        "elapsed_s": round(elapsed, 3), "eta_s": round(eta, 3)})

    def note(self, message: str) -> None:
        if not self.quiet:
            self._emit({"event": "note", "message": message})


class Bar(Plain):
    """A rich progress bar over the whole run; finished epochs' lines kept above it."""

    def __init__(self, batch_size: int, console=None):
        super().__init__(False)
        from rich.console import Console
        from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
            TextColumn("step {task.fields[step]}  loss {task.fields[loss]:.4f}  "
                       "{task.fields[rate]} samples/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self.progress.start()
        self.task = None

    def start_epoch(self, epoch, epochs, steps):
        super().start_epoch(epoch, epochs, steps)
        if self.task is None:  # the whole run, from the epoch this process starts at
            self.task = self.progress.add_task("", total=(epochs - epoch + 1) * steps,
                                               epoch=f"{epoch}/{epochs}", step="-",
                                               loss=float("nan"), rate="-")
        self.progress.update(self.task, epoch=f"{epoch}/{epochs}")

    def step(self, i, n, loss):
        done = (self.epoch - self.first) * self.steps + i
        speed = self.progress.tasks[0].speed  # steps/s over rich's recent window
        rate = f"{speed * self.batch_size:,.0f}" if speed else "-"
        self.progress.update(self.task, completed=done, step=f"{i}/{n}", loss=loss, rate=rate)

    def end_epoch(self, row):
        self.progress.console.print(self.line(row))

    def note(self, message):
        self.progress.console.print(message)

    def close(self):
        self.progress.stop()


def reporter(quiet: bool, log_format: str = "text", batch_size: int = 1) -> Plain:
    """jsonl when asked; else a bar on a terminal, plain lines elsewhere; silent when quiet."""
    if log_format == "jsonl":
        return JsonLines(quiet)
    return Bar(batch_size) if not quiet and sys.stderr.isatty() else Plain(quiet)
