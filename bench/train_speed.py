"""End-to-end training throughput: dlc (ONNX Runtime, CPU) vs PyTorch eager (CPU), one process.

    .venv/bin/python bench/train_speed.py [--spec specs/digits_mlp.yaml] [--epochs 20]
        [--batch-size 64] [--repeats 3] [--threads N] [--cores N] [--keep-val] [--json-only]

Both frameworks train the same model (the spec's chain of dense, conv2d, maxpool2d, flatten,
dropout and activation layers, dlc's initial weights copied into torch), with the same optimizer
settings, batch size, epoch count and the SAME data: dlc's `load_dataset` train/test split and
normalisation are fed to both. By default the spec's validation split is set to 0 so that the
split is 80/20 train/test like shared/bench/peer_torch.py (`--keep-val` keeps it; validation is
never timed either way). `--cores N` pins the whole process to N CPUs (`pin_cores`).

What is timed (wall clock, time.perf_counter):
  dlc:   the epoch loop `for each epoch: row = t.train_epoch(); t.end_epoch(row)`, i.e. what
         `Trainer.fit` does minus validation and reporting: shuffling, batch gathering, feed dict
         construction, one `session.run` per step, result unpacking, the per-epoch train metrics.
         Graph building and session creation are NOT timed (reported as dlc_setup_s).
  torch: the peer's loop: randperm, index the batch, zero_grad, forward, loss, backward, step.
Warm-up: before the timed repeats one untimed epoch runs on a throw-away dlc trainer and a
throw-away torch model (loads kernels, spins up thread pools). Then --repeats fresh runs of
each (new trainer / new model, same seed), interleaved dlc, torch, dlc, torch, ...; the reported
samples/s is the MEDIAN over repeats (all values are in the JSON too). Test accuracies are from
the first repeat (runs are seeded, so repeats agree up to thread-order float noise).

Output: one JSON line on stdout (and a short human summary on stderr unless --json-only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax_twin  # noqa: E402  (imports no jax: limit_threads must run first)
from _common import DEFAULT_SPEC, ForeignLoad, cores, load, versions  # noqa: E402

THREADS = cores()  # --threads overrides (both frameworks)


# ---------------------------------------------------------------- dlc ---------------------------
def dlc_run(net, ds, epochs: int, seed: int = 0) -> dict:
    from dlc.train.trainer import Trainer

    t0 = time.perf_counter()
    t = Trainer(net, ds, device=("cpu", 0), seed=seed, threads=THREADS)
    setup = time.perf_counter() - t0
    run_seconds, seen, wall, cpu = 0.0, 0, 0.0, 0.0
    needs_val = t.monitor.startswith("val_")
    with ForeignLoad() as fl:
        for _ in range(epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            row = t.train_epoch()
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            if needs_val:  # early stopping on a val_ metric: validate, untimed
                row.update(t.evaluate(ds.val, "val"))
            t0, c0 = time.perf_counter(), time.process_time()
            stop = t.end_epoch(row)  # state.epoch += 1, schedule + early-stopping bookkeeping
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
            seen += len(ds.train.x)
            run_seconds += len(ds.train.x) / row["run_samples_per_s"]  # inside onnxruntime only
            if stop:
                break
    acc = t.evaluate(ds.test, "test", t.final_params()).get("test_accuracy") if ds.test else None
    return {"wall_s": wall, "samples": seen, "samples_per_s": seen / wall,
            "samples_per_cpu_s": seen / cpu,
            "run_only_samples_per_s": seen / run_seconds, "setup_s": setup,
            "test_acc": acc, "steps": t.state.step, "foreign_load": fl.value,
            "epochs_run": t.state.epoch}


def dlc_warmup(net, ds) -> None:
    from dlc.train.trainer import Trainer

    t = Trainer(net, ds, device=("cpu", 0), seed=1, threads=THREADS)
    t.train_epoch()


# ---------------------------------------------------------------- torch -------------------------
_ACT = {"linear": None, "relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu": "GELU",
        "elu": "ELU", "selu": "SELU", "silu": "SiLU", "softplus": "Softplus"}


def _chain(net) -> list:
    """The network's (layer, per-sample input shape) pairs in order when it is a plain chain
    (each layer reads the previous one, no shared weights) ending at the logits;
    NotImplementedError otherwise."""
    chain, prev = [], None
    for node in net.nodes:
        want = [next(iter(net.inputs))] if prev is None else [prev]
        if list(node.sources) != want or node.layer.cfg.get("share"):
            raise NotImplementedError("only plain layer chains are mirrored in torch")
        chain.append((node.layer, node.in_shapes[0]))
        prev = node.name
        if node.name == net.output:
            break
    return chain


def _torch_activation(cfg: dict) -> list:
    import torch

    act = cfg.get("activation", "linear")
    if act not in _ACT or any(k in cfg for k in ("alpha", "approximate")):
        raise NotImplementedError(f"activation {act}")
    return [getattr(torch.nn, _ACT[act])()] if _ACT[act] else []


def _torch_dense(layer, shape, init) -> list:
    import torch

    w, bias = init[f"{layer.name}.weight"], init.get(f"{layer.name}.bias")
    if w.ndim != 2:
        raise NotImplementedError("dense weight of unexpected rank")
    lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T.copy()))  # dlc keeps [in, out], torch [out, in]
        if bias is not None:
            lin.bias.copy_(torch.from_numpy(bias))
    return [lin, *_torch_activation(layer.cfg)]


def _torch_conv(layer, shape, init) -> list:
    import torch

    k, s, d, pad = jax_twin.window2d(layer, shape)
    w, bias = init[f"{layer.name}.weight"], init.get(f"{layer.name}.bias")  # both [out, in, ...]
    conv = torch.nn.Conv2d(shape[0], w.shape[0], k, s, pad, d, layer.cfg["groups"],
                           bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    return [conv, *_torch_activation(layer.cfg)]


def _torch_maxpool(layer, shape, init) -> list:
    import torch

    k, s, _, pad = jax_twin.window2d(layer, shape)
    return [torch.nn.MaxPool2d(k, s, pad)]


def _torch_plain(module: str):
    """A parameter-free torch module (flatten, activation layers)."""
    def build(layer, shape, init) -> list:
        import torch

        return [getattr(torch.nn, module)()]
    return build


def _torch_dropout(layer, shape, init) -> list:
    import torch

    return [torch.nn.Dropout(layer.cfg.get("rate", 0.5))]


# layer type -> (layer, per-sample input shape, dlc's initial values) -> torch modules
TORCH_LAYERS = {"dense": _torch_dense, "conv2d": _torch_conv, "maxpool2d": _torch_maxpool,
                "flatten": _torch_plain("Flatten"), "dropout": _torch_dropout,
                **{k: _torch_plain(v) for k, v in _ACT.items() if v}}


def torch_model(net, init: dict):
    """The spec's body as a torch Sequential with dlc's initial weights; NotImplementedError for
    layer types this mirror does not cover."""
    import torch

    if any(not getattr(p, "trainable", True) for p in net.params):
        raise NotImplementedError("layers with buffers (batchnorm) are not mirrored")
    mods = []
    for layer, shape in _chain(net):
        build = TORCH_LAYERS.get(layer.cfg["type"])
        if build is None:
            raise NotImplementedError(f"layer type {layer.cfg['type']}")
        mods += build(layer, shape, init)
    return torch.nn.Sequential(*mods)


def torch_optimizer(params, cfg: dict):
    import torch

    kind, lr, wd = cfg["type"], cfg["lr"], cfg.get("weight_decay", 0.0)
    if kind in ("adam", "adamw"):
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=(cfg.get("beta1", 0.9), cfg.get("beta2", 0.999)),
                   eps=cfg.get("eps", 1e-8), weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if kind in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=cfg.get("momentum", 0.9),
                               nesterov=kind == "nesterov", weight_decay=wd)
    raise NotImplementedError(f"optimizer {kind}")


def check_mirrorable(spec) -> None:
    """NotImplementedError when the torch mirror would not train the same thing."""
    task, train_cfg = spec.data["task"], spec.data["train"]
    if task["kind"] != "classification" or task["loss"] != "cross_entropy":
        raise NotImplementedError("only classification with cross_entropy is mirrored")
    sched = train_cfg.get("schedule") or {}
    if sched.get("type", "constant") != "constant" or sched.get("warmup_epochs", 0):
        raise NotImplementedError("lr schedules are not mirrored")
    if train_cfg.get("clip_norm"):
        raise NotImplementedError("gradient clipping is not mirrored")


def torch_run(net, ds, spec, epochs: int, seed: int = 0) -> dict:
    import torch

    torch.manual_seed(seed)
    task, train_cfg = spec.data["task"], spec.data["train"]
    model = torch_model(net, net.init_params(seed))
    opt = torch_optimizer(model.parameters(), train_cfg["optimizer"])
    lossf = torch.nn.CrossEntropyLoss(label_smoothing=float(task.get("label_smoothing", 0.0)))
    x, y = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    n, bs = len(x), train_cfg["batch_size"]
    seen = 0
    model.train()
    with ForeignLoad() as fl:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            perm = torch.randperm(n)
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                opt.zero_grad(set_to_none=True)
                loss = lossf(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                seen += len(idx)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = None
    if ds.test is not None:
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(ds.test.x)).argmax(1).numpy()
        acc = float((pred == ds.test.y).mean())
    return {"wall_s": wall, "samples": seen, "samples_per_s": seen / wall,
            "samples_per_cpu_s": seen / cpu, "test_acc": acc, "foreign_load": fl.value}


# ---------------------------------------------------------------- jax ---------------------------
def jax_side(net, spec):
    """(run(ds, epochs, seed) -> dict, None), or (None, why there is no JAX side)."""
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError as e:
        return None, f"not installed ({e.name})"
    try:
        check_mirrorable(spec)
        chain = _chain(net)
        jax_twin.twin(chain, net.init_params(0))
    except NotImplementedError as e:
        return None, str(e)
    train_cfg, smoothing = spec.data["train"], float(spec.data["task"].get("label_smoothing", 0))
    return (lambda ds, epochs, seed: jax_twin.jax_run(chain, net.init_params(seed), ds, train_cfg,
                                                      smoothing, epochs, seed)), None


# ---------------------------------------------------------------- main --------------------------
def cpu_figures(dlc_runs: list, torch_runs: list, jax_runs: list) -> dict:
    """Samples per CPU second of this process (medians) and dlc's ratios to the others: at one
    thread what each side's work cost, whatever other processes did to the wall clock."""
    out = {}
    for side, runs in (("dlc", dlc_runs), ("torch", torch_runs), ("jax", jax_runs)):
        if runs:
            out[f"{side}_samples_per_cpu_s"] = round(statistics.median(
                r["samples_per_cpu_s"] for r in runs), 1)
    for side in ("torch", "jax"):
        if f"{side}_samples_per_cpu_s" in out:
            out[f"dlc_over_{side}_cpu"] = round(out["dlc_samples_per_cpu_s"]
                                                / out[f"{side}_samples_per_cpu_s"], 3)
    return out


