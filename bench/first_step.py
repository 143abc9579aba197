"""Time to the first train step, and how onnxruntime's session settings trade start-up for speed.

    .venv/bin/python bench/first_step.py [--specs bench/specs/lstm_2x256.yaml,...] [--threads 1]
        [--levels] [--steps 3] [--json-only]

Each measurement runs in a fresh interpreter (so nothing is warm but the OS page cache):
  cold / warm   dlc as training does it (dlc.runtime.session.make_session: settings by graph
                size, optimised-graph cache), first with an empty cache folder, then again with
                the folder the first run filled. Seconds for the imports, building the train-step
                graph (build_s), creating the session (session_s) and the first step (first_s,
                synthetic batch of the spec's size); start_s = build_s + session_s is the time
                before training can start.
  --levels      every onnxruntime optimisation level with memory-reuse planning on and off:
                session_s, the median of --steps further steps (step_ms) and the peak RSS (MiB).
Output: one JSON line on stdout (and a table on stderr unless --json-only). Record
foreign_cpu_share with any figure: the session times are single-threaded work that a busy
machine stretches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ForeignLoad, cores, peak_rss_mib  # noqa: E402

SPECS = "bench/specs/lstm_2x256.yaml,bench/specs/transformer_6.yaml"
LEVELS = ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"]


def child(spec_path: str, threads: int, steps: int, level: str | None, reuse: bool) -> dict:
    """One measurement in this (fresh) process."""
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    from dlc.model.network import build_network
    from dlc.commands.profile import synthetic_feeds
    from dlc.runtime.session import make_session, session_options
    from dlc.runtime.stepper import BoundStepper
    from dlc.model.spec import load_spec
    from dlc.train.step import build_train_step, persistent_values

    t1 = time.perf_counter()
    spec = load_spec(spec_path)
    net = build_network(spec)
    step = build_train_step(net)
    t2 = time.perf_counter()
    if level is None:
        sess = make_session(step.model, threads=threads)
    else:
        opts = session_options(threads, len(step.model.graph.node))
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        opts.enable_mem_reuse = reuse
        sess = ort.InferenceSession(step.model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    t3 = time.perf_counter()
    stepper = BoundStepper(sess, persistent_values(net, step, net.init_params(0)), "cpu", 0)
    rng = np.random.default_rng(0)
    batch = spec.data["train"]["batch_size"]
    feeds = {**synthetic_feeds(net, batch, rng), "lr": np.array(1e-4, np.float32),
             "step": np.array(1, np.float32),
             **{n: rng.random((batch, *s), dtype=np.float32) for n, s in step.noise}}
    times = []
    for _ in range(1 + (steps if level else 0)):
        a = time.perf_counter()
        stepper.run(feeds)
        stepper.commit()
        times.append(time.perf_counter() - a)
    times_ms = sorted(t * 1e3 for t in times[1:])
    return {"imports_s": round(t1 - t0, 3), "build_s": round(t2 - t1, 3),
            "session_s": round(t3 - t2, 3), "start_s": round(t3 - t1, 3),
            "first_s": round(times[0], 3), "nodes": len(step.model.graph.node),
            "step_ms": round(times_ms[len(times_ms) // 2], 1) if times_ms else None,
            "peak_rss_mib": int(peak_rss_mib())}


def spawn(args: list[str], cache: str) -> dict:
    env = {**os.environ, "DLC_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specs", default=SPECS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--levels", action="store_true")
    ap.add_argument("--json-only", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # spec level reuse steps
    args = ap.parse_args()
    if args.child:
        spec, level, reuse, steps = args.child
        print(json.dumps(child(spec, args.threads, int(steps), None if level == "dlc" else level,
                               reuse == "1")))
        return
    results = {}
    with ForeignLoad(children=True) as fl, tempfile.TemporaryDirectory() as tmp:
        for spec in args.specs.split(","):
            cache = str(Path(tmp) / Path(spec).stem)
            row = {"cold": spawn([spec, "dlc", "1", "0"], cache),
                   "warm": spawn([spec, "dlc", "1", "0"], cache)}
            if args.levels:
                for level in LEVELS:
                    for reuse in ("1", "0"):
                        row[f"{level}/reuse={reuse}"] = spawn(
                            [spec, level, reuse, str(args.steps)], str(Path(tmp) / "none"))
            results[Path(spec).stem] = row
    out = {"bench": "first_step", "cores": cores(), "threads": args.threads,
           "foreign_cpu_share": None if fl.value is None else round(fl.value, 3),
           "results": results}
    print(json.dumps(out), flush=True)
    if not args.json_only:
        for name, row in results.items():
            for what, r in row.items():
                print(f"# {name:<16} {what:<30} " + "  ".join(f"{k} {v}" for k, v in r.items()
                                                              if k != "nodes"), file=sys.stderr)
        print(f"# foreign CPU share {out['foreign_cpu_share']}", file=sys.stderr)


if __name__ == "__main__":
    main()
