"""Training speed at realistic model sizes: dlc against PyTorch eager (and JAX where installed).

    .venv/bin/python bench/suite.py [--models mlp,resnet20,lstm,transformer,textcls]
        [--threads 1,2] [--device cpu|cuda] [--steps N] [--warmup 2] [--repeats 3]
        [--peak-gflops 176] [--no-profile] [--no-torch] [--baseline DIR] [--markdown]
        [--json-only] [--dry-run]

Each model is a dlc spec in bench/specs/ and a hand-written PyTorch module into which dlc's
initial weights (seed 0) are copied, trained with the same optimizer (torch.optim.Adam/AdamW with
the spec's settings), loss, batch size, synthetic data and intra-op thread count. Every side of
every repeat runs in a fresh subprocess of its own, so peak RSS (VmHWM, which starts afresh at exec) is that side's
alone; repeats are interleaved (dlc, torch, dlc, torch, ...) and the median is reported.

Timed, per side: `--steps` whole training steps after `--warmup` untimed ones, in the side's
ordinary loop (dlc: `Trainer.train_epoch`, batch gathering, feeds, `session.run`, bookkeeping and
the epoch-end train metrics; torch: index, zero_grad, forward, loss, backward, step). Session
creation and graph building are not timed (`setup_s`). The dlc worker of the first repeat then
runs onnxruntime's profiler over a few steps for the step-time breakdown by op type.

`--baseline DIR` adds a third side, dlc from another source tree (e.g. `git archive` of an older
commit), interleaved with the others: before/after figures from one run. `--markdown` prints
the README table (and the baseline's row under each model's when there is one).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, ForeignLoad, cores, peak_rss_mib, versions  # noqa: E402  (adds ROOT to sys.path)

SPECS = ROOT / "bench" / "specs"
CLASSES = 10
# model: (what it is, data: (per-sample shape, kind), timed steps: about 1-3 s per side on 2
# cores); kind float: N(0, 1); tokens: Zipf ids
MODELS = {
    "mlp": ("MLP 784-1024-1024-10, batch 256, Adam", ((784,), "float"), 20),
    "resnet20": ("ResNet-20 (batchnorm) on 3x32x32, batch 128, Adam", ((3, 32, 32), "float"), 5),
    "lstm": ("LSTM 2x256 over 64 steps, batch 64, Adam", ((64, 32), "float"), 5),
    "transformer": ("Transformer encoder 6 x (d 256, 8 heads, ff 1024), seq 64, batch 32, AdamW",
                    ((64,), "tokens:1000"), 3),
    "textcls": ("text classifier, embedding 30,000 x 128, seq 64, batch 128, Adam",
                ((64,), "tokens:30000"), 30),
}
COMPUTE_BOUND = ("mlp", "resnet20", "transformer")  # the models whose share of peak is reported


def synthetic(model: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The same (x, y) for both sides: seeded, 10 random classes. Token ids are Zipf(1.3)-
    distributed over 1..vocab-1 (frequent ids repeat within a batch, as in text; 0 never occurs,
    so no padding)."""
    shape, kind = MODELS[model][1]
    rng = np.random.default_rng(0)
    if kind == "float":
        x = rng.standard_normal((n, *shape)).astype(np.float32)
    else:
        vocab = int(kind.split(":")[1])
        x = (rng.zipf(1.3, (n, *shape)) % (vocab - 1) + 1).astype(np.int64)
    return x, rng.integers(0, CLASSES, n).astype(np.int64)


def load_net(model: str):
    from dlc.model.network import build_network
    from dlc.model.spec import load_spec

    spec = load_spec(SPECS / f"{model}.yaml")
    return spec, build_network(spec)


def clocks() -> tuple[float, float]:
    """(wall, this process's CPU time): CPU time is what a side's work cost, whatever the other
    processes on a shared machine do to its wall time (at 1 thread; with more, time spent
    spinning at a barrier counts too)."""
    return time.perf_counter(), time.process_time()


def timed(start: tuple, end: tuple) -> dict:
    return {"seconds": end[0] - start[0], "cpu_seconds": end[1] - start[1]}


