"""`dlc train`: a new run of a spec, or `--resume` of a run folder; then the run folder and its
final metrics (text lines, or one jsonl `end` event)."""

from __future__ import annotations

import json
from pathlib import Path

from dlc.distributed.collective import launched_world
from dlc.errors import UsageError
from dlc.model.spec import load_spec
from dlc.train.report import LOG_FORMATS, json_event
from dlc.train.run import resume as run_resume
from dlc.train.run import train as run_train


def command(spec: str | None, resume: str | None, out: str | None, overrides: list,
            device: str | None, force: bool, quiet: bool, log_format: str,
            workers: int | None = None, address: str | None = None,
            gpus_per_worker: float | None = None, cpus_per_worker: int | None = None) -> None:
    if log_format not in LOG_FORMATS:
        raise UsageError(f"unknown --log-format '{log_format}'; use text or jsonl")
    if resume is not None:
        if spec is not None or out is not None:
            raise UsageError("--resume continues a run folder; give no SPEC and no --out with it")
    elif spec is None:
        raise UsageError("missing SPEC (or --resume RUN_DIR)")
    options = {"device": device, "quiet": quiet, "log_format": log_format}
    loaded = load_spec(spec, overrides) if resume is None else None
    cfg = {**distributed_config(loaded, resume),
           **{k: v for k, v in {"workers": workers, "address": address,
                                "gpus_per_worker": gpus_per_worker,
                                "cpus_per_worker": cpus_per_worker}.items() if v is not None}}
    if cfg.get("workers", 1) > 1 and launched_world() == 1:  # Ray Train starts the workers
        from dlc.distributed.launch import launch

        path = launch(spec, overrides, out, force, resume, options, cfg["workers"],
                      cfg.get("address"), cfg.get("gpus_per_worker", 0),
                      cfg.get("cpus_per_worker"))
    elif launched_world() > 1:  # torchrun or SLURM started this process as one of N workers
        from dlc.distributed.run import worker

        path = worker(spec, overrides, out, force, resume, options)
        if path is None:  # not rank 0: rank 0 reports
            return
    elif resume is not None:
        path = run_resume(resume, overrides, device, quiet, log_format)
    else:
        path = run_train(loaded, out, force, device, quiet, log_format)
    print_run(path, log_format)


def distributed_config(spec, resume: str | None) -> dict:
    """train.distributed of the spec; for a resume, the worker count the run started with and
    Ray's address and GPUs and CPUs per worker it was launched with (run.json), so that
    `--resume` alone continues it alike."""
    if resume is None:
        return spec.data["train"].get("distributed") or {}
    try:
        info = json.loads((Path(resume) / "run.json").read_text())
        return {"workers": int(info.get("workers", 1)),
                **{k: info[k] for k in ("address", "gpus_per_worker", "cpus_per_worker")
                   if info.get(k)}}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # run.resume says what is wrong with the folder


def print_run(path, log_format: str) -> None:
    """The run folder and its final metrics: text lines, or (jsonl) one `end` event."""
    result = json.loads((path / "summary.json").read_text())
    if log_format == "jsonl":
        print(json_event({"event": "end", "run": str(path), **result}))
        return
    print(f"run: {path}")
    for split in ("val", "test"):
        if split in result:
            shown = {k: round(v, 4) for k, v in result[split].items() if isinstance(v, float)}
            print(f"{split}: {shown}")
