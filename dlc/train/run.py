"""`dlc train`: a spec and its data in, a run folder out.

runs/<name>/<timestamp>/ holds model.onnx (inference, self-contained), train.onnx (the train-step
graph), checkpoint.npz, metrics.csv, spec.yaml (resolved) and summary.json; each written
atomically. An existing non-empty folder is never overwritten without --force.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from dlc.data import load_dataset
from dlc.errors import DlcError
from dlc.files.atomic import WriteError, write_bytes, write_json, write_text
from dlc.model.compile import inference_model
from dlc.model.network import Network
from dlc.model.spec import load_spec_text
from dlc.model.spec.schema import without_filled_optimizer_fields
from dlc.runtime.session import choose_device
from dlc.train import checkpoint, rundir, tracking
from dlc.train.features import registry as features
from dlc.train.features.checks import checked_network
from dlc.train.report import reporter
from dlc.train.trainer import Diverged, Trainer


def check_labels(net: Network, dataset):
    """Class names for the model (a mapping by output name for `outputs:`), and a clear error
    when data and output layer disagree."""
    found = {}
    for h in net.heads:
        labels = h.task.get("labels") or (dataset.labels.get(h.name) if h.name
                                          else dataset.labels)
        if h.kind == "classification":
            units = h.classes
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


class WorkerLost(DlcError):
    """A data-parallel peer stopped (its collective failed): this worker stops too, and rank 0's
    run folder keeps its last checkpoint to resume from."""


class Unusable(DlcError):
    """Training ended but the model is not finite: model.onnx is not written."""


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP during training: handled like Ctrl-C, exit 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupt():
    """Schedulers (SIGTERM), `timeout` and closed terminals (SIGHUP) stop a training the way
    Ctrl-C does: the step in flight is abandoned, the checkpoint stays, the resume hint is
    printed. Off the main thread (where Python cannot set handlers) signals keep their default."""
    def handler(signum, frame):
        raise Signalled(signum)

    old = {}
    with contextlib.suppress(ValueError):  # not the main thread
        for signum in (signal.SIGTERM, signal.SIGHUP):
            old[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


def prepare(spec, data_dir: Path):
    tracking.check(spec)  # train.tracking: MLflow missing -> one line, before any work
    net = checked_network(spec, data_dir)  # every data-free check, before any data is loaded
    if "data" not in spec.data:
        raise DlcError(f"{spec.file}: the spec has no data section; add data.source to train it")
    dataset = load_dataset(spec.data, data_dir)
    if dataset.columns:  # input.columns: the encoded width is known now (the spec resolved)
        net = checked_network(spec, data_dir)
    return net, dataset, check_labels(net, dataset)


def train(spec, out: str | None = None, force: bool = False, device: str | None = None,
          quiet: bool = False, log_format: str = "text", trainer=Trainer,
          info: dict | None = None) -> Path:
    """A new run of `spec` into `out` (default runs/<name>/<timestamp>), an emptied folder that
    no other training writes in while this one runs. `trainer`: the Trainer class (a
    data-parallel worker's, dlc.distributed); `info`: more entries for run.json."""
    data_dir = Path(spec.file).resolve().parent
    net, dataset, labels = prepare(spec, data_dir)
    path = rundir.create(out, spec.data["name"])
    if not force:  # before the lock file is made: a refused folder is left as it was
        rundir.check_empty(path, force)
    with rundir.locked(path):
        rundir.check_empty(path, force)
        write_text(path / "spec.yaml", yaml.safe_dump(spec.data, sort_keys=False))
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")  # for `dlc runs`
        write_json(path / "run.json", {"spec": str(Path(spec.file).resolve()),
                                       "data_dir": str(data_dir), "started": started,
                                       **(info or {})}, indent=1)
        return _fit(spec, net, dataset, labels, path, device, (quiet, log_format), trainer)


def read_run_info(path: Path) -> dict:
    """run.json of a run folder: a mapping with the data folder; DlcError when damaged."""
    try:
        info = json.loads((path / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise DlcError(f"cannot read {path / 'run.json'}: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("data_dir"), str) \
            or not isinstance(info.get("resumes", []), list):
        raise DlcError(f"{path / 'run.json'} is damaged: expected a mapping with data_dir (a "
                       "folder) and resumes (a list)")
    return info


def _run_spec(file: Path, overrides):
    """A run folder's spec.yaml with `overrides`; the optimizer fields dlc filled in are dropped
    first (see without_filled_optimizer_fields), so that --set may switch the optimizer type."""
    try:
        text = file.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, ValueError) as e:
        raise DlcError(f"cannot read {file}: {e}") from None
    except (yaml.YAMLError, RecursionError):
        data = None  # load_spec_text says what is wrong, and where
    if isinstance(data, dict) and without_filled_optimizer_fields(data) != data:
        text = yaml.safe_dump(without_filled_optimizer_fields(data), sort_keys=False)
    return load_spec_text(text, str(file), overrides)


def resume(path: str | Path, overrides=(), device: str | None = None, quiet: bool = False,
           log_format: str = "text", trainer=Trainer) -> Path:
    """Continue the run in `path` from its checkpoint (same parameters, optimizer state, RNG,
    schedule and history as if it had never stopped). Overrides change spec.yaml (and so the
    model's dlc.spec) and are recorded in run.json's `resumes`, with the epoch they start at."""
    path = Path(path)
    if not (path / "checkpoint.npz").is_file() or not (path / "run.json").is_file():
        raise DlcError(f"{path} holds no checkpoint to resume (checkpoint.npz, run.json)")
    with rundir.locked(path):
        spec = _run_spec(path / "spec.yaml", overrides)
        info = read_run_info(path)
        if overrides:  # the spec as it now is, so that dlc.spec and dlc.spec_resolved agree
            spec = load_spec_text(yaml.safe_dump(spec.data, sort_keys=False), spec.file)
        net, dataset, labels = prepare(spec, Path(info["data_dir"]))

        def record(epoch: int) -> None:  # once the checkpoint is loaded and there is work
            if overrides:
                write_text(path / "spec.yaml", spec.text)
            info["resumes"] = [*info.get("resumes", []), {"epoch": epoch,
                                                          "overrides": list(overrides)}]
            write_json(path / "run.json", info, indent=1)

        return _fit(spec, net, dataset, labels, path, device, (quiet, log_format), trainer,
                    resumed=record)


def resume_hint(path: Path) -> str:
    """What a stopped run's folder holds to resume from, read back (a signal or a dead worker
    may have come during a checkpoint write)."""
    epoch = checkpoint.epoch_of(path / "checkpoint.npz")
    return (f"checkpoint.npz holds epoch {epoch}; resume with: dlc train --resume {path}"
            if epoch is not None else f"{path} holds no readable checkpoint")


def _stopped(e: BaseException, trainer: Trainer, path: Path) -> DlcError:
    """The error for a training that stopped early, saying what the run folder really holds."""
    epoch = checkpoint.epoch_of(path / "checkpoint.npz")
    held = resume_hint(path)
    if isinstance(e, Signalled):
        name = signal.Signals(e.signum).name
        error = Interrupted(f"stopped by {name} in epoch {trainer.state.epoch + 1}; {held}")
        error.exit_code = 128 + e.signum
        return error
    if isinstance(e, KeyboardInterrupt):
        return Interrupted(f"interrupted in epoch {trainer.state.epoch + 1}; {held}")
    if isinstance(e, Diverged) and epoch is not None:
        return Diverged(f"{e}; the last good checkpoint (epoch {epoch}) is {path}/checkpoint.npz")
    return type(e)(f"{e}; {held}")  # a failed write: the old checkpoint is intact


def _start(spec, trainer: Trainer, path: Path, rep, resumed) -> bool:
    """Load the checkpoint (a resume) or write the first one, of the initial weights (a new run),
    so that the run folder always holds one to resume from. False when there is nothing to do."""
    cfg = spec.data["train"]
    if resumed is None:
        write_bytes(path / "train.onnx", trainer.step_graph.model.SerializeToString())
        checkpoint.save(path / "checkpoint.npz", trainer)
        return True
    checkpoint.load(path / "checkpoint.npz", trainer)
    epoch = trainer.state.epoch
    if epoch >= cfg["epochs"] and (path / "model.onnx").is_file():
        rep.note(f"nothing to do: {path} has trained {epoch} epochs and train.epochs is "
                 f"{cfg['epochs']}; pass --epochs N with N > {epoch} to train on")
        return False
    rep.note(f"resuming {path} after epoch {epoch}")
    resumed(epoch)
    return True


def _fit(spec, net, dataset, labels, path: Path, device, output: tuple, trainer_cls=Trainer,
         resumed=None) -> Path:
    """`output`: (quiet, log format) for the reporter; `resumed`: None for a new run, else the
    function that records a resume."""
    cfg = spec.data["train"]
    kind, index, info = choose_device(device or cfg["device"])
    rep = reporter(*output, batch_size=cfg["batch_size"])
    if info:
        rep.note(info)
    trainer = trainer_cls(net, dataset, (kind, index), seed=cfg["seed"])
    # e.g. train.init_from: load parameters by name (a resume only rebuilds the report)
    features.begin(trainer, rep.note, fresh=resumed is None)
    if not _start(spec, trainer, path, rep, resumed):
        return path
    tracker = tracking.start(spec, path, trainer.state.history)  # no-op unless train.tracking

    def save(t: Trainer) -> None:
        checkpoint.save_epoch(path, t)
        write_metrics_csv(path / "metrics.csv", t.state.history)
        tracker.log_epoch(t)

    t0 = time.perf_counter()
    with tracker, signals_as_interrupt():  # tracking: FINISHED, or FAILED when this raises
        try:
            try:
                trainer.fit(rep, on_epoch_end=save)
            finally:
                rep.close()
            tracker.log_summary(finish(spec, net, dataset, trainer, labels, path,
                                       time.perf_counter() - t0))
        except (KeyboardInterrupt, Diverged, WriteError, WorkerLost) as e:
            raise _stopped(e, trainer, path) from None
    return path


def _not_finite(params: dict, summary: dict) -> str | None:
    """What makes a trained model unusable: a parameter or a final metric that is NaN/inf."""
    for name, value in params.items():
        if not np.isfinite(value).all():
            return f"parameter {name} holds NaN or infinite values"
    for split in ("val", "test"):
        bad = [k for k, v in summary.get(split, {}).items()
               if isinstance(v, float) and not np.isfinite(v)]
        if bad:
            return f"the {split} {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite"
    return None


def finish(spec, net, dataset, trainer: Trainer, labels, path: Path, seconds: float) -> dict:
    """Final metrics, model.onnx and summary.json; a model that is not finite is not written
    (Unusable: exit 1) and its summary.json says why, with null for each non-finite value."""
    params = trainer.final_params()
    history = trainer.state.history  # samples/s of whole steps, and of onnxruntime's run alone
    summary = {"epochs_run": trainer.state.epoch, "seconds": seconds,
               "threads": trainer.threads,  # onnxruntime's, which the samples/s depend on
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
    summary.update(features.summary(trainer, params))  # e.g. sparsity, init_from, class weights
    problem = _not_finite(params, summary)
    if problem:
        write_json(path / "summary.json", {**summary, "error": problem})
        raise Unusable(f"the trained model is unusable: {problem}; model.onnx not written "
                       f"(summary.json says so; checkpoint.npz holds the final state)")
    write_bytes(path / "model.onnx", _model(spec, dataset, trainer, labels, params, summary))
    write_json(path / "summary.json", summary)
    return summary


def _model(spec, dataset, trainer: Trainer, labels, params: dict, summary: dict) -> bytes:
    """model.onnx's bytes: the inference graph with the final parameters and dlc's metadata."""
    features = (spec.data.get("input") or {}).get("features") or dataset.features
    scaling = {h.name: h.target_norm for h in trainer.net.heads if h.target_norm}
    meta = {"metrics": {k: summary[k] for k in ("val", "test") if k in summary},
            "labels": labels, "features": features, "text": dataset.text,
            "categories": dataset.categories, "columns": dataset.columns,
            "target_norm": scaling or None}
    model = inference_model(spec, trainer.net, params, dataset.norm,  # target scaling baked in
                            meta={k: v for k, v in meta.items() if v is not None})
    return model.SerializeToString()
