"""`dlc plot`: loss and metrics per epoch of a run folder, train against validation
(matplotlib, an optional extra)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from dlc.commands.runs import read_metrics
from dlc.errors import DlcError, UsageError, optional_module
from dlc.files.atomic import write_bytes


def pyplot(missing: str, what: str):
    """matplotlib's pyplot drawing to files (the Agg backend: no display needed); `missing`,
    the install hint, when matplotlib is not installed."""
    optional_module("matplotlib", missing, what).use("Agg")
    return optional_module("matplotlib.pyplot", missing, what)


def plot_run(run: Path, out: Path) -> list[str]:
    """Loss and each metric per epoch, train against validation, one panel each; returns notes
    on the metrics.csv rows it skipped."""
    plt = pyplot("dlc plot needs matplotlib: pip install 'dlc[plot]'", "dlc plot")
    kind = file_format(plt, out)
    rows, notes = read_metrics(run)
    keys = {k for r in rows for k in r}
    names = sorted({k.split("_", 1)[1] for k in keys if k.startswith(("train_", "val_"))},
                   key=lambda n: (n != "loss", n))
    if not names:
        raise DlcError(f"{run}/metrics.csv has no train_ or val_ columns to plot")
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, name in zip(axes[0], names):
        for split in ("train", "val"):
            key = f"{split}_{name}"
            if key in keys:
                ax.plot(epochs, [r.get(key, math.nan) for r in rows], marker=".", label=split)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(str(run))
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=kind, dpi=100)
    plt.close(fig)
    write_bytes(out, image.getvalue())
    return notes


def file_format(plt, out: Path) -> str:
    """The image format named by the output's suffix; a usage error (exit 2) for one that
    matplotlib does not write, before any drawing."""
    probe = plt.figure()
    kinds = probe.canvas.get_supported_filetypes()
    plt.close(probe)
    kind = out.suffix.lower().lstrip(".")
    if kind not in kinds:
        raise UsageError(f"cannot plot to {out}: name a .png, .svg or .pdf file (matplotlib "
                         f"writes {', '.join(sorted(kinds))})")
    return kind


def command(run: str, output: str) -> None:
    for note in plot_run(Path(run), Path(output)):
        print(f"note: {note}")
    print(f"wrote {output}")
