"""Data-parallel step time and all-reduce time for 1, 2 and 4 workers on this machine (CPU, gloo
over loopback) for the speed suite's models, against the fused single-process step; with the
scaling efficiency.

    python bench/distributed.py [--models mlp,resnet20,lstm,transformer,textcls]
        [--workers 1,2,4] [--steps N] [--warmup 2] [--markdown] [--dry-run]

The models are bench/suite.py's (one list: suite.MODELS, its specs in bench/specs/ and its
synthetic data). Weak scaling, as data-parallel training runs: each worker keeps the spec's
train.batch_size B rows of a global batch of N*B, from the same seeded batch every step. Every
worker runs onnxruntime with 1 intra-op thread (N workers on N cores), in a process of its own
started with the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT). efficiency =
samples/s with N workers / (N * samples/s with 1 worker): 1.0 is perfect scaling. all-reduce ms
is the time inside torch.distributed.all_reduce (waiting for the slowest worker included).
Traffic: one all-reduce per step of 4 bytes x (parameters + losses + N*B*outputs), `wire_bytes`.
Timed steps default to the suite's per model, halved (a few seconds per side on 2 cores).
One JSON line on stdout (`--markdown`: then docs/distributed.md's table); foreign_cpu_share says
how much other processes disturbed the figures (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time

from _common import ForeignLoad, cores
from suite import MODELS, load_net, synthetic


def feeds(net, step, model: str, n: int) -> dict:
    """A global batch of n rows of the suite's synthetic data, dropout noise, lr and step."""
    import numpy as np

    from dlc.model.names import x_feeds, x_names
    from dlc.train.step import y_feeds

    x, y = synthetic(model, n)
    rng = np.random.default_rng(1)
    noise = {name: rng.random((n, *shape), dtype=np.float32) for name, shape in step.noise}
    return {**x_feeds(x_names(net), x), **y_feeds(y), **noise,
            "lr": np.array(1e-3, np.float32), "step": np.array(1, np.float32)}


class Timed:
    """A Collective that sums the seconds spent in the all-reduce and its wait."""

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


def stepper_of(net, fused: bool):
    """(step graph, stepper, collective or None) of one worker, at 1 onnxruntime thread."""
    from dlc.runtime.session import make_session
    from dlc.runtime.stepper import BoundStepper
    from dlc.train.step import build_split_step, build_train_step, persistent_values

    params = net.init_params(0)
    if fused:
        step = build_train_step(net)
        return step, BoundStepper(make_session(step.model, threads=1),
                                  persistent_values(net, step, params)), None
    from dlc.distributed.collective import join
    from dlc.distributed.stepper import ParallelStepper

    comm = Timed(join())
    grad, update = build_split_step(net)
    stepper = ParallelStepper(make_session(grad.model, threads=1),
                              make_session(update.model, threads=1),
                              persistent_values(net, update, params), {}, comm)
    return grad, stepper, comm


def child(model: str, steps: int, warmup: int, fused: bool) -> dict:
    """One worker's timing: `warmup` untimed steps, then `steps` timed ones."""
    _, net = load_net(model)
    step, stepper, comm = stepper_of(net, fused)
    n = net.spec["train"]["batch_size"] * (comm.world if comm else 1)
    batch = feeds(net, step, model, n)
    for _ in range(warmup):
        stepper.run(batch), stepper.commit()
    if comm:
        comm.seconds = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        stepper.run(batch), stepper.commit()
    seconds = (time.perf_counter() - t0) / steps
    wire = 4 * next(iter(stepper.wires.values())).end if comm else None
    if comm:
        comm.comm.close()
    return {"step_ms": round(seconds * 1e3, 2), "samples_per_s": round(n / seconds, 1),
            "allreduce_ms": round(comm.seconds / steps * 1e3, 2) if comm else None,
            "params": step.total, "wire_bytes": wire}


def timed_steps(model: str, a) -> int:
    """Timed steps: --steps, else half the suite's for the model."""
    return a.steps or max(1, MODELS[model][2] // 2)


def commands(model: str, workers: int, a, fused: bool) -> list[tuple[dict, list[str]]]:
    """(environment, command line) of each worker process of one measurement."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [({"RANK": str(rank), "WORLD_SIZE": str(workers), "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"},
             [sys.executable, __file__, "--child", model, str(timed_steps(model, a)),
              str(a.warmup), "fused" if fused else "split"]) for rank in range(workers)]


def spawn(model: str, workers: int, a, fused: bool) -> dict:
    """Run one measurement's worker processes; rank 0's answer."""
    procs = []
    for env, cmd in commands(model, workers, a, fused):
        err = tempfile.TemporaryFile("w+")  # not a pipe: a full one would stall its worker
        procs.append((subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                       stderr=err, text=True), err))
    outs = [p.communicate(timeout=1200)[0] for p, _ in procs]
    for p, err in procs:
        if p.returncode:
            err.seek(0)
            raise SystemExit(f"{model}, {workers} worker(s): a worker failed:\n"
                             f"{err.read()[-3000:]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def measure(model: str, a) -> dict:
    """The fused step and each worker count of one model; efficiency against 1 worker."""
    row = {"what": MODELS[model][0], "steps": timed_steps(model, a),
           "fused": spawn(model, 1, a, True)}
    for n in a.workers:
        row[n] = spawn(model, n, a, False)
        base = row[1]["samples_per_s"] if 1 in row else None
        row[n]["efficiency"] = round(row[n]["samples_per_s"] / (n * base), 3) if base else None
    return row


def markdown(results: dict, workers: list[int]) -> str:
    """docs/distributed.md's table: per model, step ms, all-reduce ms and efficiency."""
    head = ["model", "fused, 1 process", *(f"{n} worker{'s' * (n > 1)}" for n in workers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results.values():
        mb = row[workers[-1]]["wire_bytes"] / 1e6
        for label, key, fused in ((f"{row['what']}: step ms", "step_ms", row["fused"]["step_ms"]),
                                  (f"all-reduce ms ({mb:.1f} MB at {workers[-1]})",
                                   "allreduce_ms", "-"), ("efficiency", "efficiency", "-")):
            cells = [label, fused, *(row[n][key] if row[n][key] is not None else "-"
                                     for n in workers)]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--steps", type=int, help="timed steps (default: half the suite's, 1-15)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--markdown", action="store_true", help="also print the docs' table")
    ap.add_argument("--dry-run", action="store_true",
                    help="print each worker's command line and run nothing")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.models, a.workers = a.models.split(","), [int(n) for n in a.workers.split(",")]
    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}; the suite's are {', '.join(MODELS)}")
    return a


def main() -> None:
    a = parse_args()
    if a.child:
        model, steps, warmup, mode = a.child
        print(json.dumps(child(model, int(steps), int(warmup), mode == "fused")), flush=True)
        return
    if a.dry_run:
        for model in a.models:
            for n, fused in [(1, True), *((n, False) for n in a.workers)]:
                for env, cmd in commands(model, n, a, fused):
                    print(" ".join(f"{k}={v}" for k, v in env.items()), shlex.join(cmd))
        return
    results = {}
    with ForeignLoad(children=True) as fl:
        for model in a.models:
            results[model] = measure(model, a)
            print(f"# {model} done", file=sys.stderr, flush=True)
    print(json.dumps({"bench": "distributed", "cores": cores(), "threads_per_worker": 1,
                      "warmup": a.warmup, "foreign_cpu_share": fl.value, "results": results}))
    if a.markdown:
        print(markdown(results, a.workers))


if __name__ == "__main__":
    main()
