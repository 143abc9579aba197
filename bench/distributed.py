"""Data-parallel step time and all-reduce time for 1, 2 and 4 workers on this machine (CPU, gloo
over loopback), against the fused single-process step; with the scaling efficiency.

    python bench/distributed.py [--specs a.yaml,b.yaml] [--workers 1,2,4] [--steps 20]

Weak scaling, as data-parallel training runs: each worker keeps train.batch_size B rows of a
global batch of N*B, synthetic data of the spec's input shape. Every worker runs onnxruntime
with 1 intra-op thread (N workers on N cores). efficiency = samples/s with N workers /
(N * samples/s with 1 worker): 1.0 is perfect scaling. all-reduce ms is the time inside
torch.distributed.all_reduce (waiting for the slowest worker included). Traffic per step:
4 bytes x (parameters + losses + B*N*outputs) per all-reduce. One JSON line on stdout;
foreign_cpu_share says how much other processes disturbed the figures (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from _common import ROOT, ForeignLoad, cores

SPECS = "bench/specs/mlp_wide.yaml,specs/digits_cnn.yaml"


def feeds(net, n: int, rng) -> dict:
    import numpy as np

    from dlc.train.step import target_spec

    (shape, _), head = next(iter(net.inputs.values())), net.heads[0]
    return {"x": rng.standard_normal((n, *shape)).astype(np.float32),
            "y": rng.integers(0, head.shape[-1], n).astype(target_spec(head)[0]),
            "lr": np.array(1e-3, np.float32), "step": np.array(1, np.float32)}


class Timed:
    """A Collective that sums the seconds spent in all_reduce."""

    def __init__(self, comm):
        self.comm, self.rank, self.world, self.seconds = comm, comm.rank, comm.world, 0.0

    def all_reduce(self, value):
        t0 = time.perf_counter()
        out = self.comm.all_reduce(value)
        self.seconds += time.perf_counter() - t0
        return out

    def synchronize(self, tensor):  # NCCL's all-reduce only enqueues: its wait counts too
        t0 = time.perf_counter()
        self.comm.synchronize(tensor)
        self.seconds += time.perf_counter() - t0

    def view(self, value):
        return self.comm.view(value)


def child(spec: str, steps: int, fused: bool) -> dict:
    import numpy as np

    from dlc.model.network import build_network
    from dlc.model.spec import load_spec
    from dlc.runtime.session import make_session
    from dlc.runtime.stepper import BoundStepper
    from dlc.train.step import build_split_step, build_train_step, persistent_values

    net = build_network(load_spec(ROOT / spec))
    batch, params, rng = net.spec["train"]["batch_size"], net.init_params(0), \
        np.random.default_rng(0)
    if fused:
        step = build_train_step(net)
        stepper = BoundStepper(make_session(step.model, threads=1),
                               persistent_values(net, step, params))
        comm, n = None, batch
    else:
        from dlc.distributed.collective import join
        from dlc.distributed.stepper import ParallelStepper

        comm = Timed(join())
        grad, update = build_split_step(net)
        stepper = ParallelStepper(make_session(grad.model, threads=1),
                                  make_session(update.model, threads=1),
                                  persistent_values(net, update, params), {}, comm)
        n, step = batch * comm.world, update
    batch_feeds = feeds(net, n, rng)
    for _ in range(3):  # warm-up
        stepper.run(batch_feeds), stepper.commit()
    if comm:
        comm.seconds = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        stepper.run(batch_feeds), stepper.commit()
    seconds = (time.perf_counter() - t0) / steps
    return {"step_ms": round(seconds * 1e3, 2), "samples_per_s": round(n / seconds, 1),
            "allreduce_ms": round(comm.seconds / steps * 1e3, 2) if comm else None,
            "params": step.total, "allreduce_bytes": 4 * step.total}


def spawn(spec: str, workers: int, steps: int, fused: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(workers):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(workers),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", spec, str(steps),
                                       "fused" if fused else "split"], env=env,
                                      stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", default=SPECS)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec, steps, mode = args.child
        print(json.dumps(child(spec, int(steps), mode == "fused")), flush=True)
        return
    results = {}
    with ForeignLoad(children=True) as fl:
        for spec in args.specs.split(","):
            row = {"fused": spawn(spec, 1, args.steps, True)}
            for n in map(int, args.workers.split(",")):
                row[n] = spawn(spec, n, args.steps, False)
                base = row[1]["samples_per_s"] if 1 in row else None
                row[n]["efficiency"] = round(row[n]["samples_per_s"] / (n * base), 3) \
                    if base else None
            results[spec] = row
    print(json.dumps({"bench": "distributed", "cores": cores(), "threads_per_worker": 1,
                      "steps": args.steps, "foreign_cpu_share": fl.value, "results": results}))


if __name__ == "__main__":
    main()
