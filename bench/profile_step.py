"""Where the time of one dlc train step goes (CPU), with a few what-if variants.

    .venv/bin/python bench/profile_step.py [--spec specs/digits_mlp.yaml] [--steps 500]
        [--epochs 5] [--batch-size 64] [--no-ort-profile] [--no-variants] [--json-only]

Measured on the spec's train-step graph with dlc's own Trainer and session (after one untimed
warm-up epoch), all in microseconds per step (median of 3 blocks of --steps steps unless noted):

  epoch_per_step      Trainer.train_epoch() wall time / steps, over --epochs epochs: the real
                      thing (shuffle, gather, feeds, run, unpack, per-epoch train metrics).
  breakdown           the same loop as train_epoch, instrumented part by part:
                        gather  train.x[idx], train.y[idx] (fancy-index copies)
                        feeds   Trainer._feeds(): the feed dict (x, y, lr, step, params, states)
                        run     session.run(None, feeds)
                        unpack  dict(zip(outputs)), float(loss/grad_norm), new params/states dicts
                      plus `metrics`: the per-epoch train metrics, divided by steps per epoch.
  run_prebuilt        session.run alone, the same prebuilt feed dict every call (no gather/feeds).
  variants            session.run-only cost under other settings / graph tweaks, each a fresh
                      session (dlc's session options unless named), measured round-robin in
                      blocks of --steps calls, median and min over --rounds blocks:
                        dlc_session   the Trainer's own session (= run_prebuilt, as a control)
                        default       a fresh session with dlc's options (control)
                        spin          allow_spinning=1 (dlc sets 0)
                        threads1      intra_op_num_threads=1
                        no_output_identity   the graph minus the Identity nodes that
                                      Builder.output adds to rename tensors to output names
                                      (checked to give identical outputs)
                        iobinding     run_with_iobinding with two prebuilt bindings that ping-pong
                                      parameters/states between two preallocated buffer sets
                                      (outputs written in place, no per-step output allocation,
                                      only x/y/lr/step rebound per step); checked to give the
                                      same parameters as session.run after 3 steps.
                        ...+threads1 / +no_output_identity: combinations.
  update_only_what_if dlc's Adam update alone (dlc.optim.Optimizer in a graph of its own, gradients
                      as inputs): one tensor per parameter (as now) vs one flat buffer.
  ort_profile         onnxruntime's own profiler (SessionOptions.enable_profiling) over --steps
                      steps: kernel time by op type (top 10), by graph phase (forward, loss,
                      backward (*.grad), clip, update (*.update)) and the share of session.run
                      time that is spent inside kernels at all.

Output: one JSON line on stdout and a small table on stderr (unless --json-only).
"""

from __future__ import annotations

import argparse
import json
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


# ---------------------------------------------------------------- breakdown --------------------
def breakdown(t, epochs: int) -> dict:
    """train_epoch's loop, timed part by part (same work, same order), for `epochs` epochs;
    microseconds per step for each part."""
    from dlc import metrics as M

    st, train = t.state, t.data.train
    bs, n = t.cfg["batch_size"], len(train.x)
    parts = defaultdict(float)
    done = 0
    pc = time.perf_counter
    for _ in range(epochs):
        order = st.rng.permutation(n)
        outputs = []
        for i in range(t.steps_per_epoch):
            t0 = pc()
            idx = order[i * bs:(i + 1) * bs]
            xb, yb = train.x[idx], train.y[idx]
            t1 = pc()
            feeds = t._feeds(xb, yb, t.schedule.lr(st.epoch, i))
            t2 = pc()
            res = t.sess.run(None, feeds)
            t3 = pc()
            out = dict(zip(t.out_names, res))
            float(out["loss"]), float(out["grad_norm"])
            st.params = {p: out[f"{p}.new"] for p in st.params}
            st.states = {s: out[f"{s}.new"] for s in st.states}
            st.step += 1
            outputs.append(out["logits"])
            t4 = pc()
            parts["gather"] += t1 - t0
            parts["feeds"] += t2 - t1
            parts["run"] += t3 - t2
            parts["unpack"] += t4 - t3
            done += 1
        t0 = pc()
        M.compute(t.net.kind, train.y[order], np.concatenate(outputs))
        parts["metrics"] += pc() - t0
        st.epoch += 1
    return {k: v / done * US for k, v in parts.items()}


