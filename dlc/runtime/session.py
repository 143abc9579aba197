"""Execution-provider choice and session creation.

`resolve_device` is pure (unit-tested without a GPU); `cuda_usable` really loads the CUDA provider
on a tiny model with onnxruntime's logging silenced, so a machine without CUDA libraries gets one
short line from dlc instead of onnxruntime's multi-line dump.
"""

from __future__ import annotations

import functools
import os
import re

from dlc.errors import DlcError, UsageError

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def parse_device(device: str) -> tuple[str, int]:
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", device)
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UsageError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")
    return m.group(1), int(m.group(2) or 0)


def resolve_device(device: str, available: list[str], usable) -> tuple[str, int, str | None]:
    """(kind 'cpu'|'cuda', device id, info line or None). `usable(id)` -> (ok, reason)."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu", 0, None
    ok, reason = usable(index) if CUDA in available else (False, "onnxruntime has no CUDA provider")
    if ok:
        return "cuda", index, None
    if kind == "cuda":
        raise DlcError(f"device {device} requested but CUDA is unusable: {reason}")
    return "cpu", 0, f"device auto: using CPU ({reason})"


@functools.lru_cache(maxsize=None)
def cuda_usable(index: int = 0) -> tuple[bool, str]:
    """Try to create a CUDA session on a one-node model; report why not in one line."""
    import onnxruntime as ort

    from dlc.graph import Builder

    b = Builder()
    b.output(b.Identity(b.input("x", "float32", [1])), "y", "float32", [1])
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.set_default_logger_severity(4)  # the provider bridge logs through the default logger
    try:
        sess = ort.InferenceSession(b.model("probe").SerializeToString(), opts,
                                    providers=[(CUDA, {"device_id": index}), CPU])
    except Exception as e:  # noqa: BLE001 - any failure means unusable; keep the first line
        return False, str(e).strip().splitlines()[0][:200]
    finally:
        ort.set_default_logger_severity(3)
    if CUDA not in sess.get_providers():
        return False, "the CUDA provider could not load (CUDA/cuDNN libraries or a GPU missing)"
    return True, ""


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def make_session(model_bytes: bytes, kind: str = "cpu", index: int = 0,
                 threads: int | None = None):
    import onnxruntime as ort

    providers = [(CUDA, {"device_id": index}), CPU] if kind == "cuda" else [CPU]
    try:
        return ort.InferenceSession(model_bytes, session_options(threads), providers=providers)
    except Exception as e:  # noqa: BLE001
        raise DlcError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0]}")


def choose_device(device: str) -> tuple[str, int, str | None]:
    import onnxruntime as ort

    return resolve_device(device, ort.get_available_providers(), cuda_usable)