# ---------------------------------------------------------------- dlc side ---------------------
def dlc_worker(a) -> dict:
    import dlc.runtime.session as session
    from dlc.data import Dataset, Split
    from dlc.train.trainer import Trainer

    spec, net = load_net(a.model)
    batch = spec.data["train"]["batch_size"]
    x, y = synthetic(a.model, batch * (a.warmup + a.steps))
    base = peak_rss_mib()
    options = session.session_options  # every session of this process gets --threads threads
    session.session_options = lambda threads=None, *rest, **kw: options(threads or a.threads,
                                                                       *rest, **kw)
    t0 = time.perf_counter()
    trainer = Trainer(net, Dataset(Split(x, y), None, None, None, None, None), (a.device, 0), 0)
    setup, marks = time.perf_counter() - t0, []
    with ForeignLoad() as fl:
        trainer.train_epoch(on_step=lambda i, n, loss: marks.append((*clocks(), loss)))
        end = clocks()
    out = {"setup_s": round(setup, 2), **timed(marks[a.warmup - 1], end),
           "loss_first": marks[0][-1], "rss_base_mb": round(base), "peak_rss_mb": round(
               peak_rss_mib()), "foreign_cpu_share": fl.value, "batch": batch}
    if a.profile and a.device == "cpu":
        out["profile"] = dlc_profile(trainer, net, x[:batch], y[:batch])
    return out


def dlc_profile(trainer, net, xb, yb) -> dict:
    """Kernel time per op type over 3 runs of the train step (bench/profile_step.py's
    onnxruntime profiler), from the initial parameters: {op: share of kernel time}."""
    import profile_step

    step = trainer.step_graph
    params = net.init_params(0)
    feeds = {**trainer._feeds(xb, yb, 1e-3), "params": step.pack(params),
             **{f"state.{s}": np.zeros(step.total, np.float32) for s in step.states},
             **{p.name: params[p.name] for p in net.buffers}}
    profile_step.THREADS["n"] = trainer.sess.get_session_options().intra_op_num_threads
    prof = profile_step.ort_profile(step.model.SerializeToString(), feeds, 3, set(), warmup=1)
    total = prof["kernel_us_per_run"]
    return {"kernel_ms_per_step": round(total / 1e3, 1),
            "top_ops": {k: round(v / total, 3) for k, v in prof["top_ops_us_per_run"].items()},
            "by_phase": {k: round(v / total, 3) for k, v in prof["by_phase_us_per_run"].items()}}


def init_worker(a) -> dict:
    """dlc's initial weights (seed 0), trainable ones in the spec's order, for the torch side;
    and the FLOPs of a training step per sample: 3x the forward FLOPs that `dlc summary` counts
    (forward, input gradients, weight gradients)."""
    from dlc.commands.summary import rows

    spec, net = load_net(a.model)
    values = net.init_params(0)
    order = [p.name for p in net.params if p.trainable]
    np.savez(a.weights, **{f"{i:04d}": values[n] for i, n in enumerate(order)})
    return {"params": len(order), "train": net.spec["train"],
            "train_flops_per_sample": 3 * sum(row[4] for row in rows(spec))}


# ---------------------------------------------------------------- torch side -------------------
def copy_weights(module, path: str) -> None:
    """dlc's initial values into `module`, by order (checked by shape). 2-D weights of linear,
    attention and recurrent layers are stored [in, out] by dlc, [out, in] by torch."""
    import torch

    weights = np.load(path)
    values = [weights[k] for k in sorted(weights.files)]
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    params = list(module.parameters())
    if len(params) != len(values):
        raise SystemExit(f"torch twin has {len(params)} parameters, dlc {len(values)}")
    with torch.no_grad():
        for p, v in zip(params, values):
            if v.ndim == 2 and id(p) not in embeddings:
                v = v.T
            if tuple(p.shape) != v.shape:
                raise SystemExit(f"parameter shape {tuple(p.shape)} != dlc's {v.shape}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(v)))


def torch_worker(a) -> dict:
    import torch
    import torch_models

    from train_speed import torch_optimizer

    torch.set_num_threads(a.threads)
    cfg = json.loads(a.train_cfg)
    batch = cfg["batch_size"]
    x, y = synthetic(a.model, batch * (a.warmup + a.steps))
    base = peak_rss_mib()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = torch_models.build(a.model)
    copy_weights(net, a.weights)
    net = net.to(a.device).train()
    opt = torch_optimizer(net.parameters(), cfg["optimizer"])
    lossf = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x).to(a.device), torch.from_numpy(y).to(a.device)
    setup, marks = time.perf_counter() - t0, []
    with ForeignLoad() as fl:
        perm = torch.randperm(len(xt), device=a.device)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            marks.append((*clocks(), float(loss)))  # float(): waits for the step
    return {"setup_s": round(setup, 2), **timed(marks[a.warmup - 1], marks[-1]),
            "loss_first": marks[0][-1], "rss_base_mb": round(base),
            "peak_rss_mb": round(peak_rss_mib()), "foreign_cpu_share": fl.value, "batch": batch}


