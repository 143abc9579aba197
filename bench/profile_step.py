"""Where the time of one dlc train step goes (CPU), with a few what-if variants.

    .venv/bin/python bench/profile_step.py [--spec specs/digits_mlp.yaml] [--steps 500]
        [--epochs 5] [--rounds 5] [--batch-size 64] [--threads N] [--keep-val] [--no-variants]
        [--no-ort-profile] [--json-only]

Measured on the spec's train-step graph with dlc's own Trainer, session and BoundStepper (CPU),
after one untimed warm-up epoch. Microseconds per step, median over --rounds rounds; every round
measures everything once, so load drift affects all measurements alike (`min_over_rounds` too):

  epoch_per_step      Trainer.train_epoch() wall time / steps, --epochs epochs per round: the
                      real thing (shuffle, gather, feeds, run, unpack, per-epoch train metrics).
  breakdown           the same loop as train_epoch + BoundStepper.run, instrumented part by part:
                        gather  order slice, train.x[idx] (+ augment), train.y[idx]
                        feeds   Trainer._feeds(): x, y, lr, step (+ dropout noise)
                        bind    the batch feeds rebound on the prebuilt IOBinding (result
                                buffers: bound once per batch size)
                        run     run_with_iobinding
                        unpack  results to host arrays, the finiteness check, commit, the
                                streaming train-metric sums
                        metrics the per-epoch train metrics from those sums, / steps per epoch
  run_prebuilt        plain session.run alone (HostStepper's way: parameters and states fed as
                      numpy arrays), the same prebuilt feed dict every call.
  variants_run_only   session.run-only cost under other settings / graph tweaks, each a fresh
                      session with dlc's session options unless named, round-robin in blocks of
                      --steps calls, median and min over --rounds blocks:
                        dlc_session / default   controls (dlc's own session; a fresh one)
                        spin          session.intra_op.allow_spinning=1 (dlc sets 0)
                        threads1      intra_op_num_threads=1 (dlc: os.cpu_count())
                        no_output_identity   the graph without the Identity nodes that
                                      Builder.output adds to rename tensors to output names
                                      (checked: identical outputs)
                        iobinding     run_with_iobinding with two prebuilt bindings that ping-pong
                                      the persistent tensors (flat params, optimizer states)
                                      between two preallocated buffer sets; loss/grad_norm/logits
                                      into preallocated buffers; only x/y/lr/step rebound per
                                      step (checked: same parameters as session.run after 3 steps)
                        dlc_bound_stepper_cpu   dlc's own BoundStepper (the CUDA path's IOBinding
                                      ping-pong) used on CPU: run + commit per step
                        ...+threads1 etc.: combinations.
  update_only_what_if dlc's Adam update (dlc.train.optim.Optimizer) in a graph of its own,
                      gradients as inputs: one flat buffer (what dlc does now) vs one tensor
                      per parameter.
  ort_profile         onnxruntime's profiler (SessionOptions.enable_profiling): kernel time per
                      run by op type (top 10) and by node (top 12), by graph phase (forward,
                      loss, backward `*.grad`, param_views `params/`, grad_flatten `grad/`, clip,
                      update, output_identity) and the share of model_run inside kernels. The
                      profiler slows every kernel (model_run is ~2-3x the unprofiled run), so
                      read these as proportions.

Output: one JSON line on stdout and a small table on stderr (unless --json-only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SPEC, ForeignLoad, cores, load, versions  # noqa: E402

US = 1e6
THREADS = {"n": None}  # --threads: intra-op threads of every session (None: dlc's default)
RESULTS = ("loss", "logits", "grad_norm")


# ---------------------------------------------------------------- breakdown --------------------
def breakdown(t, epochs: int) -> dict:
    """Trainer.train_epoch with BoundStepper.run inlined, timed part by part (same work, same
    order), for `epochs` epochs; microseconds per step for each part."""
    from dlc.model import metrics as M
    from dlc.data.augment import augment
    from dlc.model.names import suffixed

    st, train, stepper, sess = t.state, t.data.train, t.stepper, t.sess
    bs, n = t.cfg["batch_size"], len(train.x)
    aug = (t.net.spec.get("data") or {}).get("augment")
    parts, done, pc = defaultdict(float), 0, time.perf_counter
    for _ in range(epochs):
        order = st.rng.permutation(n)
        running = {h.name: M.Running(h.kind) for h in t.net.heads}
        for i in range(t.steps_per_epoch):
            t0 = pc()
            idx = order[i * bs:(i + 1) * bs]
            xb = augment(train.x[idx], aug, st.rng) if aug else train.x[idx]
            yb = train.y[idx]
            t1 = pc()
            feeds = t._feeds(xb, yb, t.schedule.lr(st.epoch, i))
            t2 = pc()
            binding = stepper.bindings[stepper.cur]
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            outs = stepper._result_buffers(binding, len(idx))
            t3 = pc()
            sess.run_with_iobinding(binding)
            t4 = pc()
            out = {k: np.array(v.numpy()) for k, v in outs.items()}
            st.step += 1
            if math.isfinite(float(out["loss"])) and math.isfinite(float(out["grad_norm"])):
                stepper.commit()
                for h in t.net.heads:
                    running[h.name].add(h.targets(yb), out[suffixed("logits", h.name)])
            t5 = pc()
            for k, a, b in (("gather", t0, t1), ("feeds", t1, t2), ("bind", t2, t3),
                            ("run", t3, t4), ("unpack", t4, t5)):
                parts[k] += b - a
            done += 1
        t0 = pc()
        for h in t.net.heads:
            running[h.name].result()
        parts["metrics"] += pc() - t0
        st.epoch += 1
    return {k: v / done * US for k, v in parts.items()}


# ---------------------------------------------------------------- variants ---------------------
def persistent_values(t) -> dict:
    """Host copies of the stepper's persistent tensors and the frozen parameters (the feeds a
    plain session.run needs beside the batch)."""
    return {**{n: t.stepper.get(n) for n in t.stepper.sets[0]}, **t.frozen}



def make_session(model_bytes: bytes, threads: int | None = None, spinning: bool = False,
                 profile_prefix: str | None = None):
    """A CPU session with dlc's own session options (dlc.runtime.session.session_options),
    optionally with another thread count, spinning allowed, or ORT profiling on."""
    import onnxruntime as ort

    from dlc.runtime.session import session_options

    opts = session_options(threads or THREADS["n"])
    if spinning:  # dlc sets "0"; overriding logs a warning through the default logger
        ort.set_default_logger_severity(3)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


class PingPong:
    """Two IOBindings: persistent tensors read from buffer set A and written to set B, and back.
    x/y/lr/step are bound per call (bind_cpu_input: zero-copy for contiguous arrays); loss,
    grad_norm and logits go to preallocated buffers too (full batches only)."""

    def __init__(self, sess, persistent: dict, logits_shape: tuple):
        import onnxruntime as ort

        self.sess = sess
        self.carried = list(persistent)
        self.sets = [{k: np.array(v, np.float32, copy=True) for k, v in persistent.items()}
                     for _ in range(2)]
        self.extras = {"loss": np.zeros((), np.float32), "grad_norm": np.zeros((), np.float32),
                       "logits": np.zeros(logits_shape, np.float32)}
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            io = sess.io_binding()
            for k in self.carried:
                io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(self.sets[src][k]))
                buf = self.sets[dst][k]
                io.bind_output(f"{k}.new", "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            for k, buf in self.extras.items():
                io.bind_output(k, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            self.bindings.append(io)
        self.cur = 0  # which buffer set holds the current values

    def step(self, feeds: dict):
        io = self.bindings[self.cur]
        for k, v in feeds.items():
            io.bind_cpu_input(k, v)
        self.sess.run_with_iobinding(io)
        self.cur ^= 1
        return self.extras

    def values(self) -> dict:
        return self.sets[self.cur]


def strip_output_identities(model_bytes: bytes) -> bytes:
    """What-if: the graph without the Identity nodes that only rename a tensor to a graph output
    name (Builder.output adds one per output). The producer writes the output name directly and
    its other consumers read it under that name."""
    import onnx

    m = onnx.load_from_string(model_bytes)
    g = m.graph
    outputs = {o.name for o in g.output}
    inputs = {i.name for i in g.input} | {i.name for i in g.initializer}
    producers = {o for n in g.node for o in n.output}
    rename, drop = {}, set()
    for i, n in enumerate(g.node):
        if (n.op_type == "Identity" and n.output[0] in outputs and n.input[0] not in outputs
                and n.input[0] not in inputs and n.input[0] in producers
                and n.input[0] not in rename):
            rename[n.input[0]] = n.output[0]
            drop.add(i)
    keep = [onnx.NodeProto.FromString(n.SerializeToString())
            for i, n in enumerate(g.node) if i not in drop]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
        for i, name in enumerate(n.output):
            if name in rename:
                n.output[i] = rename[name]
    del g.node[:]
    g.node.extend(keep)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def compare(fns: dict, steps: int, blocks: int) -> dict:
    """Round-robin blocks of `steps` calls over fns (so load drift hits all alike);
    {name: {"median": us/call, "min": us/call}} over the blocks."""
    per = {k: [] for k in fns}
    for _ in range(blocks):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            per[k].append((time.perf_counter() - t0) / steps * US)
    return {k: {"median": round(statistics.median(v), 1), "min": round(min(v), 1)}
            for k, v in per.items()}


def variants(t, batch_feeds: dict, steps: int, blocks: int, logits_shape: tuple) -> dict:
    """session.run-only cost of the step under other settings / small graph changes."""
    model_bytes = t.step_graph.model.SerializeToString()
    lean = strip_output_identities(model_bytes)
    persistent = persistent_values(t)
    full = {**batch_feeds, **persistent}
    fns = {"dlc_session": lambda: t.sess.run(None, full)}
    plain = {"default": (model_bytes, {}), "spin": (model_bytes, {"spinning": True}),
             "threads1": (model_bytes, {"threads": 1}), "no_output_identity": (lean, {}),
             "no_output_identity+threads1": (lean, {"threads": 1})}
    sessions = {}
    for name, (mb, kw) in plain.items():
        sessions[name] = make_session(mb, **kw)
        fns[name] = (lambda s: lambda: s.run(None, full))(sessions[name])
    for name, (mb, kw) in {"iobinding": (model_bytes, {}),
                           "iobinding+threads1": (model_bytes, {"threads": 1}),
                           "iobinding+no_output_identity+threads1": (lean, {"threads": 1})
                           }.items():
        pp = PingPong(make_session(mb, **kw), persistent, logits_shape)
        fns[name] = (lambda pp: lambda: pp.step(batch_feeds))(pp)
    try:
        from dlc.runtime.stepper import BoundStepper

        for name, kw in {"dlc_bound_stepper_cpu": {},
                         "dlc_bound_stepper_cpu+threads1": {"threads": 1}}.items():
            bstep = BoundStepper(make_session(model_bytes, **kw), persistent, "cpu", 0)

            def go(b=bstep):
                b.run(batch_feeds)
                b.commit()
            fns[name] = go
    except ImportError:
        pass
    for fn in fns.values():  # the first run of a session allocates
        fn()
    res = compare(fns, steps, blocks)

    # checks: the identity-free graph gives identical outputs; ping-pong gives the same values
    names = [o.name for o in t.sess.get_outputs()]
    ref = dict(zip(names, t.sess.run(None, full)))
    s = sessions["no_output_identity"]
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, full)))
    res["no_output_identity_max_abs_diff"] = float(max(np.abs(ref[k] - got[k]).max()
                                                       for k in ref))
    pp = PingPong(make_session(model_bytes), persistent, logits_shape)
    cur = dict(full)
    for k in range(3):
        step = np.array(k + 1, np.float32)
        out = dict(zip(names, t.sess.run(None, {**cur, "step": step})))
        for p in pp.carried:
            cur[p] = out[f"{p}.new"]
        pp.step({**batch_feeds, "step": step})
    res["iobinding_max_abs_diff_vs_run"] = float(max(np.abs(pp.values()[p] - cur[p]).max()
                                                     for p in pp.carried))
    return res


def update_microbench(t, steps: int, blocks: int) -> dict:
    """dlc's optimizer update (dlc.train.optim.Optimizer, the ops of the train step) as a graph
    of its own with gradients as inputs: one flat buffer of all parameters (dlc now) vs one
    tensor per parameter (dlc before the flat layout)."""
    from dlc.graph import Builder
    from dlc.train.optim import Optimizer

    cfg = t.cfg["optimizer"]
    shapes = {n: tuple(np.shape(v)) for n, v in t.params.items()
              if n in set(t.step_graph.params)}
    total = int(sum(int(np.prod(s)) for s in shapes.values()))

    def graph(tensors: dict) -> tuple[bytes, dict]:
        b = Builder()
        lr, step = b.input("lr", "float32", []), b.input("step", "float32", [])
        opt = Optimizer(b, cfg, lr, step)
        feeds = {"lr": np.array(1e-3, np.float32), "step": np.array(3, np.float32)}
        rng = np.random.default_rng(0)
        for p, shape in tensors.items():
            w = b.input(p, "float32", list(shape))
            g = b.input(f"{p}.grad", "float32", list(shape))
            st = {s: b.input(f"{p}.{s}", "float32", list(shape)) for s in opt.states}
            with b.scope(f"{p}.update"):
                w_new, st_new = opt.update(w, g, st)
            b.output(w_new, f"{p}.new", "float32", list(shape))
            for s in opt.states:
                b.output(st_new[s], f"{p}.{s}.new", "float32", list(shape))
            for k in [p, f"{p}.grad", *[f"{p}.{s}" for s in opt.states]]:
                feeds[k] = rng.random(shape, dtype=np.float32)
        return b.model("update").SerializeToString(), feeds

    per_param, f1 = graph(shapes)
    flat, f2 = graph({"flat": (total,)})
    s1, s2 = make_session(per_param), make_session(flat)
    s1.run(None, f1), s2.run(None, f2)
    res = compare({"flat": lambda: s2.run(None, f2), "per_param": lambda: s1.run(None, f1)},
                  steps, blocks)
    return {"params": len(shapes), "elements": total, **res}


# ---------------------------------------------------------------- ORT profiler -----------------
def phase_of(node: str, op: str, outputs: set) -> str:
    if node in outputs and op == "Identity":
        return "output_identity"
    if node.startswith("update/") or ".update/" in node:
        return "update"
    if node.startswith("clip/"):
        return "clip"
    if node.startswith("grad/"):
        return "grad_flatten"
    if node.startswith("params/"):
        return "param_views"
    if ".grad" in node:
        return "backward"
    if node.startswith("loss/"):
        return "loss"
    return "forward"


def ort_profile(model_bytes, feeds, steps: int, outputs: set, warmup: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as d:
        s = make_session(model_bytes, profile_prefix=os.path.join(d, "dlc_step"))
        for _ in range(steps + warmup):
            s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    by_op, by_phase, counts = defaultdict(float), defaultdict(float), defaultdict(int)
    by_node = defaultdict(float)
    runs = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            node = e["name"][: -len("_kernel_time")]
            by_op[op] += e["dur"]
            by_node[f"{node} ({op})"] += e["dur"]
            by_phase[phase_of(node, op, outputs)] += e["dur"]
            counts[op] += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"])
    scale = 1.0 / max(len(runs), 1)  # kernel totals are over every run, warm-up included
    share = sum(by_op.values()) / sum(runs) if runs else None
    runs = runs[warmup:]
    kernels = sum(by_op.values()) * scale
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:10]
    med = statistics.median(runs) if runs else None
    return {
        "runs": len(runs),
        "model_run_us": round(med, 1) if med else None,
        "kernel_us_per_run": round(kernels, 1),
        "kernel_share_of_run": round(share, 3) if share else None,  # sum kernels / sum runs
        "kernels_per_run": round(sum(counts.values()) * scale),
        "top_ops_us_per_run": {k: round(v * scale, 1) for k, v in top},
        "top_ops_calls_per_run": {k: round(counts[k] * scale) for k, _ in top},
        "top_nodes_us_per_run": {k: round(v * scale, 1) for k, v in
                                 sorted(by_node.items(), key=lambda kv: -kv[1])[:12]},
        "by_phase_us_per_run": {k: round(v * scale, 1)
                                for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1])},
    }


def graph_stats(model_bytes) -> dict:
    import onnx
    import onnxruntime as ort

    from dlc.runtime.session import session_options

    m = onnx.load_from_string(model_bytes)
    with tempfile.TemporaryDirectory() as d:
        opts = session_options()
        opts.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        opt = onnx.load(opts.optimized_model_filepath)
    ops = defaultdict(int)
    for n in opt.graph.node:
        ops[n.op_type] += 1
    return {"inputs": len(m.graph.input), "outputs": len(m.graph.output),
            "nodes": len(m.graph.node), "nodes_after_ort_optimization": len(opt.graph.node),
            "identity_after_ort_optimization": ops.get("Identity", 0)}


# ---------------------------------------------------------------- main -------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads of every session (default: dlc's, os.cpu_count())")
    ap.add_argument("--keep-val", action="store_true")
    ap.add_argument("--no-ort-profile", action="store_true")
    ap.add_argument("--no-variants", action="store_true")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()

    from dlc.train.trainer import Trainer

    spec, net, ds, note = load(args.spec, None, args.batch_size, args.keep_val)
    THREADS["n"] = args.threads
    t = Trainer(net, ds, device=("cpu", 0), seed=0, threads=args.threads)
    t.train_epoch()  # warm-up
    t.state.epoch += 1
    bs = args.batch_size
    idx = np.arange(min(bs, len(ds.train.x)))
    lr = t.schedule.lr(0, 0)
    batch_feeds = t._feeds(ds.train.x[idx], ds.train.y[idx], lr)
    full = {**batch_feeds, **persistent_values(t)}
    logits_shape = (len(idx), *net.output_shape)

    def epochs_per_step() -> float:
        t0, s0 = time.perf_counter(), t.state.step
        for _ in range(args.epochs):
            t.train_epoch()
            t.state.epoch += 1
        return (time.perf_counter() - t0) / (t.state.step - s0) * US

    def block(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        return (time.perf_counter() - t0) / args.steps * US

    foreign = ForeignLoad().__enter__()
    rounds = defaultdict(list)
    for _ in range(args.rounds):
        rounds["epoch_per_step"].append(epochs_per_step())
        for k, v in breakdown(t, args.epochs).items():
            rounds["breakdown." + k].append(v)
        rounds["run_prebuilt"].append(block(lambda: t.sess.run(None, full)))
    med = {k: round(statistics.median(v), 1) for k, v in rounds.items()}
    mins = {k: round(min(v), 1) for k, v in rounds.items()}
    parts = {k.split(".", 1)[1]: v for k, v in med.items() if k.startswith("breakdown.")}

    model_bytes = t.step_graph.model.SerializeToString()
    stats = graph_stats(model_bytes)
    stats["param_elements"] = int(getattr(t.step_graph, "total", 0))
    out = {"bench": "profile_step", "model": Path(args.spec).stem, "cores": cores(),
           "intra_op_threads": args.threads or cores(), "batch_size": bs, "steps": args.steps,
           "rounds": args.rounds, "stat": "median over rounds", "unit": "us_per_step",
           "graph": stats,
           "epoch_per_step": med["epoch_per_step"],
           "breakdown": parts,
           "breakdown_sum": round(sum(parts.values()), 1),
           "run_prebuilt": med["run_prebuilt"],
           "min_over_rounds": mins}
    if not args.no_variants:
        out["variants_run_only"] = variants(t, batch_feeds, args.steps, args.rounds,
                                            logits_shape)
        out["update_only_what_if"] = update_microbench(t, args.steps, args.rounds)
    foreign.__exit__(None, None, None)
    if not args.no_ort_profile:
        out["ort_profile"] = ort_profile(model_bytes, full, args.steps,
                                         {o.name for o in t.sess.get_outputs()})
    if note:
        out["note"] = note
    out["loadavg_1min"] = round(os.getloadavg()[0], 2)
    out["foreign_cpu_share"] = None if foreign.value is None else round(foreign.value, 3)
    out.update({k: v for k, v in versions().items() if k != "torch"})
    print(json.dumps(out), flush=True)

    if args.json_only:
        return
    p = lambda s="": print(s, file=sys.stderr)  # noqa: E731
    p(f"# {cores()} cores, batch {bs}, {stats['inputs']} inputs / {stats['outputs']} outputs / "
      f"{stats['nodes']} nodes ({stats['nodes_after_ort_optimization']} after ORT opt); "
      f"foreign CPU share {out['foreign_cpu_share']}")
    p(f"# {'us/step':>10}  what (median over {args.rounds} rounds)")
    p(f"# {out['epoch_per_step']:>10}  train_epoch wall / steps")
    for k, v in parts.items():
        p(f"# {v:>10}    {k}")
    p(f"# {out['run_prebuilt']:>10}  session.run alone, prebuilt feeds")
    for k, v in out.get("variants_run_only", {}).items():
        if isinstance(v, dict):
            p(f"# {v['median']:>10}    variant {k} (min {v['min']})")
    upd = out.get("update_only_what_if")
    if upd:
        p(f"# optimizer update alone over {upd['elements']} params: flat "
          f"{upd['flat']['median']} us, {upd['params']} separate tensors "
          f"{upd['per_param']['median']} us")
    prof = out.get("ort_profile")
    if prof:
        p(f"# ORT profiler: model_run {prof['model_run_us']} us, kernels "
          f"{prof['kernel_us_per_run']} us ({prof['kernel_share_of_run']:.0%}), "
          f"{prof['kernels_per_run']} kernels/run")
        for k, v in prof["top_ops_us_per_run"].items():
            p(f"# {v:>10}    {k} x{prof['top_ops_calls_per_run'][k]}")
        p(f"# by phase: {prof['by_phase_us_per_run']}")
        p("# top nodes:")
        for k, v in prof["top_nodes_us_per_run"].items():
            p(f"# {v:>10}    {k}")


if __name__ == "__main__":
    main()
