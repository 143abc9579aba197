"""`dlc env`: versions, execution providers, and whether CUDA is usable here (and why not)."""

from __future__ import annotations

import platform
import shutil
import subprocess

import numpy
import onnx
import onnxruntime as ort

from dlc import __version__
from dlc.graph import IR_VERSION, OPSET
from dlc.runtime.session import CUDA, cuda_usable


def environment() -> list[tuple[str, str]]:
    """What `dlc env` prints: versions, providers, and whether CUDA is usable (and why not)."""
    providers = ort.get_available_providers()
    ok, reason = cuda_usable(0) if CUDA in providers else (False, "no CUDA provider in this build")
    rows = [("dlc", __version__), ("python", platform.python_version()),
            ("numpy", numpy.__version__),
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


def command() -> None:
    for key, value in environment():
        print(f"{key + ':':22} {value}")
