"""Thread-count audit of the ops in dlc's train steps (issue 14 follow-up): does an op's
onnxruntime CPU kernel give the same result at every intra-op thread count?

    .venv/bin/python bench/thread_audit.py [--threads 1,2,4] [--runs 5] [--json-only]

onnxruntime 1.31's CPU ScatterND with reduction add loses updates of repeated indices once it
splits its updates over threads (microsoft/onnxruntime#18048); dlc's embedding gradient used it.
This lists the op types of the CPU train steps (fused and data-parallel split, and the fused one
as onnxruntime optimises it) and the explain graphs of specs/ and bench/specs/, then runs each
op that accumulates, writes through indices or depends on the order of its elements, at
realistic sizes, --runs times at each thread count, with dlc's session options: its largest
deviation from numpy in float64 (relative to the reference's largest |value|: float32 rounding
is 1e-7 to 1e-4 by the number of terms summed, a lost update of the order of one term), its
largest difference from the 1-thread result, and how many runs at the most threads differ from
that at all. Rerun it after an onnxruntime upgrade; tests/test_thread_invariance.py's AUDITED
table lists the forms found exact. A busy machine makes a race rarer, not a figure wrong
(foreign_cpu_share says how busy it was).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import numpy as np
from onnx import TensorProto as TP, helper as H

from _common import ROOT, ForeignLoad, cores, versions  # noqa: E402  (adds ROOT to sys.path)

F, D, I = TP.FLOAT, TP.DOUBLE, TP.INT64
RNG = np.random.default_rng(0)


def model(nodes, inputs, outputs, consts=()) -> bytes:
    """A one-purpose graph at dlc's IR version and opset; consts: (name, int64 list or
    scalar)."""
    from dlc.graph import IR_VERSION, OPSET

    io = lambda pairs: [H.make_tensor_value_info(n, t, None) for n, t in pairs]  # noqa: E731
    inits = [H.make_tensor(n, I, [len(v)] if isinstance(v, list) else [],
                           v if isinstance(v, list) else [v]) for n, v in consts]
    m = H.make_model(H.make_graph(nodes, "audit", io(inputs), io(outputs), inits),
                     opset_imports=[H.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    return m.SerializeToString()


def node(op, ins, outs, **attrs):
    return H.make_node(op, ins, outs, **attrs)


def added(shape, idx, upd) -> np.ndarray:
    out = np.zeros(shape)
    np.add.at(out, idx, upd.astype(np.float64))
    return out


def f32(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def scatter_cases():
    """(name, model, feeds, reference(outputs) or None): the index-writing ops."""
    x, dy = np.maximum(f32(64, 32, 32, 32), 0), f32(64, 32, 16, 16)  # ReLU: ties at 0
    pool = model([node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 3], strides=[2, 2],
                       pads=[1, 1, 1, 1]),
                  node("Reshape", ["i", "flat"], ["fi"]), node("Reshape", ["dy", "flat"], ["fd"]),
                  node("Size", ["x"], ["n"]), node("Reshape", ["n", "one"], ["s"]),
                  node("ConstantOfShape", ["s"], ["z"], value=H.make_tensor("v", F, [1], [0.0])),
                  node("ScatterElements", ["z", "fi", "fd"], ["dx"], axis=0, reduction="add")],
                 [("x", F), ("dy", F)], [("dx", F), ("i", I)], [("flat", [-1]), ("one", [1])])
    yield ("ScatterElements add: MaxPool k3 s2 dx (overlapping), [64,32,32,32]", pool,
           {"x": x, "dy": dy}, lambda o: added(x.size, o[1].ravel(), dy.ravel()))
    scatter = lambda red: model(  # noqa: E731
        [node("ScatterElements", ["z", "i", "u"], ["o"], axis=0, **red)],
        [("z", F), ("i", I), ("u", F)], [("o", F)])
    idx, upd = RNG.integers(0, 1000, 1 << 20), f32(1 << 20)
    yield ("ScatterElements add: 1M updates into 1,000", scatter({"reduction": "add"}),
           {"z": np.zeros(1000, np.float32), "i": idx, "u": upd}, lambda o: added(1000, idx, upd))
    pos = RNG.permutation(1 << 22)[:1 << 20]
    yield ("ScatterElements none, distinct: strided Slice dx, 1M into 4M", scatter({}),
           {"z": np.zeros(1 << 22, np.float32), "i": pos, "u": upd},
           lambda o: added(1 << 22, pos, upd))
    ids = RNG.zipf(1.3, 8192) % 29999 + 1  # the text classifier's batch: 128 x 64 ids
    rows, table = f32(8192, 128), np.zeros((30000, 128), np.float32)
    nd = lambda red: model([node("ScatterND", ["z", "i", "u"], ["o"], **red)],  # noqa: E731
                           [("z", F), ("i", I), ("u", F)], [("o", F)])
    yield ("ScatterND add: embedding dx, 8,192 Zipf ids into [30000,128] (dlc's CUDA form)",
           nd({"reduction": "add"}), {"z": table, "i": ids[:, None], "u": rows},
           lambda o: added(table.shape, ids, rows))
    once = np.unique(ids)
    yield ("ScatterND none, distinct ids: the CPU form's one write per row", nd({}),
           {"z": table, "i": once[:, None], "u": rows[:len(once)]},
           lambda o: added(table.shape, once, rows[:len(once)]))
    x, dy = np.maximum(f32(64, 64, 16, 16), 0), f32(64, 64, 8, 8)
    unpool = model([node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2]),
                    node("Shape", ["x"], ["s"]),
                    node("MaxUnpool", ["dy", "i", "s"], ["dx"], kernel_shape=[2, 2],
                         strides=[2, 2])], [("x", F), ("dy", F)], [("dx", F), ("i", I)])
    yield ("MaxPool Indices + MaxUnpool: pool dx, [64,64,16,16]", unpool, {"x": x, "dy": dy},
           lambda o: added(x.size, o[1].ravel(), dy.ravel()).reshape(x.shape))


def order_cases():
    """The CPU embedding gradient's sort and run sums: TopK with ties, Unique, CumSum."""
    ids = RNG.zipf(1.3, 8192) % 29999 + 1
    sort = model([node("Shape", ["x"], ["k"]),
                  node("TopK", ["x", "k"], ["v", "o"], largest=0, sorted=1),
                  node("Unique", ["v"], ["d", "first", "inverse", "c"], sorted=1),
                  node("CumSum", ["c", "axis"], ["ends"])],
                 [("x", I)], [("ends", I), ("v", I), ("o", I), ("d", I)], [("axis", 0)])

    def exact(o):  # error 0 when TopK sorted (ties in any order), Unique and CumSum are right
        ends, v, order, d = o
        d0, c0 = np.unique(ids, return_counts=True)
        ok = (np.array_equal(v, np.sort(ids)) and np.array_equal(ids[order], v)
              and np.array_equal(d, d0) and np.array_equal(ends, np.cumsum(c0)))
        return ends if ok else np.zeros_like(ends)  # else an error of 1: wrong
    yield "TopK all (Zipf ties) + Unique + CumSum int64: 8,192 ids", sort, {"x": ids}, exact
    big = RNG.standard_normal((8192, 128))
    cum = model([node("CumSum", ["x", "axis"], ["y"])], [("x", D)], [("y", D)], [("axis", 0)])
    yield "CumSum float64, axis 0 of [8192,128]", cum, {"x": big}, lambda o: np.cumsum(big, 0)


