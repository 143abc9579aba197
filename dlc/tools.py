"""Small commands around specs and runs: diff, runs, plot, env."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import yaml

from dlc.errors import DlcError


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def diff_specs(a, b) -> list[str]:
    """Field-level differences of two resolved specs (defaults filled), then parameter counts."""
    from dlc.summary import rows

    fa, fb = _flatten(a.data), _flatten(b.data)
    lines = []
    for key in sorted(fa.keys() | fb.keys()):
        if key not in fb:
            lines.append(f"- {key}: {json.dumps(fa[key])}")
        elif key not in fa:
            lines.append(f"+ {key}: {json.dumps(fb[key])}")
        elif fa[key] != fb[key]:
            lines.append(f"~ {key}: {json.dumps(fa[key])} -> {json.dumps(fb[key])}")
    pa, pb = (sum(r[3] for r in rows(s)) for s in (a, b))
    change = f" ({(pb - pa) / pa:+.1%})" if pa else ""
    lines.append(f"parameters: {pa:,} -> {pb:,}{change}" if pa != pb else f"parameters: {pa:,}")
    return lines


# Run folders sit at FOLDER/summary.json, FOLDER/<run>/ or FOLDER/<name>/<time>/ (the default):
# `dlc runs /` looks that deep, not through the whole file system.
RUN_DEPTH = 3
MAX_SUMMARY_BYTES = 2**20


def _spec_of(run: Path) -> dict:
    """The run's resolved spec.yaml; {} when it is missing, too big or unreadable."""
    from dlc.userfiles import read_bytes

    try:
        spec = yaml.safe_load(read_bytes(run / "spec.yaml", "spec", MAX_SUMMARY_BYTES))
    except (DlcError, ValueError, yaml.YAMLError, RecursionError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _started(run: Path) -> str:
    """run.json's start time (UTC, ISO 8601); for runs made before dlc wrote it, the time run.json
    was written, which is when the run started."""
    from dlc.userfiles import load_json, read_bytes

    path = run / "run.json"
    try:
        info = load_json(read_bytes(path, "run file", MAX_SUMMARY_BYTES), str(path))
        stamp = path.stat().st_mtime
    except (DlcError, OSError):
        return ""
    started = info.get("started") if isinstance(info, dict) else None
    if isinstance(started, str):
        return started
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def _best(run: Path, spec: dict) -> dict | None:
    """{"column", "value", "epoch"}: the best epoch of the column early stopping monitors (its
    default: val_loss, else train_loss), from metrics.csv."""
    from dlc.runtime.trainer import monitor_of

    try:
        rows, _ = read_metrics(run)
        name, lower = monitor_of(spec.get("train") or {}, "val_loss" in rows[0])
        scored = [(r[name], int(r["epoch"])) for r in rows if name in r]
    except (DlcError, OSError, ValueError, IndexError, KeyError):
        return None
    if not scored:
        return None
    value, epoch = (min if lower else max)(scored, key=lambda t: t[0])  # ties: the earliest
    return {"column": name, "value": value, "epoch": epoch}


def _summaries(folder: Path):
    """summary.json files at most RUN_DEPTH folders below `folder`; unreadable folders and
    symbolic links to folders are passed over."""
    for root, dirs, files in os.walk(folder):
        if len(Path(root).relative_to(folder).parts) >= RUN_DEPTH:
            dirs.clear()
        dirs.sort()
        if "summary.json" in files:
            yield Path(root) / "summary.json"


def _run_row(summary: Path) -> dict | None:
    """A run's row for `dlc runs`, or None when its summary.json is not one dlc wrote."""
    from dlc.userfiles import load_json, read_bytes

    try:
        data = load_json(read_bytes(summary, "summary", MAX_SUMMARY_BYTES), str(summary))
        mtime = summary.stat().st_mtime
    except (DlcError, OSError):
        return None
    if not isinstance(data, dict):
        return None
    pick = lambda key: data[key] if isinstance(data.get(key), dict) else {}  # noqa: E731
    run = summary.parent
    spec = _spec_of(run)
    name = spec.get("name")
    return {"run": str(run), "started": _started(run), "name": name if isinstance(name, str)
            else None, "epochs": _number(data.get("epochs_run")), "best": _best(run, spec),
            "test": pick("test"), "val": pick("val"),
            "samples_per_s": _number(data.get("train_samples_per_s")), "mtime": mtime}


def _number(value) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def list_runs(folder: Path) -> tuple[list[dict], int]:
    """(every run under `folder`, newest first; how many summary.json files were not read)."""
    if not folder.is_dir():
        raise DlcError(f"{folder} is not a folder")
    rows = [_run_row(s) for s in _summaries(folder)]
    runs = [r for r in rows if r is not None]
    return sorted(runs, key=lambda r: (r["started"], r["mtime"]), reverse=True), \
        len(rows) - len(runs)


def _metric_row(row: dict) -> dict[str, float]:
    """One metrics.csv row as numbers; ValueError saying what is wrong with it."""
    if None in row:
        raise ValueError("more cells than columns")
    values = {k: float(v) for k, v in row.items() if v not in ("", None)}
    if "epoch" not in values:
        raise ValueError("no epoch")
    return values


def read_metrics(run: Path) -> tuple[list[dict], list[str]]:
    """(metrics.csv's rows as numbers, notes on the rows that are not); DlcError when no row is
    usable. A run killed mid-write or edited by hand may hold a torn or foreign row."""
    from dlc.userfiles import MAX_TABLE_BYTES, check_file

    path = run / "metrics.csv"
    if not path.exists():
        raise DlcError(f"{run} has no metrics.csv (not a dlc run folder?)")
    rows, notes = [], []
    try:
        with check_file(path, "metrics file", MAX_TABLE_BYTES).open(newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                try:
                    rows.append(_metric_row(row))
                except ValueError as e:
                    notes.append(f"{path}:{reader.line_num}: row skipped ({e})")
    except (csv.Error, UnicodeDecodeError) as e:
        raise DlcError(f"{path}: cannot read as CSV: {e}") from None
    if not rows:
        raise DlcError(f"{path}: no usable rows")
    return rows, notes


def plot_run(run: Path, out: Path) -> list[str]:
    """Loss and each metric per epoch, train against validation, one panel each; returns notes
    on the metrics.csv rows it skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DlcError("dlc plot needs matplotlib: pip install 'dlc[plot]'") from None
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
    if not out.parent.is_dir():
        raise DlcError(f"output folder {out.parent} does not exist")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return notes


def environment() -> list[tuple[str, str]]:
    """What `dlc env` prints: versions, providers, and whether CUDA is usable (and why not)."""
    import platform

    import numpy
    import onnx
    import onnxruntime as ort

    from dlc import __version__
    from dlc.graph import IR_VERSION, OPSET
    from dlc.runtime.session import CUDA, cuda_usable

    providers = ort.get_available_providers()
    ok, reason = cuda_usable(0) if CUDA in providers else (False, "no CUDA provider in this build")
    rows = [("dlc", __version__), ("python", platform.python_version()), ("numpy", numpy.__version__),
            ("onnx", onnx.__version__), ("onnxruntime", ort.__version__),
            ("model IR / opset", f"{IR_VERSION} / {OPSET}"),
            ("available providers", ", ".join(providers)),
            ("usable providers", "CUDAExecutionProvider, CPUExecutionProvider" if ok
             else "CPUExecutionProvider"),
            ("cuda", "usable" if ok else f"unusable: {reason}")]
    return rows + _gpus()


def _gpus() -> list[tuple[str, str]]:
    if not shutil.which("nvidia-smi"):
        return [("gpu", "none found (no nvidia-smi)")]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return [("gpu", f"nvidia-smi failed: {e}")]
    return [(f"gpu {i}", line) for i, line in enumerate(out.splitlines())] or [("gpu", "none")]
