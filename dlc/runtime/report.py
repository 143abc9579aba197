"""Progress reporting: a rich progress bar on a terminal, plain lines elsewhere, nothing if quiet."""

from __future__ import annotations

import sys


def _fmt(row: dict) -> str:
    keys = [k for k in row if k not in ("epoch", "seconds", "lr")]
    return "  ".join(f"{k} {row[k]:.4g}" for k in keys)


class Plain:
    """One line per epoch on stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs = epoch, epochs

    def step(self, i: int, n: int, loss: float) -> None:
        pass

    def end_epoch(self, row: dict) -> None:
        if not self.quiet:
            print(f"epoch {row['epoch']}/{self.epochs}  {_fmt(row)}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class Bar(Plain):
    """A rich progress bar per epoch (epoch, step, loss, samples/s), the epoch line kept above."""

    def __init__(self):
        super().__init__(False)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                                 console=self.console, transient=True)
        self.progress.start()
        self.task = None

    def start_epoch(self, epoch, epochs, steps):
        super().start_epoch(epoch, epochs, steps)
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("", total=steps, epoch=f"{epoch}/{epochs}", loss=0.0)

    def step(self, i, n, loss):
        self.progress.update(self.task, completed=i, loss=loss)

    def end_epoch(self, row):
        self.progress.console.print(f"epoch {row['epoch']}/{self.epochs}  {_fmt(row)}")

    def note(self, message):
        self.progress.console.print(message)

    def close(self):
        self.progress.stop()


def reporter(quiet: bool) -> Plain:
    return Bar() if not quiet and sys.stderr.isatty() else Plain(quiet)
