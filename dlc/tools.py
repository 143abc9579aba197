"""Small commands around specs and runs: diff, runs, plot, env."""

from __future__ import annotations

import csv
import json
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


def list_runs(folder: Path) -> list[dict]:
    """Every run under `folder` (a folder holding summary.json), newest first: when it started,
    its spec's name, epochs, the best value of its monitored column, test metrics and speed."""
    runs = []
    for summary in sorted(folder.glob("**/summary.json")):
        try:
            data = json.loads(summary.read_text())
        except (OSError, ValueError):
            continue
        run = summary.parent
        spec = _spec_of(run)
        runs.append({"run": str(run), "started": _started(run), "name": spec.get("name"),
                     "epochs": data.get("epochs_run"), "best": _best(run, spec),
                     "test": data.get("test", {}), "val": data.get("val", {}),
                     "samples_per_s": data.get("train_samples_per_s")})
    return sorted(runs, key=lambda r: r["started"], reverse=True)


def _spec_of(run: Path) -> dict:
    """The run's resolved spec.yaml; {} when it is missing or unreadable."""
    try:
        spec = yaml.safe_load((run / "spec.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _started(run: Path) -> str:
    """run.json's start time (UTC, ISO 8601); for runs made before dlc wrote it, the time run.json
    was written, which is when the run started."""
    path = run / "run.json"
    try:
        started = json.loads(path.read_text()).get("started")
        stamp = path.stat().st_mtime
    except (OSError, ValueError, AttributeError):
        return ""
    return started or datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def _best(run: Path, spec: dict) -> dict | None:
    """{"column", "value", "epoch"}: the best epoch of the column early stopping monitors (its
    default: val_loss, else train_loss), from metrics.csv."""
    from dlc.runtime.trainer import monitor_of

    try:
        rows = read_metrics(run)
        name, lower = monitor_of(spec.get("train") or {}, "val_loss" in rows[0])
        scored = [(r[name], int(r["epoch"])) for r in rows if name in r]
    except (DlcError, OSError, ValueError, IndexError, KeyError):
        return None
    if not scored:
        return None
    value, epoch = (min if lower else max)(scored, key=lambda t: t[0])  # ties: the earliest
    return {"column": name, "value": value, "epoch": epoch}


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    if not path.is_file():
        raise DlcError(f"{run} has no metrics.csv (not a dlc run folder?)")
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def plot_run(run: Path, out: Path) -> None:
    """Loss and each metric per epoch, train against validation, one panel each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DlcError("dlc plot needs matplotlib: pip install 'dlc[plot]'") from None
    rows = read_metrics(run)
    names = sorted({k.split("_", 1)[1] for k in rows[0] if k.startswith(("train_", "val_"))},
                   key=lambda n: (n != "loss", n))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, name in zip(axes[0], names):
        for split in ("train", "val"):
            key = f"{split}_{name}"
            if key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], marker=".", label=split)
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
