"""Peak resident memory of training the wide MLP (784-1024-1024-10, batch 256, Adam): dlc against
PyTorch eager, each in a fresh process, on the same synthetic batches.

    .venv/bin/python bench/peak_rss.py [--spec bench/specs/mlp_wide.yaml] [--steps 50]
        [--threads 1] [--json-only]

Each side reports its peak RSS (VmHWM: ru_maxrss would inherit the launcher's) after importing its framework (`base_mib`)
and after --steps train steps (`peak_mib`); `train_mib` = peak - base is what training itself
added. dlc trains through its own session and BoundStepper (what `dlc train` does); PyTorch
through nn.Sequential + torch.optim.Adam. Only dense/relu chains are mirrored.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cores, peak_rss_mib  # noqa: E402


def rss_mib() -> int:
    return int(peak_rss_mib())


def run_dlc(spec_path: str, steps: int, threads: int) -> dict:
    import numpy as np

    from dlc.model.network import build_network
    from dlc.commands.profile import synthetic_feeds
    from dlc.runtime.session import make_session
    from dlc.runtime.stepper import BoundStepper
    from dlc.model.spec import load_spec
    from dlc.train.step import build_train_step, persistent_values

    import onnxruntime  # noqa: F401 - counted in the base, as torch is on its side

    base = rss_mib()
    spec = load_spec(spec_path)
    net = build_network(spec)
    step = build_train_step(net)
    stepper = BoundStepper(make_session(step.model, threads=threads),
                           persistent_values(net, step, net.init_params(0)))
    rng = np.random.default_rng(0)
    batch = spec.data["train"]["batch_size"]
    for i in range(steps):
        feeds = synthetic_feeds(net, batch, rng)
        stepper.run({**feeds, "lr": np.array(1e-3, np.float32),
                     "step": np.array(i + 1, np.float32)})
        stepper.commit()
    return {"base_mib": base, "peak_mib": rss_mib()}


def run_torch(spec_path: str, steps: int, threads: int) -> dict:
    import numpy as np
    import torch

    from dlc.model.network import build_network
    from dlc.commands.profile import synthetic_feeds
    from dlc.model.spec import load_spec

    torch.set_num_threads(threads)
    base = rss_mib()
    spec = load_spec(spec_path)
    net = build_network(spec)
    mods, width = [], net.input_shape[0]
    for node in net.graph:
        mods.append(torch.nn.Linear(width, node.layer.cfg["units"]))
        width = node.layer.cfg["units"]
        if node.layer.cfg.get("activation") == "relu":
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    batch = spec.data["train"]["batch_size"]
    for _ in range(steps):
        feeds = synthetic_feeds(net, batch, rng)
        x, y = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["y"])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {"base_mib": base, "peak_mib": rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="bench/specs/mlp_wide.yaml")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-only", action="store_true")
    ap.add_argument("--child", choices=["dlc", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = run_dlc if args.child == "dlc" else run_torch
        print(json.dumps(fn(args.spec, args.steps, args.threads)))
        return
    out = {"bench": "peak_rss", "spec": args.spec, "steps": args.steps, "threads": args.threads,
           "cores": cores()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DLC_CACHE_DIR": "off"}
    for side in ("dlc", "torch"):
        proc = subprocess.run([sys.executable, __file__, "--child", side, "--spec", args.spec,
                               "--steps", str(args.steps), "--threads", str(args.threads)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        r = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
            "error": proc.stderr.strip().splitlines()[-1:]}
        if "peak_mib" in r:
            r["train_mib"] = r["peak_mib"] - r["base_mib"]
        out[side] = r
    print(json.dumps(out), flush=True)
    if not args.json_only:
        for side in ("dlc", "torch"):
            print(f"# {side:<6} {out[side]}", file=sys.stderr)


if __name__ == "__main__":
    main()
