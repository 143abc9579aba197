"""The GPU check of data-parallel training, prepared for a machine with one GPU (< 1 min, no
downloads; onnxruntime-gpu and torch with CUDA installed, /work/shared/GPU.md):

    python bench/distributed_gpu.py [--device cuda|cpu] [--spec specs/digits_mlp.yaml]
                                    [--steps 50] [--batch 64]

One process, a process group of 1 worker (NCCL for GPU memory on cuda, gloo on cpu):
(a) the fused single-process step (BoundStepper) against 1 worker through the data-parallel
step (ParallelStepper: the wire all-reduced in place through DLPack between the gradient and
the update graph) on the same device from the same weights and batches: parameters and
optimizer states equal within 1e-5 relative (in norm) after --steps steps, and the wire's torch
view at the OrtValue's own address on that device; (b) their step times and the all-reduce's
(with its wait). One table on stderr, one JSON line on stdout; exit 1 when (a) fails.
`--device cpu` runs the same check here (tests/test_distributed.py does, with 3 steps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import ROOT
from distributed import Timed

TOLERANCE = 1e-5


def feeds(net, n: int, rng) -> dict:
    """A random batch of n rows of the spec's input shape and classes, lr and step."""
    import numpy as np

    from dlc.train.step import target_spec

    (shape, _), head = next(iter(net.inputs.values())), net.heads[0]
    return {"x": rng.standard_normal((n, *shape)).astype(np.float32),
            "y": rng.integers(0, head.shape[-1], n).astype(target_spec(head)[0]),
            "lr": np.array(1e-3, np.float32), "step": np.array(1, np.float32)}


def steppers(spec: str, device: str):
    """The fused stepper, the 1-worker data-parallel stepper and its timed Collective."""
    import torch
    import torch.distributed as dist

    from dlc.distributed.collective import BACKEND, Collective
    from dlc.distributed.stepper import ParallelStepper
    from dlc.model.network import build_network
    from dlc.model.spec import load_spec
    from dlc.runtime.session import make_session
    from dlc.runtime.stepper import BoundStepper
    from dlc.train.step import build_split_step, build_train_step, persistent_values

    net = build_network(load_spec(ROOT / spec))
    params, on = net.init_params(0), (device, 0)
    fused = build_train_step(net)
    one = BoundStepper(make_session(fused.model, *on), persistent_values(net, fused, params), *on)
    dist.init_process_group(BACKEND if device == "cuda" else "gloo", store=dist.HashStore(),
                            rank=0, world_size=1)
    comm = Timed(Collective(torch))
    grad, update = build_split_step(net)
    split = ParallelStepper(make_session(grad.model, *on), make_session(update.model, *on),
                            persistent_values(net, update, params), {}, comm, *on)
    return net, (fused, one), (update, split), comm


def timed(stepper, batches: list) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        stepper.run(batch), stepper.commit()
    return (time.perf_counter() - t0) / len(batches)


def check(spec: str, device: str, steps: int, batch: int) -> dict:
    import numpy as np

    net, (fused, one), (update, split), comm = steppers(spec, device)
    rng = np.random.default_rng(0)
    batches = [feeds(net, batch, rng) for _ in range(steps)]
    warm = min(3, steps - 1)
    fused_s = [timed(one, batches[:warm]), timed(one, batches[warm:])][1]
    timed(split, batches[:warm])
    comm.seconds = 0.0
    split_s = timed(split, batches[warm:])
    names = ["params", *(f"state.{s}" for s in update.states)]
    errors = {n: float(np.linalg.norm(split.get(n) - one.get(n)) /
                       max(np.linalg.norm(one.get(n)), 1e-30)) for n in names}
    wire = split.wires[batch]
    return {"spec": spec, "device": device, "steps": steps, "batch": batch,
            "params": fused.total, "fused_step_ms": round(fused_s * 1e3, 3),
            "split_step_ms": round(split_s * 1e3, 3),
            "allreduce_ms": round(comm.seconds / (steps - warm) * 1e3, 3),
            "relative_error": errors, "zero_copy": wire.tensor.data_ptr() == wire.value.data_ptr(),
            "wire_device": str(wire.tensor.device),
            "ok": max(errors.values()) < TOLERANCE and wire.tensor.data_ptr() ==
            wire.value.data_ptr() and wire.tensor.device.type == device}


def versions(device: str) -> str:
    import onnxruntime as ort
    import torch

    card = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return f"{card}, onnxruntime {ort.__version__}, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--spec", default="specs/digits_mlp.yaml")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if args.device == "cuda":
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* pip packages
            ort.preload_dlls()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print("onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu",
                  file=sys.stderr)
            return 1
    r = check(args.spec, args.device, max(args.steps, 2), args.batch)
    worst = max(r["relative_error"].values())
    print(f"{versions(args.device)}; {r['spec']}, batch {r['batch']}, {r['params']:,} "
          f"parameters, {r['steps']} steps\n"
          f"| path | step ms | all-reduce ms |\n|---|---|---|\n"
          f"| fused, 1 process | {r['fused_step_ms']} | - |\n"
          f"| 1 worker, {'NCCL' if args.device == 'cuda' else 'gloo'} in place | "
          f"{r['split_step_ms']} | {r['allreduce_ms']} |\n"
          f"weights: max relative error {worst:.2g} (< {TOLERANCE}); zero copy: "
          f"{r['zero_copy']} on {r['wire_device']}: {'ok' if r['ok'] else 'FAILED'}",
          file=sys.stderr)
    print(json.dumps({"bench": "distributed_gpu", "versions": versions(args.device), **r}))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
