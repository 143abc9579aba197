"""`dlc runs`: the run folders under a folder, newest first, with their best epoch; and
metrics.csv read back (also for `dlc plot`)."""

from __future__ import annotations

import csv
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from dlc.errors import DlcError
from dlc.files.untrusted import MAX_TABLE_BYTES, check_file, load_json, read_bytes
from dlc.train.trainer import monitor_of

# Run folders sit at FOLDER/summary.json, FOLDER/<run>/ or FOLDER/<name>/<time>/ (the default):
# `dlc runs /` looks that deep, not through the whole file system.
RUN_DEPTH = 3
MAX_SUMMARY_BYTES = 2**20


def _spec_of(run: Path) -> dict:
    """The run's resolved spec.yaml; {} when it is missing, too big or unreadable."""
    try:
        spec = yaml.safe_load(read_bytes(run / "spec.yaml", "spec", MAX_SUMMARY_BYTES))
    except (DlcError, ValueError, yaml.YAMLError, RecursionError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _started(run: Path) -> str:
    """run.json's start time (UTC, ISO 8601); for runs made before dlc wrote it, the time run.json
    was written, which is when the run started."""
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



def command(folder: str) -> None:
    """Print the runs table (rich; rows unfolded when piped)."""
    found, unread = list_runs(Path(folder))
    if not found:
        raise DlcError(f"no runs under {folder}" + (f" ({unread} unreadable summary.json)"
                                                   if unread else ""))
    table = Table()
    for col in ("started (UTC)", "spec", "run", "epochs", "best", "test", "samples/s"):
        table.add_column(col, overflow="fold")
    for r in found:
        best = r["best"]
        best = f"{best['column']} {best['value']:.4g} @{best['epoch']}" if best else ""
        test = "  ".join(f"{k} {v:.4g}" for k, v in r["test"].items() if isinstance(v, float))
        table.add_row(r["started"].replace("T", " ").replace("+00:00", ""), r["name"] or "",
                      r["run"], str(r["epochs"]), best, test, f"{r['samples_per_s'] or 0:,.0f}")
    Console(width=None if sys.stdout.isatty() else 400).print(table)  # piped: rows unfolded
    if unread:
        print(f"note: {unread} summary.json not readable as a dlc summary, left out")
