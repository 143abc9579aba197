"""`dlc train`: a spec and its data in, a run folder out.

runs/<name>/<timestamp>/ holds model.onnx (inference, self-contained), train.onnx (the train-step
graph), checkpoint.npz, metrics.csv, spec.yaml (resolved) and summary.json; each written
atomically. An existing non-empty folder is never overwritten without --force.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from dlc import imbalance, prune, transfer
from dlc.compile import inference_model
from dlc.errors import DlcError
from dlc.fileio import write_bytes, write_text
from dlc.network import Network, build_network
from dlc.runtime import checkpoint, tracking
from dlc.runtime.report import reporter
from dlc.runtime.session import choose_device
from dlc.runtime.trainer import Diverged, Trainer
from dlc.traincheck import check_training


def run_dir(out: str | None, name: str, force: bool) -> Path:
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / name / stamp
    else:
        path = Path(out)
    if path.exists() and not path.is_dir():
        raise DlcError(f"output path {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise DlcError(f"output folder {path} is not empty; pass --force to overwrite it")
    try:
        path.mkdir(parents=True, exist_ok=True)  # like runs/<name>/<time>: parents are made
    except OSError as e:
        raise DlcError(f"cannot create the run folder {path}: {e.strerror or e}") from None
    return path


def check_labels(net: Network, dataset):
    """Class names for the model (a mapping by output name for `outputs:`), and a clear error
    when data and output layer disagree."""
    found = {}
    for h in net.heads:
        labels = h.task.get("labels") or (dataset.labels.get(h.name) if h.name
                                          else dataset.labels)
        if h.kind == "classification":
            units = h.shape[-1]
            seen = int(h.targets(dataset.train.y).max()) + 1
            count = len(labels) if labels else seen
            if count != units or seen > units:
                at = f"output '{h.name}': " if h.name else ""
                layer = f"layer '{h.task['layer']}'" if h.name else "the last layer"
                raise DlcError(f"{at}the data has {count} classes but {layer} has {units} "
                               f"units; set its units to {count}")
        found[h.name] = labels
    return found[""] if "" in found else found


# kept out of metrics.csv so equal seeds give equal files
TIMING = ("samples_per_s", "run_samples_per_s", "seconds")


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    keys = [k for k in dict.fromkeys(k for row in history for k in row) if k not in TIMING]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()
                         if k in keys})
    write_text(path, buf.getvalue())


class Interrupted(DlcError):
    exit_code = 130


def _prepare(spec, data_dir: Path):
    from dlc.data import load_dataset

    tracking.check(spec)  # train.tracking: MLflow missing -> one line, before any work
    net = build_network(spec)
    check_training(spec, net, data_dir)  # prune, distill, transfer: before any data is loaded
    if "data" not in spec.data:
        raise DlcError(f"{spec.file}: the spec has no data section; add data.source to train it")
    dataset = load_dataset(spec.data, data_dir)
    return net, dataset, check_labels(net, dataset)


def train(spec, out: str | None = None, force: bool = False, device: str | None = None,
          quiet: bool = False) -> Path:
    """A new run of `spec` into `out` (default runs/<name>/<timestamp>)."""
    data_dir = Path(spec.file).resolve().parent
    net, dataset, labels = _prepare(spec, data_dir)
    path = run_dir(out, spec.data["name"], force)
    write_text(path / "spec.yaml", yaml.safe_dump(spec.data, sort_keys=False))
    write_text(path / "run.json", json.dumps({"spec": str(Path(spec.file).resolve()),
                                              "data_dir": str(data_dir)}, indent=1) + "\n")
    return _fit(spec, net, dataset, labels, path, device, quiet, resume=False)


def resume(path: str | Path, overrides=(), device: str | None = None, quiet: bool = False) -> Path:
    """Continue the run in `path` from its checkpoint (same parameters, optimizer state, RNG,
    schedule and history as if it had never stopped)."""
    from dlc.spec import load_spec

    path = Path(path)
    if not (path / "checkpoint.npz").is_file() or not (path / "run.json").is_file():
        raise DlcError(f"{path} holds no checkpoint to resume (checkpoint.npz, run.json)")
    spec = load_spec(path / "spec.yaml", overrides)
    info = json.loads((path / "run.json").read_text())
    net, dataset, labels = _prepare(spec, Path(info["data_dir"]))
    return _fit(spec, net, dataset, labels, path, device, quiet, resume=True)


def _fit(spec, net, dataset, labels, path: Path, device, quiet: bool, resume: bool) -> Path:
    cfg = spec.data["train"]
    kind, index, info = choose_device(device or cfg.get("device", "auto"))
    rep = reporter(quiet)
    if info:
        rep.note(info)
    trainer = Trainer(net, dataset, (kind, index), seed=cfg.get("seed", 0))
    # train.init_from: load parameters by name (a resume only rebuilds the report)
    trainer.init_report = transfer.init_from(spec, trainer, rep.note, apply=not resume)
    if resume:
        checkpoint.load(path / "checkpoint.npz", trainer)
        rep.note(f"resuming {path} after epoch {trainer.state.epoch}")
    else:
        write_bytes(path / "train.onnx", trainer.step_graph.model.SerializeToString())
    tracker = tracking.start(spec, path, trainer.state.history)  # no-op unless train.tracking

    def save(t: Trainer) -> None:
        checkpoint.save_epoch(path, t, cfg.get("checkpoint", {}))
        write_metrics_csv(path / "metrics.csv", t.state.history)
        tracker.log_epoch(t)

    t0 = time.perf_counter()
    with tracker:  # ends the tracking run: FINISHED, or FAILED when anything here raises
        try:
            trainer.fit(rep, on_epoch_end=save)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted in epoch {trainer.state.epoch + 1}; checkpoint.npz "
                              f"holds epoch {trainer.state.epoch}; resume with: dlc train "
                              f"--resume {path}") from None
        except Diverged as e:
            raise Diverged(f"{e}; the last good checkpoint (epoch {trainer.state.epoch}) is in "
                           f"{path}") from None
        finally:
            rep.close()
        tracker.log_summary(finish(spec, net, dataset, trainer, labels, path,
                                   time.perf_counter() - t0))
    return path


def finish(spec, net, dataset, trainer: Trainer, labels, path: Path, seconds: float) -> dict:
    params = trainer.final_params()
    history = trainer.state.history  # samples/s of whole steps, and of onnxruntime's run alone
    summary = {"epochs_run": trainer.state.epoch, "seconds": seconds,
               "train_samples_per_s": float(np.mean([r["samples_per_s"] for r in history])),
               "train_run_samples_per_s": float(np.mean([r.get("run_samples_per_s", 0.0)
                                                         for r in history]))}
    for name, split in (("val", dataset.val), ("test", dataset.test)):
        if split is not None:
            summary[name] = {k.split("_", 1)[1]: v
                             for k, v in trainer.evaluate(split, name, params).items()}
    if trainer.state.best:
        summary["best_epoch"] = trainer.state.best["epoch"]
    if trainer.state.skipped_steps:
        summary["skipped_steps"] = trainer.state.skipped_steps
    summary.update(prune.summary(trainer, params))  # train.prune: zeros per pruned tensor
    summary.update(transfer.summary(trainer))  # train.init_from: matched / new / shape_mismatch
    summary.update(imbalance.summary(trainer))  # task.class_weights as used
    features = (spec.data.get("input") or {}).get("features") or dataset.features
    scaling = {h.name: h.target_norm for h in trainer.net.heads if h.target_norm}
    meta = {"metrics": {k: summary[k] for k in ("val", "test") if k in summary},
            "labels": labels, "features": features, "text": dataset.text,
            "categories": dataset.categories, "target_norm": scaling or None}
    model = inference_model(spec, trainer.net, params, dataset.norm,  # target scaling baked in
                            meta={k: v for k, v in meta.items() if v is not None})
    write_bytes(path / "model.onnx", model.SerializeToString())
    write_text(path / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
