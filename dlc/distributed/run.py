"""A data-parallel run: every worker trains with the same spec and seed; rank 0 writes the run
folder (metrics, checkpoints, model.onnx), the others write a scratch copy they delete.

A resume needs the worker count the run was started with (run.json `workers`): the checkpoint
holds no per-worker state, but the global batch is N * train.batch_size, so another N would
train a different model than the one the run began.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from dlc.distributed.collective import join
from dlc.distributed.trainer import ParallelTrainer
from dlc.errors import DlcError
from dlc.model.spec import load_spec
from dlc.train import run


def check_workers(path: Path, world: int) -> None:
    """A resume with another worker count than the run's is refused, saying both."""
    try:
        workers = json.loads((path / "run.json").read_text()).get("workers", 1)
    except (OSError, ValueError, AttributeError):
        return  # run.resume says what is wrong with run.json
    if workers != world:
        raise DlcError(f"{path} was trained with {workers} worker(s) (a global batch of "
                       f"{workers} x train.batch_size); resume it with --workers {workers}, "
                       f"not {world}")


def copy_run(run_dir: Path, to: Path) -> None:
    """A copy of a run folder that rank 0 is resuming in at the same time: its hidden files (the
    lock, write probes, atomic writes' temporaries) come and go meanwhile and are not copied (one
    that vanished mid-copy ended a resume with exit 3); the others are only ever replaced whole,
    by rename."""
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns(".*"))


def worker(spec_file: str | None, overrides: list, out: str | None, force: bool,
           resume: str | None, options: dict, launch: dict | None = None) -> Path | None:
    """One worker's training (`options`: device, quiet, log_format; `launch`: Ray's address and
    GPUs per worker, which run.json keeps beside the worker count for a resume); rank 0's run
    folder, or None on the other ranks."""
    comm = join()
    try:
        return _train(comm, spec_file, overrides, out, force, resume, options, launch or {})
    finally:
        comm.close()


def _train(comm, spec_file, overrides, out, force, resume, options, launch) -> Path | None:
    """This worker's run: rank 0's in the run folder, the others' in a scratch copy."""
    cls = ParallelTrainer.factory(comm)
    if resume is not None:
        check_workers(Path(resume), comm.world)
    if comm.rank == 0:
        if resume is not None:
            return run.resume(resume, overrides, trainer=cls, **options)
        return run.train(load_spec(spec_file, overrides), out, force, trainer=cls,
                         info={"workers": comm.world, **launch}, **options)
    scratch = Path(tempfile.mkdtemp(prefix=f"dlc-rank{comm.rank}-"))
    try:
        quiet = {**options, "quiet": True}
        if resume is not None:  # a copy of rank 0's folder (a shared or local file system)
            copy_run(Path(resume), scratch / "run")
            run.resume(scratch / "run", overrides, trainer=cls, **quiet)
        else:
            run.train(load_spec(spec_file, overrides), str(scratch / "run"), True, trainer=cls,
                      **quiet)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None
