"""Execution-provider choice and session creation.

`resolve_device` is pure (unit-tested without a GPU); `cuda_usable` really loads the CUDA provider
on a tiny model with onnxruntime's logging silenced, so a machine without CUDA libraries gets one
short line from dlc instead of onnxruntime's multi-line dump.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil

from dlc.errors import DlcError, UsageError
from dlc.graph import Builder
from dlc.runtime import graphcache
from dlc.runtime.cpus import default_threads

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def parse_device(device: str) -> tuple[str, int]:
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", device)
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UsageError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")
    return m.group(1), int(m.group(2) or 0)


def resolve_device(device: str, available: list[str], usable,
                   gpu_seen: bool = True) -> tuple[str, int, str | None]:
    """(kind 'cpu'|'cuda', device id, info line or None). `usable(id)` -> (ok, reason). `auto`
    on a machine where no GPU is seen is plain CPU: no probe, no fall-back line."""
    kind, index = parse_device(device)
    if kind == "cpu" or (kind == "auto" and not gpu_seen):
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


# How a graph is prepared, by its size: (most nodes, onnxruntime optimisation level, plan memory
# reuse, keep the optimised graph across runs); the first row that fits. Measured with
# `bench/first_step.py --levels` (one thread, busy 2-core machine): onnxruntime's memory-reuse
# planner grows about quadratically with the graph: sessions of the 5,845-node train step of a
# 2x256 LSTM over 64 steps took 9.0-10.9 s with it and 0.6-3.3 s without, at every level, for no
# lower peak RSS; on the 1,571-node 6-layer Transformer 0.6-1.1 s against 0.1-0.4 s, for 2-5 %
# lower peak RSS. On the LSTM (no reuse) ORT_ENABLE_ALL took 3.3 s, EXTENDED 2.5 s, BASIC 1.9 s.
# Small graphs keep everything and are ready in milliseconds.
PREPARE = ((500, "ORT_ENABLE_ALL", True, False),
           (1000, "ORT_ENABLE_ALL", True, True),
           (3000, "ORT_ENABLE_ALL", False, True),
           (None, "ORT_ENABLE_EXTENDED", False, True))


def preparation(nodes: int) -> tuple[str, bool, bool]:
    """(optimisation level, plan memory reuse, cache) for a graph of `nodes` nodes."""
    return next(row[1:] for row in PREPARE if row[0] is None or nodes <= row[0])


def session_options(threads: int | None = None, nodes: int = 0):
    import onnxruntime as ort

    level, reuse, _ = preparation(nodes)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.enable_mem_reuse = reuse
    # No memory pattern: with it onnxruntime keeps one block sized for all of a run's planned
    # tensors; without, they come and go through its arena. Peak RSS of training (bench/suite.py
    # models, 1 thread): ResNet-20 1,199 -> 696 MiB, Transformer-6 1,359 -> 879, LSTM 467 -> 348,
    # wide MLP 304 -> 262, text classifier 399 -> 340; CPU time per step equal or lower (digits
    # MLP and CNN: equal within noise)
    opts.enable_mem_pattern = False
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    # Idle threads sleep (onnxruntime's default is to spin): bench/suite.py at 2 threads, 3
    # repeats, spinning (stopped at the end of each run) gave +2 to +6% on a quiet 2-core
    # machine (text classifier -2.5%) and -25 to -36% beside one busy process (MLP 5.5k against
    # 7.5k samples/s, ResNet-20 113 against 151, LSTM 186 against 292), where torch fell 3x
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def make_session(model, kind: str = "cpu", index: int = 0, threads: int | None = None,
                 profile: str | None = None):
    """A session for `model` (a ModelProto, or its bytes). CPU graphs above the smallest size
    reuse their optimised graph across runs (dlc/runtime/graphcache.py). `profile`: a path
    prefix for onnxruntime's profiler (no cache then: the profile should show the real work)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
    data = model if isinstance(model, bytes) else model.SerializeToString()
    nodes = len(proto.graph.node)
    opts = session_options(threads, nodes)
    providers = [(CUDA, {"device_id": index}), CPU] if kind == "cuda" else [CPU]
    where = graphcache.folder() if kind == "cpu" and preparation(nodes)[2] else None
    if profile:
        opts.enable_profiling, opts.profile_file_prefix, where = True, profile, None
    try:
        if where is None:
            return ort.InferenceSession(data, opts, providers=providers)
        return _cached(data, opts, providers, where)
    except Exception as e:  # noqa: BLE001
        raise DlcError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0]}")


def gpu_present() -> bool:
    """Does this machine seem to have an NVIDIA GPU: a device node (/dev/nvidiaN, WSL's /dev/dxg)
    or the driver's nvidia-smi on PATH?"""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")
                or shutil.which("nvidia-smi"))


def _cached(data: bytes, opts, providers, where):
    """The session from the cached optimised graph, or a new one whose graph is cached."""
    import onnxruntime as ort

    name = graphcache.key(data, f"{opts.graph_optimization_level}|{opts.enable_mem_reuse}")
    optimised = graphcache.load(where, name)
    if optimised is not None:
        level = opts.graph_optimization_level
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(optimised, opts, providers=providers)
        except Exception:  # noqa: BLE001 - unloadable (say, damaged): rebuilt below
            graphcache.discard(where, name)
            opts.graph_optimization_level = level
    with graphcache.capture(where, name) as path:
        opts.optimized_model_filepath = path
        return ort.InferenceSession(data, opts, providers=providers)


def choose_device(device: str) -> tuple[str, int, str | None]:
    import onnxruntime as ort

    return resolve_device(device, ort.get_available_providers(), cuda_usable, gpu_present())