# ---------------------------------------------------------------- orchestration ----------------
def command(side: str, model: str, a, threads: int, extra: list[str]) -> tuple[dict, list]:
    """(environment variables, command line) of the subprocess for one side of one repeat."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if side == "baseline":  # dlc from the --baseline tree (bench/_common.py reads DLC_SRC)
        side, env["DLC_SRC"] = "dlc", str(Path(a.baseline).resolve())
    return env, [sys.executable, __file__, "--worker", side, "--model", model, "--threads",
                 str(threads), "--device", a.device, "--steps", str(steps(model, a)),
                 "--warmup", str(a.warmup), *extra]


def worker(side: str, model: str, a, threads: int, extra: list[str]) -> dict:
    """One fresh subprocess for one side of one repeat; its JSON line back."""
    env, cmd = command(side, model, a, threads, extra)
    r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{side} worker for {model} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def steps(model: str, a) -> int:
    return a.steps or MODELS[model][2]


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def run_model(model: str, threads: int, a, tmp: str) -> dict:
    weights = os.path.join(tmp, f"{model}.npz")
    init = worker("init", model, a, threads, ["--weights", weights])
    cfg = ["--weights", weights, "--train-cfg", json.dumps(init["train"])]
    runs = {"dlc": [], "torch": [], "baseline": []}
    for r in range(a.repeats):  # interleaved: dlc, torch, baseline, dlc, torch, ...
        profile = ["--profile"] if r == 0 and not a.no_profile else []
        runs["dlc"].append(worker("dlc", model, a, threads, profile))
        if a.torch:
            runs["torch"].append(worker("torch", model, a, threads, cfg))
        if a.baseline:
            runs["baseline"].append(worker("baseline", model, a, threads, profile))
    out = {"bench": "suite", "model": model, "what": MODELS[model][0], "device": a.device,
           "threads": threads, "cores": cores(), "steps": steps(model, a), "warmup": a.warmup,
           "repeats": a.repeats, "train_gflop_per_sample": init["train_flops_per_sample"] / 1e9,
           "jax": "no JAX twin yet" if jax_available() else "jax not installed"}
    for side, rs in runs.items():
        if not rs:
            continue
        per_s = [r["batch"] * steps(model, a) / r["seconds"] for r in rs]
        per_cpu_s = [r["batch"] * steps(model, a) / r["cpu_seconds"] for r in rs]
        out[side] = {"samples_per_s": round(statistics.median(per_s), 1),
                     "samples_per_s_all": [round(v, 1) for v in per_s],
                     "samples_per_cpu_s": round(statistics.median(per_cpu_s), 1),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                     "rss_base_mb": rs[0]["rss_base_mb"], "setup_s": rs[0]["setup_s"],
                     "loss_first": round(rs[0]["loss_first"], 4),
                     "foreign_cpu_share": max((r["foreign_cpu_share"] or 0.0) for r in rs)}
        peak = a.peak_gflops * 1e9 * min(threads, cores()) / cores()
        if model in COMPUTE_BOUND:
            out[side]["share_of_peak"] = round(
                out[side]["samples_per_s"] * init["train_flops_per_sample"] / peak, 3)
    for side in ("dlc", "baseline"):
        if runs[side] and "profile" in runs[side][0]:
            out[side]["profile"] = runs[side][0]["profile"]
    for key, ratio in (("samples_per_s", "ratio"), ("samples_per_cpu_s", "cpu_ratio")):
        for side, prefix in (("dlc", ""), ("baseline", "baseline_")):
            if runs[side] and runs["torch"]:  # cpu_ratio: per CPU second, see clocks()
                out[prefix + ratio] = round(out[side][key] / out["torch"][key], 3)
    return out


def dry_run(a) -> None:
    """--dry-run: the command line of each side's worker for the first repeat, nothing run
    (the train settings come from the init worker's answer: a placeholder here)."""
    for threads in [int(t) for t in a.threads.split(",")]:
        for model in a.models.split(","):
            weights = ["--weights", f"TMP/{model}.npz"]
            sides = [("init", weights), ("dlc", [] if a.no_profile else ["--profile"]),
                     ("torch", [*weights, "--train-cfg", "TRAIN_CFG"] if a.torch else None),
                     ("baseline", [] if a.baseline else None)]
            for side, extra in sides:
                if extra is not None:
                    env, cmd = command(side, model, a, threads, extra)
                    print(" ".join(f"{k}={v}" for k, v in env.items()), shlex.join(cmd))


def fmt_rate(v: float) -> str:
    return f"{v / 1000:.2f}k" if v >= 1000 else f"{v:.0f}"


def markdown(results: list[dict]) -> str:
    """The README table, one row per model and thread count (and one for the baseline)."""
    lines = ["| model | threads | dlc samples/s | PyTorch eager | dlc / torch | JAX jit | "
             "peak RSS dlc / torch (MB) | share of peak FLOP/s dlc / torch | dlc step: top "
             "ops (share of kernel time) |", "|" + "---|" * 9]
    for r in results:
        t = r.get("torch") or {}
        for side, what in (("dlc", r["what"]), ("baseline", "  same, baseline dlc")):
            d = r.get(side)
            if not d:
                continue
            share = (f"{d['share_of_peak']:.0%} / {t['share_of_peak']:.0%}"
                     if "share_of_peak" in d and t else "")
            top = ", ".join(f"{k} {v:.0%}" for k, v in
                            list(d.get("profile", {}).get("top_ops", {}).items())[:3])
            ratio = r.get("ratio" if side == "dlc" else "baseline_ratio", "–")
            lines.append(f"| {what} | {r['threads']} | {fmt_rate(d['samples_per_s'])} | "
                         f"{fmt_rate(t['samples_per_s']) if t else '–'} | {ratio} | – | "
                         f"{d['peak_rss_mb']} / {t.get('peak_rss_mb', '–')} | {share} | {top} |")
    return "\n".join(lines)


def check_cuda(with_torch: bool) -> None:
    """--device cuda needs onnxruntime's CUDA provider (and torch's CUDA): one line if not."""
    from dlc.runtime.session import cuda_usable

    ok, why = cuda_usable(0)
    if not ok:
        raise SystemExit(f"--device cuda: onnxruntime cannot use CUDA: {why}")
    if with_torch:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch.cuda.is_available() is False (use --no-torch)")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, help="timed steps per side and repeat (default: "
                   "the model's, 3-30)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-gflops", type=float, default=176.0,
                   help="the machine's fp32 peak with all cores (2 AVX2-FMA cores: ~160-190)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--baseline", help="also run dlc from this source tree (e.g. `git archive` "
                   "of an older commit) as a third side, for before/after figures in one run")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="print each side's worker command line and run nothing")
    p.add_argument("--json-only", action="store_true")
    # worker mode (internal)
    p.add_argument("--worker", choices=["dlc", "torch", "init"])
    p.add_argument("--model")
    p.add_argument("--weights")
    p.add_argument("--train-cfg")
    p.add_argument("--profile", action="store_true")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    if a.worker:
        a.threads = int(a.threads)
        fn = {"dlc": dlc_worker, "torch": torch_worker, "init": init_worker}[a.worker]
        print(json.dumps(fn(a)), flush=True)
        return
    if a.dry_run:
        return dry_run(a)
    if a.device == "cuda":
        check_cuda(a.torch)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in [int(t) for t in a.threads.split(",")]:
            for model in a.models.split(","):
                r = {**run_model(model, threads, a, tmp), "versions": versions(),
                     "loadavg_1min": round(os.getloadavg()[0], 2)}
                results.append(r)
                print(json.dumps(r), flush=True)
                if not a.json_only:
                    print(f"# {model} x{threads}: dlc {r['dlc']['samples_per_s']:,.0f}/s "
                          f"torch {r.get('torch', {}).get('samples_per_s', float('nan')):,.0f}/s "
                          f"ratio {r.get('ratio')} per CPU second {r.get('cpu_ratio')} "
                          f"(baseline {r.get('baseline_cpu_ratio')})", file=sys.stderr)
    if a.markdown:
        print(markdown(results))
        steps_arg = f" --steps {a.steps}" if a.steps else ""
        print(f"\nRegenerate: `python bench/suite.py --markdown --threads {a.threads}"
              f"{steps_arg} --repeats {a.repeats}`")


if __name__ == "__main__":
    main()
