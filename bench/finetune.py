"""Fine-tuning the PyTorch-exported CNN (specs/digits_finetune.yaml) in dlc and in PyTorch.

The same fine-tuning on both sides, in one process: the base weights of
specs/data/digits_base.onnx (loaded into scripts/make_finetune_base.BaseCNN for torch), a new
dense head on its 64 `features` with dlc's initial head weights for the seed, the spec's data
split of the 400 PNGs of the digits 5-9 (dlc's load_dataset: images in [0, 1], no
normalisation), Adam with the spec's betas and eps, batch 32, shuffled each epoch. Phase 1: the
base frozen, the spec's lr and epochs (0.01, 60). Phase 2: everything trains from phase 1's
weights with a fresh optimizer (dlc: base.trainable=all + the phase-1 parameters, as
train.init_from loads them), lr 0.001 for 30 epochs. Test accuracy after each phase and training
samples/s (the epoch loops only; dlc as in bench/train_speed.py: Trainer.train_epoch +
end_epoch; torch: randperm, index, forward, loss, backward, step).

Repeats are interleaved (dlc, torch, dlc, torch, ...) with seed = repeat index (dlc's head
initialisation and shuffling; torch's shuffling), medians reported. Prints one JSON line.

    .venv/bin/python bench/finetune.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _common import ForeignLoad, load, versions  # noqa: E402

SPEC = ROOT / "specs" / "digits_finetune.yaml"
BASE = ROOT / "specs" / "data" / "digits_base.onnx"
UNFROZEN = {"lr": 0.001, "epochs": 30}


def phases(seed: int):
    """(frozen network, unfrozen network, dataset, frozen lr/epochs) for `seed`."""
    spec, frozen, ds, _ = load(SPEC, None, None, keep_val=True, extra=[f"train.seed={seed}"])
    _, unfrozen, _, _ = load(SPEC, UNFROZEN["epochs"], None, keep_val=True, extra=[
        f"train.seed={seed}", "base.trainable=all", f"train.optimizer.lr={UNFROZEN['lr']}"])
    train = spec.data["train"]
    return frozen, unfrozen, ds, {"lr": train["optimizer"]["lr"], "epochs": train["epochs"]}


def dlc_phase(net, ds, seed: int, threads: int, start: dict | None):
    """(parameters after training, test accuracy, samples, seconds)."""
    from dlc.train.trainer import Trainer

    t = Trainer(net, ds, device=("cpu", 0), seed=seed, threads=threads)
    if start:
        t.params = {**t.params, **start}
    wall, seen = 0.0, 0
    for _ in range(net.spec["train"]["epochs"]):
        t0 = time.perf_counter()
        row = t.train_epoch()
        wall += time.perf_counter() - t0
        row.update(t.evaluate(ds.val, "val"))  # the monitored val_loss, untimed
        t0 = time.perf_counter()
        t.end_epoch(row)
        wall += time.perf_counter() - t0
        seen += len(ds.train.x)
    params = t.final_params()
    return params, t.evaluate(ds.test, "test", params)["test_accuracy"], seen, wall


def dlc_run(seed: int, threads: int) -> dict:
    frozen, unfrozen, ds, _ = phases(seed)
    params, acc1, n1, s1 = dlc_phase(frozen, ds, seed, threads, None)
    _, acc2, n2, s2 = dlc_phase(unfrozen, ds, seed, threads, params)
    return {"frozen_acc": acc1, "unfrozen_acc": acc2, "frozen_samples_per_s": n1 / s1,
            "unfrozen_samples_per_s": n2 / s2}


def torch_model(head: dict):
    """BaseCNN with the exported weights, cut at `features`, and a head with dlc's weights."""
    import onnx
    import torch
    from make_finetune_base import BaseCNN
    from onnx import numpy_helper

    base = BaseCNN()
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in onnx.load(BASE).graph.initializer}
    base.load_state_dict({k: weights[k] for k in base.state_dict()})
    fc = torch.nn.Linear(64, 5)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(head["head.weight"].T.copy()))
        fc.bias.copy_(torch.from_numpy(head["head.bias"]))
    return base, fc


def torch_phase(base, fc, params, ds, seed: int, lr: float, epochs: int, adam: dict):
    import torch

    opt = torch.optim.Adam(params, lr=lr, betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"])
    x, y = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(fc(base(x[idx])[1]), y[idx])
            loss.backward()
            opt.step()
    wall = time.perf_counter() - t0
    with torch.no_grad():
        pred = fc(base(torch.from_numpy(ds.test.x))[1]).argmax(1).numpy()
    return float((pred == ds.test.y).mean()), epochs * len(x) / wall


def torch_run(seed: int) -> dict:
    frozen, _, ds, first = phases(seed)
    adam = {k: frozen.spec["train"]["optimizer"][k] for k in ("beta1", "beta2", "eps")}
    base, fc = torch_model(frozen.init_params(seed))
    for p in base.parameters():
        p.requires_grad_(False)
    acc1, sps1 = torch_phase(base, fc, list(fc.parameters()), ds, seed, first["lr"],
                             first["epochs"], adam)
    for p in base.parameters():
        p.requires_grad_(True)
    params = [*base.parameters(), *fc.parameters()]
    acc2, sps2 = torch_phase(base, fc, params, ds, seed, UNFROZEN["lr"], UNFROZEN["epochs"], adam)
    return {"frozen_acc": acc1, "unfrozen_acc": acc2, "frozen_samples_per_s": sps1,
            "unfrozen_samples_per_s": sps2}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"dlc": [], "torch": []}
    with ForeignLoad() as fl:
        for seed in range(args.repeats):
            runs["dlc"].append(dlc_run(seed, args.threads))
            runs["torch"].append(torch_run(seed))
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for side, rs in runs.items()}
    out = {"threads": args.threads, "repeats": args.repeats, "median": med, "runs": runs,
           "foreign_cpu_share": None if fl.value is None else round(fl.value, 3), **versions()}
    for side, m in med.items():
        print(f"{side:5s} frozen: acc {m['frozen_acc']:.3f}, "
              f"{m['frozen_samples_per_s']:,.0f} samples/s; unfrozen: acc "
              f"{m['unfrozen_acc']:.3f}, {m['unfrozen_samples_per_s']:,.0f} samples/s",
              file=sys.stderr)
    print(f"# foreign CPU share {out['foreign_cpu_share']}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
