"""Training throughput of each model family, dlc against PyTorch eager, in one process.

    .venv/bin/python bench/model_speed.py [--models mlp,cnn,cnn32,lstm,transformer]
        [--device cpu|cuda] [--epochs 2] [--repeats 3] [--threads N] [--json-only]

Both frameworks train the same architecture (hand-mirrored from the spec below), with the same
optimizer (Adam, the spec's lr), loss, batch size, data and thread count, for the same number of
epochs; an untimed warm-up epoch comes first for each. Timed: the whole epoch loop (shuffling,
batch gathering, feeding, the step), repeats interleaved (dlc, torch, dlc, torch, ...) and the
median taken. One JSON line per model: samples/s of both, the ratio
dlc/torch, cores, load and `foreign_cpu_share` (read bench/README.md: a disturbed machine makes
ratios meaningless). `--device cuda` runs both on the GPU (dlc through onnxruntime's CUDA
provider with IOBinding, torch with .cuda()); that is the issue-9 GPU bench.

Models:
  mlp          specs/digits_mlp.yaml (64-256-256-10)
  cnn          specs/digits_cnn.yaml (conv32-conv64-maxpool-dense128-10 on 1x8x8)
  cnn32        the same CNN on synthetic 3x32x32 images (4,096 random samples, 10 classes)
  lstm         specs/lstm_forecast.yaml (LSTM 32 over 24 steps -> 6-step forecast, MSE)
  transformer  specs/transformer_reverse.yaml (embedding 32, sinusoidal positions, one pre-norm
               encoder layer with 4 heads and ff 64, per-token classification)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

from _common import ROOT, ForeignLoad, cores, versions  # noqa: E402  (adds ROOT to sys.path)

SPECS = {"mlp": ("digits_mlp.yaml", []), "cnn": ("digits_cnn.yaml", []),
         "cnn32": ("digits_cnn.yaml", ["input.shape=[3, 32, 32]"]),
         "lstm": ("lstm_forecast.yaml", []), "transformer": ("transformer_reverse.yaml", [])}


THREADS = {"n": cores()}  # --threads: intra-op threads of both frameworks


def dlc_setup(model: str, device: str):
    from dlc.data import Dataset, Split, load_dataset
    from dlc.model.network import build_network
    from dlc.train.trainer import Trainer
    from dlc.model.spec import load_spec

    name, overrides = SPECS[model]
    spec = load_spec(ROOT / "specs" / name, [*overrides, "data.split.val=0",
                                               "train.schedule.type=constant"])
    net = build_network(spec)
    if model == "cnn32":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4096, 3, 32, 32)).astype(np.float32)
        ds = Dataset(Split(x, rng.integers(0, 10, 4096)), None, None, None, None, None)
    else:
        ds = load_dataset(spec.data, ROOT / "specs")
    trainer = Trainer(net, ds, (device, 0), seed=0, threads=THREADS["n"])
    return spec, trainer, ds


def torch_model(model: str, spec: dict):
    import torch
    from torch import nn

    if model == "mlp":
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10))
    if model in ("cnn", "cnn32"):
        c, h, w = spec["input"]["shape"]
        return nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * (h // 2) * (w // 2), 128), nn.ReLU(),
                             nn.Linear(128, 10))
    if model == "lstm":
        class Forecaster(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm, self.out = nn.LSTM(1, 32, batch_first=True), nn.Linear(32, 6)

            def forward(self, x):
                return self.out(self.lstm(x)[1][0][-1])
        return Forecaster()

    class Reverser(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 32)
            self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                                      norm_first=True)
            self.head = nn.Linear(32, 10)
            pos = torch.arange(8)[:, None] / torch.pow(10000, torch.arange(0, 32, 2) / 32)
            self.register_buffer("pe", torch.cat([pos.sin(), pos.cos()], 1)[:, [
                i for p in zip(range(16), range(16, 32)) for i in p]])

        def forward(self, x):
            return self.head(self.encoder(self.embed(x) + self.pe))
    return Reverser()


def torch_setup(model: str, spec: dict, ds, device: str):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(THREADS["n"])
    net = torch_model(model, spec).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=spec["train"]["optimizer"]["lr"])
    smoothing = spec["task"].get("label_smoothing", 0.0)
    if spec["task"]["kind"] == "regression":
        lossf = torch.nn.MSELoss()
    else:
        ce = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
        lossf = lambda z, y: ce(z.reshape(-1, z.shape[-1]), y.reshape(-1))  # noqa: E731
    x = torch.from_numpy(np.ascontiguousarray(ds.train.x)).to(device)
    y = torch.from_numpy(np.ascontiguousarray(ds.train.y)).to(device)
    return net, opt, lossf, x, y


def torch_epoch(net, opt, lossf, x, y, batch: int, device: str) -> None:
    import torch

    perm = torch.randperm(len(x), device=device)
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        opt.zero_grad(set_to_none=True)
        lossf(net(x[idx]), y[idx]).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict, epochs: int, repeats: int) -> dict:
    """{name: (median seconds per epoch over `repeats` runs of `epochs` epochs, the largest
    foreign CPU share of those runs)}; the functions take turns (a, b, a, b, ...), so load drift
    hits all of them alike."""
    runs, shares = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with ForeignLoad() as fl:
                t0 = time.perf_counter()
                for _ in range(epochs):
                    fn()
                runs[name].append((time.perf_counter() - t0) / epochs)
            if fl.value is not None:
                shares[name].append(fl.value)
    return {k: (statistics.median(runs[k]), max(shares[k], default=None)) for k in fns}


def bench(model: str, device: str, epochs: int, repeats: int) -> dict:
    spec, trainer, ds = dlc_setup(model, device)
    n, batch = len(ds.train.x), spec.data["train"]["batch_size"]

    def dlc_epoch():
        trainer.train_epoch()
        trainer.state.epoch += 1
    dlc_epoch()  # warm-up: session initialisation, first allocations
    fns = {"dlc": dlc_epoch}
    try:
        import torch  # noqa: F401

        args = torch_setup(model, spec.data, ds, device)
        fns["torch"] = lambda: torch_epoch(*args, batch, device)
        fns["torch"]()  # warm-up
    except ImportError:
        pass
    times = timed(fns, epochs, repeats)
    dlc_s, dlc_share = times["dlc"]
    result = {"bench": "model_speed", "model": model, "device": device, "cores": cores(),
              "threads": THREADS["n"],
              "batch": batch, "train_samples": n, "epochs_timed": epochs, "repeats": repeats,
              "dlc_samples_per_s": round(n / dlc_s, 1), "foreign_cpu_share_dlc": dlc_share,
              "loadavg_1min": os.getloadavg()[0], **versions()}
    if "torch" not in times:
        return {**result, "torch_samples_per_s": None}
    torch_s, torch_share = times["torch"]
    return {**result, "torch_samples_per_s": round(n / torch_s, 1),
            "ratio": round(torch_s / dlc_s, 3), "foreign_cpu_share_torch": torch_share}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn,cnn32,lstm,transformer")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=cores(), help="intra-op threads, both")
    p.add_argument("--json-only", action="store_true")
    a = p.parse_args()
    THREADS["n"] = a.threads
    for model in a.models.split(","):
        r = bench(model, a.device, a.epochs, a.repeats)
        print(json.dumps(r), flush=True)
        if not a.json_only:
            ratio = r.get("ratio")
            print(f"{model:12} dlc {r['dlc_samples_per_s']:>10,.0f}/s  torch "
                  f"{(r['torch_samples_per_s'] or math.nan):>10,.0f}/s  ratio "
                  f"{ratio if ratio is not None else 'n/a'}", file=sys.stderr)


if __name__ == "__main__":
    main()