def pin_cores(n: int) -> list[int]:
    """Pin this process to the first `n` CPUs it may use: every thread it has now (numpy's BLAS
    pool may be up already) and, as a thread inherits the mask of the one that starts it, every
    thread any library starts later. The issue's "1 core" figures: JAX's dispatch thread and
    each library's pool then share the core like everyone else's threads."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(allowed):
        raise SystemExit(f"--cores {n}: this process may use 1 to {len(allowed)} CPUs")
    cpus = set(allowed[:n])
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), cpus)
    return sorted(cpus)


def _r(v):
    return None if v is None else round(v, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep-val", action="store_true",
                    help="keep the spec's validation split (default: val=0, 80/20 like the peer)")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for both (default os.cpu_count(), dlc's own default)")
    ap.add_argument("--cores", type=int, default=None,
                    help="pin the process (every side, every thread) to this many CPUs")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()
    global THREADS
    if args.threads:
        THREADS = args.threads
    pinned = pin_cores(args.cores) if args.cores else None  # before any library starts threads
    jax_twin.limit_threads(THREADS)  # before anything imports jax
    load_before = os.getloadavg()[0]

    spec, net, ds, note = load(args.spec, args.epochs, args.batch_size, args.keep_val)
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        torch = None
    torch_skip = None
    if torch is not None:
        try:  # check the mirror before timing anything
            check_mirrorable(spec)
            torch_model(net, net.init_params(0))
            torch_optimizer([torch.nn.Parameter(torch.zeros(1))], spec.data["train"]["optimizer"])
        except NotImplementedError as e:
            torch_skip = str(e)

    seed = int(spec.data["train"].get("seed", 0))
    dlc_warmup(net, ds)
    if torch is not None and torch_skip is None:
        torch_run(net, ds, spec, 1, seed=1)

    jax_run, jax_skip = jax_side(net, spec)
    if jax_run:
        jax_run(ds, 1, seed + 1)

    dlc_runs, torch_runs, jax_runs = [], [], []
    for _ in range(args.repeats):  # interleaved: dlc, torch, jax, dlc, ...
        dlc_runs.append(dlc_run(net, ds, args.epochs, seed))
        if torch is not None and torch_skip is None:
            torch_runs.append(torch_run(net, ds, spec, args.epochs, seed))
        if jax_run:
            jax_runs.append(jax_run(ds, args.epochs, seed))

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    v = versions()
    out = {"bench": "train_speed", "model": Path(args.spec).stem,
           "cores": cores(), "epochs": args.epochs, "batch_size": args.batch_size,
           "train_samples": len(ds.train.x), "test_samples": len(ds.test.x) if ds.test else 0,
           "repeats": args.repeats, "stat": "median",
           "dlc_samples_per_s": round(med(dlc_runs, "samples_per_s"), 1),
           "dlc_run_only_samples_per_s": round(med(dlc_runs, "run_only_samples_per_s"), 1),
           # share of dlc's step spent outside onnxruntime (gathering, feeds, bookkeeping)
           "dlc_outside_run_share": round(1 - med(dlc_runs, "samples_per_s")
                                          / med(dlc_runs, "run_only_samples_per_s"), 3),
           "dlc_wall_s": round(med(dlc_runs, "wall_s"), 4),
           "dlc_epochs_run": dlc_runs[0]["epochs_run"],
           "dlc_setup_s": round(med(dlc_runs, "setup_s"), 4),
           "torch_samples_per_s": None, "torch_wall_s": None, "ratio": None,
           "dlc_test_acc": round(dlc_runs[0]["test_acc"], 4) if dlc_runs[0]["test_acc"] is not None
           else None,
           "torch_test_acc": None,
           "dlc_samples_per_s_all": [round(r["samples_per_s"], 1) for r in dlc_runs],
           "torch_samples_per_s_all": [round(r["samples_per_s"], 1) for r in torch_runs],
           "cpus_pinned": pinned,  # None: the process may use every CPU
           "threads": {"dlc_intra_op": THREADS,
                       "torch": torch.get_num_threads() if torch is not None else None},
           "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "foreign_cpu_share": {"dlc": [_r(r["foreign_load"]) for r in dlc_runs],
                                 "torch": [_r(r["foreign_load"]) for r in torch_runs]},
           "onnxruntime": v["onnxruntime"], "torch": v["torch"], "numpy": v["numpy"]}
    if torch_runs:
        tps = med(torch_runs, "samples_per_s")
        out["torch_samples_per_s"] = round(tps, 1)
        out["torch_wall_s"] = round(med(torch_runs, "wall_s"), 4)
        out["ratio"] = round(out["dlc_samples_per_s"] / tps, 3)
        acc = torch_runs[0]["test_acc"]
        out["torch_test_acc"] = round(acc, 4) if acc is not None else None
    out.update(cpu_figures(dlc_runs, torch_runs, jax_runs))
    if jax_runs:
        out["jax_samples_per_s"] = round(med(jax_runs, "samples_per_s"), 1)
        out["dlc_over_jax"] = round(out["dlc_samples_per_s"] / out["jax_samples_per_s"], 3)
        out["jax_test_acc"] = round(jax_runs[0]["test_acc"], 4)
        out["jax"] = jax_runs[0]["jax"]
    if jax_skip:
        out["jax_skipped"] = jax_skip
    if torch_skip:
        out["torch_skipped"] = torch_skip
    if note:
        out["note"] = note
    print(json.dumps(out), flush=True)
    if not args.json_only:
        r = out["ratio"]
        print(f"# {cores()} cores, {THREADS} threads: dlc {out['dlc_samples_per_s']:.0f} samples/s "
              f"(session.run only {out['dlc_run_only_samples_per_s']:.0f}, "
              f"{out['dlc_outside_run_share']:.1%} outside it), torch "
              f"{out['torch_samples_per_s'] or float('nan'):.0f} samples/s, dlc/torch "
              f"{r if r is not None else math.nan}; test acc dlc {out['dlc_test_acc']} torch "
              f"{out['torch_test_acc']}; per CPU second dlc/torch {out.get('dlc_over_torch_cpu')}"
              f" dlc/jax {out.get('dlc_over_jax_cpu')} ({out.get('jax_skipped', 'jax ran')})",
              file=sys.stderr)


if __name__ == "__main__":
    main()
