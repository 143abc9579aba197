"""Shared helpers for the benchmarks in bench/ (run by hand, never by pytest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))
if os.environ.get("DLC_SRC"):  # dlc from another source tree (before/after figures in one run)
    sys.path.insert(0, os.environ["DLC_SRC"])

DEFAULT_SPEC = ROOT / "specs" / "digits_mlp.yaml"


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: Linux's VmHWM, which starts afresh at exec.
    getrusage's ru_maxrss does not: a worker process inherits the high-water mark of the parent
    it was forked from (a 640 MB parent gave a 14 MB child ru_maxrss 637), so it is only the
    fallback where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cores() -> int:
    return os.cpu_count() or 1


def load(spec_path: Path, epochs: int | None, batch_size: int | None, keep_val: bool,
         extra: list[str] = ()):
    """(spec, network, dataset, note) with the benchmark's overrides applied.

    Without keep_val the validation split is set to 0, so train/test is the same 80/20
    stratified split the torch peer (shared/bench/peer_torch.py) uses (dlc's own split indices).
    The validation split is kept anyway (and `note` says why) when early stopping monitors a
    val_ metric, or when loading without it fails."""
    from dlc.data import load_dataset
    from dlc.model.network import build_network
    from dlc.model.spec import load_spec

    overrides = list(extra)
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    spec = load_spec(spec_path, overrides=overrides)
    net = build_network(spec)
    spec_dir = Path(spec_path).resolve().parent
    note = None
    monitor = ((spec.data.get("train") or {}).get("early_stopping") or {}).get("monitor", "")
    if not keep_val and monitor.startswith("val_"):
        note = f"validation split kept: early stopping monitors {monitor}"
    elif not keep_val:
        try:
            spec0 = load_spec(spec_path, overrides=[*overrides, "data.split.val=0"])
            return spec0, build_network(spec0), load_dataset(spec0.data, spec_dir), None
        except Exception as e:  # noqa: BLE001 - report and fall back to the spec's split
            note = (f"validation split kept: data.split.val=0 failed: "
                    f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return spec, net, load_dataset(spec.data, spec_dir), note


def versions() -> dict:
    import numpy as np
    import onnxruntime as ort

    out = {"onnxruntime": ort.__version__, "numpy": np.__version__}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = None
    return out


class ForeignLoad:
    """Share of the machine's CPU time used by OTHER processes between start() and stop()
    (Linux /proc/stat minus this process's own user+system time); None where unavailable.
    A value well above 0 means the timing was disturbed by concurrent work."""

    def __init__(self, children: bool = False):
        self.children = children  # count waited-for child processes as our own

    def _snap(self):
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        t = os.times()
        own = t.user + t.system + (t.children_user + t.children_system if self.children else 0)
        return sum(vals[:8]) / hz, (sum(vals[:8]) - idle) / hz, own

    def __enter__(self):
        self.a = self._snap()
        self.value = None
        return self

    def __exit__(self, *exc):
        b = self._snap()
        if self.a and b and b[0] > self.a[0]:
            total, busy, own = (b[i] - self.a[i] for i in range(3))
            self.value = max(0.0, (busy - own) / total)
        return False
