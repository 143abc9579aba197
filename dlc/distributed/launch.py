"""`dlc train SPEC --workers N`: Ray Train starts N workers (TorchConfig sets up their
torch.distributed process group: gloo on CPU; with --gpus-per-worker NCCL for GPU memory and
gloo for host arrays), each runs dlc.distributed.run.worker; rank 0 writes the run folder;
the workers' output comes back through dlc.distributed.relay, Ray's own on stderr.

Workers may start elsewhere (a Ray cluster: --address), so every path they get is absolute and
the run folder is chosen here, before they start. dlc's own source folder travels on
PYTHONPATH, so workers import the same dlc as this process (a checkout works like an install).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import dlc
from dlc.distributed.collective import BACKEND, TIMEOUT_S
from dlc.distributed.relay import Relay, relayed
from dlc.distributed.run import check_workers, worker
from dlc.errors import DlcError, optional_module
from dlc.runtime.cpus import usable_cpus
from dlc.train import rundir
from dlc.train.run import WorkerLost, resume_hint

MISSING = "--workers needs Ray Train and torch: pip install 'dlc[distributed]'"


def _loop(config: dict) -> None:
    """One Ray Train worker (its process group is up: TorchConfig); its output relayed."""
    config = dict(config)
    with relayed(config.pop("relay")):
        worker(**config)


def launch(spec: str | None, overrides: list, out: str | None, force: bool,
           resume: str | None, options: dict, workers: int, address: str | None = None,
           gpus_per_worker: float = 0, cpus_per_worker: int | None = None) -> Path:
    """Train with `workers` Ray Train workers; rank 0's run folder. `cpus_per_worker`: the CPUs
    Ray gives each (default: worker_cpus)."""
    optional_module("torch", MISSING, "--workers")  # first: ray.train.torch imports it
    optional_module("ray.train.torch", MISSING, "--workers")
    ray = optional_module("ray", MISSING, "--workers")
    if resume is not None:
        path = Path(resume).resolve()
        check_workers(path, workers)  # here, before Ray starts N workers to say it
    else:
        path = rundir.create(out, Path(spec).stem).resolve()
    if gpus_per_worker and options["device"] is None:  # the GPU Ray gives each worker
        options = {**options, "device": "cuda"}
    config = {"spec_file": spec and str(Path(spec).resolve()), "overrides": list(overrides),
              "out": str(path), "force": force, "resume": resume and str(path),
              "options": options,
              "launch": {"address": address, "gpus_per_worker": gpus_per_worker,
                         "cpus_per_worker": cpus_per_worker}}
    source = str(Path(dlc.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}  # a worker's print: not into Ray's log too
    scratch = tempfile.mkdtemp(prefix="dlc-ray-")  # Ray Train's own records, not the run's
    local = address is None and "RAY_ADDRESS" not in os.environ  # a Ray of our own, here
    cpus = cpus_per_worker or worker_cpus(workers, local)
    # the CPU slots asked for, even more than the cores, as torchrun gives N processes whatever
    # the cores (3 workers on a 2-core machine: Ray Train waited for a 3rd CPU, timed out at
    # 60 s and waited again)
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=not options["quiet"],
             include_dashboard=False, ignore_reinit_error=True, logging_level=logging.ERROR,
             num_cpus=max(workers * cpus, usable_cpus()) if local else None)
    try:
        _fit(ray, config, workers, (cpus, gpus_per_worker), scratch, local)
    except Exception as e:
        raise _failure(e, path, workers) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def _fit(ray, config: dict, workers: int, resources: tuple, scratch: str, local: bool) -> None:
    """Run the workers, their output relayed to this process's stdout and stderr; what Ray's
    driver prints on stdout itself (a dead worker's paragraph) goes to stderr (nowhere with -q),
    so that stdout is dlc's own output; then Ray is shut down."""
    streams, relay = (sys.stdout, sys.stderr), None
    with contextlib.redirect_stdout(io.StringIO() if config["options"]["quiet"] else sys.stderr):
        try:
            if local:
                _check_gpus(ray, workers, resources[1])
            relay = Relay(*streams)
            _trainer({**config, "relay": relay.queue}, workers, resources, scratch).fit()
        finally:
            if relay is not None:
                relay.close()
            ray.shutdown()  # inside the redirect: it prints the workers' last forwarded lines


def worker_cpus(workers: int, local: bool) -> int:
    """The CPUs Ray gives each worker unless --cpus-per-worker says, and so its
    OMP_NUM_THREADS: on a Ray of our own, an equal share of this machine's; on a cluster 1,
    Ray's own default (its nodes' sizes are not known here)."""
    return max(1, usable_cpus() // workers) if local else 1


def _check_gpus(ray, workers: int, gpus_per_worker: float) -> None:
    """This machine's Ray has the GPUs asked for, or one line says so (Ray Train would wait for
    them for ever; a cluster's autoscaler may add them, so only a local Ray is checked)."""
    have = ray.cluster_resources().get("GPU", 0)
    if workers * gpus_per_worker > have:
        raise DlcError(f"--workers {workers} --gpus-per-worker {gpus_per_worker:g} needs "
                       f"{workers * gpus_per_worker:g} GPUs; this machine's Ray has {have:g}")


def _trainer(config: dict, workers: int, resources: tuple, scratch: str):
    """Ray Train's TorchTrainer of `workers` dlc workers (gloo on CPU; with GPUs, NCCL for the
    gradient in GPU memory and gloo for host arrays), each given `resources` (CPUs, GPUs): Ray
    sets a worker's OMP_NUM_THREADS to its CPUs, and its sessions run that many threads
    (dlc/runtime/cpus.py)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cpus, gpus_per_worker = resources

    return TorchTrainer(
        _loop, train_loop_config=config,
        torch_config=TorchConfig(backend=BACKEND if gpus_per_worker else "gloo",
                                 timeout_s=TIMEOUT_S),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": cpus, "GPU": gpus_per_worker}),
        run_config=RunConfig(storage_path=scratch, name="train"))


def _failure(e: Exception, path: Path, workers: int) -> DlcError:
    """One line for a failed run: a worker's own error (its data, its spec) as it said it; a
    worker whose process died (Ray's health check found its actor dead) by rank, with what the
    run folder holds to resume from; else Ray's innermost message."""
    from ray.exceptions import RayActorError

    failures = sorted(getattr(e, "worker_failures", {}).items())  # ray.train.WorkerGroupError
    dead = [rank for rank, f in failures
            if isinstance(getattr(f, "health_check_failure", None), RayActorError)]
    if dead:
        return WorkerLost(f"data-parallel training failed: worker {dead[0]} of {workers} died "
                          f"(its process ended); {resume_hint(path)}")
    own = [f for _, f in failures if isinstance(f, DlcError)]
    return DlcError(f"data-parallel training failed: {own[0] if own else _root_message(e)}")


def _root_message(e: BaseException) -> str:
    """The innermost cause's message, on one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(e).__name__
    return re.sub(r"^[\w.]+(Error|Exception|Lost|Diverged): ", "", last)  # Ray's "module.Class: "