def reduction_cases():
    a = f32(128, 64, 32, 32)
    for op, axes in (("ReduceSum", [0, 2, 3]), ("ReduceMean", [2, 3]), ("ReduceSum", [0])):
        m = model([node(op, ["x", "axes"], ["y"], keepdims=0)], [("x", F)], [("y", F)],
                  [("axes", axes)])
        ref = (lambda ax, f: lambda o: f(a.astype(np.float64), axis=tuple(ax)))(
            axes, np.sum if op == "ReduceSum" else np.mean)
        yield f"{op} over {axes} of [128,64,32,32]", m, {"x": a}, ref
    v, s, lo = f32(1 << 22), f32(128, 64, 256), f32(8192, 1000)
    m = model([node("ReduceSumSquare", ["x"], ["y"], keepdims=0)], [("x", F)], [("y", F)])
    yield ("ReduceSumSquare: grad_norm of 4M", m, {"x": v},
           lambda o: np.sum(v.astype(np.float64) ** 2))
    m = model([node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)], [("x", F)], [("y", F)],
              [("axes", [1])])
    yield "ReduceMax axis 1: sequence max pool, [128,64,256]", m, {"x": s}, lambda o: s.max(1)
    m = model([node("ReduceSum", ["x"], ["y"], keepdims=0)], [("x", F)], [("y", F)])
    yield ("ReduceSum of all: a loss, [8192,1000]", m, {"x": lo},
           lambda o: lo.astype(np.float64).sum())