# ---------------------------------------------------------------- variants ---------------------
def make_session(model_bytes: bytes, threads: int | None = None, spinning: bool = False,
                 profile_prefix: str | None = None):
    """A CPU session with dlc's own session options (dlc.runtime.session.session_options),
    optionally with another thread count, spinning allowed, or ORT profiling on."""
    import onnxruntime as ort

    from dlc.runtime.session import session_options

    opts = session_options(threads)
    if spinning:  # dlc sets "0"; overriding logs a warning through the default logger
        ort.set_default_logger_severity(3)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


class PingPong:
    """Two IOBindings: parameters/states read from buffer set A and written to set B, and back.

    x, y, lr and step are bound per call (bind_cpu_input is zero-copy for contiguous arrays);
    loss, grad_norm and logits go to preallocated buffers too (full batches only)."""

    def __init__(self, sess, step_graph, feeds: dict, batch: int):
        import onnxruntime as ort

        self.sess = sess
        self.carried = [*step_graph.params, *step_graph.states]
        sets = [{k: np.array(feeds[k], copy=True) for k in self.carried} for _ in range(2)]
        self.sets = sets
        n_out = {o.name: o for o in sess.get_outputs()}
        classes = [d for d in n_out["logits"].shape][-1]
        self.extras = {"loss": np.zeros((), np.float32), "grad_norm": np.zeros((), np.float32),
                       "logits": np.zeros((batch, classes), np.float32)}
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            io = sess.io_binding()
            for k in self.carried:
                io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(sets[src][k]))
                buf = sets[dst][k]
                io.bind_output(f"{k}.new", "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            for k, buf in self.extras.items():
                io.bind_output(k, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            self.bindings.append(io)
        self.cur = 0  # which buffer set holds the current parameters

    def step(self, x, y, lr, step):
        io = self.bindings[self.cur]
        io.bind_cpu_input("x", x)
        io.bind_cpu_input("y", y)
        io.bind_cpu_input("lr", lr)
        io.bind_cpu_input("step", step)
        self.sess.run_with_iobinding(io)
        self.cur ^= 1
        return self.extras["loss"], self.extras["grad_norm"]

    def params(self) -> dict:
        return self.sets[self.cur]


def check_pingpong(model_bytes, step_graph, feeds, batch) -> float:
    """Max |difference| of params/states after 3 steps: session.run vs ping-pong IOBinding."""
    ref = make_session(model_bytes)
    pp = PingPong(make_session(model_bytes), step_graph, feeds, batch)
    names = [o.name for o in ref.get_outputs()]
    f = dict(feeds)
    for k in range(3):
        f["step"] = np.array(k + 1, np.float32)
        out = dict(zip(names, ref.run(None, f)))
        for p in pp.carried:
            f[p] = out[f"{p}.new"]
        pp.step(feeds["x"], feeds["y"], feeds["lr"], f["step"])
    got = pp.params()
    return float(max(np.abs(got[p] - f[p]).max() for p in pp.carried))


def strip_output_identities(model_bytes: bytes) -> bytes:
    """What-if: the same graph without the Identity nodes that only rename a tensor to a graph
    output name (dlc's Builder.output adds one per output). The producer writes the output name
    directly and its other consumers read it under that name."""
    import onnx

    m = onnx.load_from_string(model_bytes)
    g = m.graph
    outputs = {o.name for o in g.output}
    inputs = {i.name for i in g.input} | {i.name for i in g.initializer}
    rename, drop = {}, set()
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if (n.op_type == "Identity" and n.output[0] in outputs and n.input[0] not in outputs
                and n.input[0] not in inputs and n.input[0] in producers
                and n.input[0] not in rename):
            rename[n.input[0]] = n.output[0]
            drop.add(n.name)
    keep = [n for n in g.node if n.name not in drop]
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


def variants(t, feeds, steps: int, blocks: int, batch: int) -> dict:
    """session.run-only cost of the step under other settings / small graph changes."""
    model_bytes = t.step_graph.model.SerializeToString()
    lean = strip_output_identities(model_bytes)
    fns = {"dlc_session": lambda: t.sess.run(None, feeds)}
    for name, kw in {"default": {}, "spin": {"spinning": True}, "threads1": {"threads": 1}}.items():
        sess = make_session(model_bytes, **kw)
        fns[name] = (lambda s: lambda: s.run(None, feeds))(sess)
    sess = make_session(lean)
    fns["no_output_identity"] = lambda: sess.run(None, feeds)
    sess1 = make_session(lean, threads=1)
    fns["no_output_identity+threads1"] = lambda: sess1.run(None, feeds)
    x, y, lr, st = feeds["x"], feeds["y"], feeds["lr"], feeds["step"]
    for name, (mb, kw) in {"iobinding": (model_bytes, {}),
                           "iobinding+threads1": (model_bytes, {"threads": 1}),
                           "iobinding+no_output_identity+threads1": (lean, {"threads": 1})
                           }.items():
        pp = PingPong(make_session(mb, **kw), t.step_graph, feeds, batch)
        fns[name] = (lambda pp: lambda: pp.step(x, y, lr, st))(pp)
    for fn in fns.values():  # first run of a session allocates
        fn()
    res = compare(fns, steps, blocks)
    # equal results: the identity-free graph gives the same outputs
    ref = dict(zip(t.out_names, t.sess.run(None, feeds)))
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    res["no_output_identity_max_abs_diff"] = float(max(np.abs(ref[k] - got[k]).max() for k in ref))
    return res


def update_microbench(t, steps: int, blocks: int) -> dict:
    """What-if for a flat parameter buffer: dlc's own optimizer update (dlc.optim.Optimizer, the
    same ops as in the train step) as a graph of its own, with gradients as inputs, for
    (a) one tensor per parameter as now and (b) one flat buffer holding all parameters.
    session.run-only us/call, median/min over rounds (threads as dlc: os.cpu_count())."""
    from dlc.graph import Builder
    from dlc.optim import Optimizer

    cfg = t.cfg["optimizer"]
    shapes = {p: tuple(v.shape) for p, v in t.state.params.items()}
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
    res = compare({"per_param": lambda: s1.run(None, f1), "flat": lambda: s2.run(None, f2)},
                  steps, blocks)
    return {"params": len(shapes), "elements": total, **res}


# ---------------------------------------------------------------- ORT profiler -----------------
def phase_of(node: str) -> str:
    if ".update/" in node or node.startswith("optimizer"):
        return "update"
    if node.startswith("clip/"):
        return "clip"
    if ".grad" in node:
        return "backward"
    if node.startswith("loss/"):
        return "loss"
    return "forward"


def ort_profile(model_bytes, feeds, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        s = make_session(model_bytes, profile_prefix=os.path.join(d, "dlc_step"))
        for _ in range(steps + 5):
            s.run(None, feeds)
        path = s.end_profiling()
        events = json.loads(Path(path).read_text())
    by_op, by_phase, by_update = defaultdict(float), defaultdict(float), defaultdict(float)
    counts = defaultdict(int)
    runs = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            node = e["name"][: -len("_kernel_time")]
            by_op[op] += e["dur"]
            by_phase[phase_of(node)] += e["dur"]
            if ".update/" in node:
                by_update[node.split(".update/")[0]] += e["dur"]
            counts[op] += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"])
    runs = runs[5:]  # drop the warm-up runs (the first run of a session allocates)
    n_runs = max(len(runs), 1)
    kernels = sum(by_op.values())
    # kernel totals include the warm-up runs' kernels; scale them to the profiled runs
    total_runs = len(runs) + 5
    scale = 1.0 / total_runs
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:10]
    return {
        "runs": len(runs),
        "model_run_us": round(statistics.median(runs), 1) if runs else None,
        "kernel_us_per_run": round(kernels * scale, 1),
        "kernel_share_of_run": round(kernels * scale / statistics.median(runs), 3) if runs else None,
        "kernels_per_run": round(sum(counts.values()) * scale),
        "top_ops_us_per_run": {k: round(v * scale, 1) for k, v in top},
        "top_ops_calls_per_run": {k: round(counts[k] * scale) for k, _ in top},
        "by_phase_us_per_run": {k: round(v * scale, 1)
                                for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1])},
        "update_by_param_us_per_run": {k: round(v * scale, 1) for k, v in by_update.items()},
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
    return {"inputs": len(m.graph.input), "outputs": len(m.graph.output),
            "nodes": len(m.graph.node), "nodes_after_ort_optimization": len(opt.graph.node),
            "param_elements": None}


# ---------------------------------------------------------------- main -------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--keep-val", action="store_true")
    ap.add_argument("--no-ort-profile", action="store_true")
    ap.add_argument("--no-variants", action="store_true")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()

    from dlc.runtime.trainer import Trainer

    spec, net, ds, note = load(args.spec, None, args.batch_size, args.keep_val)
    t = Trainer(net, ds, device=("cpu", 0), seed=0)
    t.train_epoch()  # warm-up
    t.state.epoch += 1
    bs = args.batch_size
    idx = np.arange(bs)
    feeds = t._feeds(ds.train.x[idx], ds.train.y[idx], t.schedule.lr(0, 0))
    lr = t.schedule.lr(0, 0)

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

    # rounds: each measurement once per round, so load drift hits all of them alike
    rounds = defaultdict(list)
    foreign = ForeignLoad().__enter__()
    for _ in range(args.rounds):
        rounds["epoch_per_step"].append(epochs_per_step())
        for k, v in breakdown(t, args.epochs).items():
            rounds["breakdown." + k].append(v)
        rounds["run_prebuilt"].append(block(lambda: t.sess.run(None, feeds)))
        rounds["gather_plus_feeds"].append(
            block(lambda: t._feeds(ds.train.x[idx], ds.train.y[idx], lr)))
    med = {k: round(statistics.median(v), 1) for k, v in rounds.items()}
    mins = {k: round(min(v), 1) for k, v in rounds.items()}
    parts = {k.split(".", 1)[1]: v for k, v in med.items() if k.startswith("breakdown.")}

    model_bytes = t.step_graph.model.SerializeToString()
    stats = graph_stats(model_bytes)
    stats["param_elements"] = int(sum(v.size for v in t.state.params.values()))

    out = {"bench": "profile_step", "model": Path(args.spec).stem, "cores": cores(),
           "intra_op_threads": cores(), "batch_size": bs, "steps": args.steps,
           "unit": "us_per_step", "graph": stats,
           "rounds": args.rounds, "stat": "median over rounds",
           "epoch_per_step": med["epoch_per_step"],
           "breakdown": parts,
           "breakdown_sum": round(sum(parts.values()), 1),
           "run_prebuilt": med["run_prebuilt"],
           "gather_plus_feeds_prebuilt": med["gather_plus_feeds"],
           "min_over_rounds": mins}
    if not args.no_variants:
        out["iobinding_max_abs_diff_vs_run"] = check_pingpong(model_bytes, t.step_graph, feeds, bs)
        out["variants_run_only"] = variants(t, feeds, args.steps, args.rounds, bs)
        out["update_only_what_if"] = update_microbench(t, args.steps, args.rounds)
    if not args.no_ort_profile:
        out["ort_profile"] = ort_profile(model_bytes, feeds, args.steps)
    foreign.__exit__(None, None, None)
    out["loadavg_1min"] = round(os.getloadavg()[0], 2)
    out["foreign_cpu_share"] = None if foreign.value is None else round(foreign.value, 3)
    out.update({k: v for k, v in versions().items() if k != "torch"})
    print(json.dumps(out), flush=True)

    if args.json_only:
        return
    p = lambda s="": print(s, file=sys.stderr)  # noqa: E731
    p(f"# {cores()} cores, batch {bs}, {stats['inputs']} inputs / {stats['outputs']} outputs / "
      f"{stats['nodes']} nodes ({stats['nodes_after_ort_optimization']} after ORT opt)")
    p(f"# {'us/step':>10}  what")
    p(f"# {out['epoch_per_step']:>10}  train_epoch wall / steps")
    for k, v in parts.items():
        p(f"# {v:>10}    {k}")
    p(f"# {out['run_prebuilt']:>10}  session.run alone, prebuilt feeds")
    for k, v in out.get("variants_run_only", {}).items():
        if isinstance(v, dict):
            p(f"# {v['median']:>10}    variant {k} (min {v['min']})")
    upd = out.get("update_only_what_if")
    if upd:
        p(f"# optimizer update alone ({upd['params']} tensors vs 1 flat of {upd['elements']}): "
          f"per-param {upd['per_param']['median']} us, flat {upd['flat']['median']} us")
    prof = out.get("ort_profile")
    if prof:
        p(f"# ORT profiler: model_run {prof['model_run_us']} us, kernels {prof['kernel_us_per_run']}"
          f" us ({prof['kernel_share_of_run']:.0%}), {prof['kernels_per_run']} kernels/run")
        for k, v in prof["top_ops_us_per_run"].items():
            p(f"# {v:>10}    {k} x{prof['top_ops_calls_per_run'][k]}")
        p(f"# by phase: {prof['by_phase_us_per_run']}")


if __name__ == "__main__":
    main()