def dense_cases():
    """GEMMs with long reductions and the conv family: against the 1-thread result only."""
    xa, ga = f32(8192, 512), f32(8192, 512)
    m = model([node("Gemm", ["a", "b"], ["y"], transA=1)], [("a", F), ("b", F)], [("y", F)])
    yield ("Gemm transA: dW over 8,192 rows, [512,512]", m, {"a": xa, "b": ga},
           lambda o: xa.T.astype(np.float64) @ ga)
    x, w = f32(32, 32, 32, 32), f32(32, 32, 3, 3)
    conv = lambda op, **k: model([node(op, ["x", "w"], ["y"], **k)],  # noqa: E731
                                 [("x", F), ("w", F)], [("y", F)])
    yield "Conv k3 s1, [32,32,32,32]", conv("Conv", pads=[1] * 4), {"x": x, "w": w}, None
    yield ("ConvTranspose k3 s2: overlapping col2im, [32,32,32,32]",
           conv("ConvTranspose", strides=[2, 2], pads=[1] * 4, output_padding=[1, 1]),
           {"x": x, "w": w}, None)
    yield ("ConvTranspose ones k2 s2: AveragePool dx, [4096,1,16,16]",
           conv("ConvTranspose", strides=[2, 2]),
           {"x": f32(4096, 1, 16, 16), "w": np.ones((1, 1, 2, 2), np.float32)}, None)
    c = 64
    bn = model([node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
               [(n, F) for n in "xgbmv"], [("y", F)])
    yield ("BatchNormalization, [128,64,32,32]", bn,
           {"x": f32(128, c, 32, 32), "g": f32(c), "b": f32(c), "m": f32(c),
            "v": np.abs(f32(c)) + 0.5}, None)
    for op in ("Softmax", "LogSoftmax", "AveragePool"):
        k = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1] * 4} \
            if op == "AveragePool" else {"axis": -1}
        x = f32(64, 32, 32, 32) if op == "AveragePool" else f32(8192, 1000)
        yield f"{op}, {list(x.shape)}", model([node(op, ["x"], ["y"], **k)], [("x", F)],
                                              [("y", F)]), {"x": x}, None


def inventory() -> dict[str, int]:
    """Op type -> how many graphs hold it: CPU train steps (fused, and the split step's
    gradient and update graphs) and explain graphs of every spec in specs/ and bench/specs/,
    and the fused step as onnxruntime optimised it at 4 threads (its fused kernels named
    `domain:op`)."""
    from dlc.commands.attribution import gradient_model
    from dlc.errors import DlcError
    from dlc.model.network import build_network
    from dlc.model.spec import load_spec
    from dlc.train.step import build_split_step, build_train_step

    counts = collections.Counter()
    for path in sorted([*ROOT.glob("specs/*.yaml"), *ROOT.glob("bench/specs/*.yaml")]):
        spec = load_spec(path)
        net = build_network(spec)
        graphs = [build_train_step(net).model, *(s.model for s in build_split_step(net))]
        try:
            graphs.append(gradient_model(spec.data, None, net.init_params(0), str(path))[0])
        except DlcError:  # token-id and multi-output models have no explain graph
            pass
        graphs.append(optimised(graphs[0]))
        for g in graphs:
            counts.update({f"{n.domain}:{n.op_type}" if n.domain else n.op_type
                           for n in g.graph.node})
    return dict(sorted(counts.items()))


def optimised(step):
    """The graph onnxruntime runs for `step` (dlc's session options, 4 threads)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from dlc.runtime.session import session_options

    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(4, len(step.graph.node))
        opts.optimized_model_filepath = f"{tmp}/optimised.onnx"
        ort.InferenceSession(step.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0)) / max(float(np.max(np.abs(b), initial=0)),
                                                         1e-30)


def audit(name, m, feeds, ref, threads: list[int], runs: int) -> dict:
    import onnxruntime as ort

    from dlc.runtime.session import session_options

    found = {}
    for t in threads:
        sess = ort.InferenceSession(m, session_options(t, 1), providers=["CPUExecutionProvider"])
        found[t] = [sess.run(None, feeds) for _ in range(runs)]
    base, most = found[threads[0]][0][0], found[threads[-1]]
    out = {"case": name, "max_diff_vs_first": max(rel(o[0], base) for o in most),
           "runs_differing": sum(not np.array_equal(o[0], base) for o in most)}
    if ref is not None:
        out["max_err_vs_numpy"] = {t: max(rel(o[0], np.reshape(ref(o), o[0].shape))
                                          for o in found[t]) for t in threads}
    return out


def markdown(rows: list[dict], threads: list[int], runs: int) -> str:
    head = " | ".join(f"vs numpy, {t} thr" for t in threads)
    lines = [f"| case | {head} | {threads[-1]} vs {threads[0]} threads | runs differing |",
             "|---|" + "---|" * (len(threads) + 2)]
    for r in rows:
        errs = r.get("max_err_vs_numpy") or {}
        cells = " | ".join(f"{errs[t]:.1e}" if t in errs else "-" for t in threads)
        lines.append(f"| {r['case']} | {cells} | {r['max_diff_vs_first']:.1e} | "
                     f"{r['runs_differing']}/{runs} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2,4")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json-only", action="store_true")
    a = p.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    ops = inventory()
    with ForeignLoad() as fl:
        rows = [audit(*case, threads, a.runs) for cases in (scatter_cases, order_cases,
                                                            reduction_cases, dense_cases)
                for case in cases()]
    print(json.dumps({"bench": "thread_audit", **versions(), "cores": cores(), "threads": threads,
                      "runs": a.runs,
                      "foreign_cpu_share": fl.value, "op_types": ops, "cases": rows}))
    if not a.json_only:
        print(f"op types in the train steps and explain graphs: {', '.join(ops)}\n"
              f"{markdown(rows, threads, a.runs)}", file=sys.stderr)


if __name__ == "__main__":
    main()
