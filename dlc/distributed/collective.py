"""The collective: torch.distributed's all-reduce (gloo on CPU, NCCL on GPUs), never dlc's own.

The process group comes from the launcher: Ray Train's TorchConfig sets it up before dlc's
worker function runs; torchrun sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, and SLURM sets
SLURM_PROCID/SLURM_NTASKS (MASTER_ADDR/MASTER_PORT are then the user's to export), from which
`join` starts it (init_method env://).
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from dlc.errors import DlcError, optional_module
from dlc.train.run import WorkerLost

SLURM = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID"}
MISSING = "data-parallel training needs torch.distributed: pip install 'dlc[distributed]'"
BACKEND = "cpu:gloo,cuda:nccl"  # per tensor: host arrays by gloo, GPU memory by NCCL
TIMEOUT_S = 120  # a collective waiting longer than this for a dead peer fails instead of hanging


def launched_world() -> int:
    """The world size a launcher's environment says (torchrun, SLURM), 1 without one."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


class Collective:
    """Rank, world size and a sum all-reduce in place: of a torch tensor (on the CPU or a GPU,
    e.g. an OrtValue's memory seen through DLPack) or a float32 numpy array."""

    def __init__(self, torch, owned: bool = False):
        self.torch, self.dist, self.owned = torch, torch.distributed, owned
        self.rank, self.world = self.dist.get_rank(), self.dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))  # torchrun, SLURM, Ray Train
        # torch only scales the wire between two onnxruntime runs: its OpenMP pool would fight
        # onnxruntime's still-spinning threads (a 85,002-float mul_ took 6-11 ms, not 0.04)
        torch.set_num_threads(1)

    def close(self) -> None:
        """End the process group that `join` started (a launcher's is the launcher's to end):
        left to the interpreter's exit, gloo's threads ended a finished worker with
        "terminate called without an active exception" (exit 134) now and then."""
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()

    def all_reduce(self, value):
        """Sum `value` (a tensor, or a contiguous float32 array) over the workers, in place."""
        tensor = value if isinstance(value, self.torch.Tensor) else self.torch.from_numpy(value)
        try:
            self.dist.all_reduce(tensor)
        except RuntimeError as e:  # DistBackendError: a peer died, or hung past the timeout
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WorkerLost(f"worker {self.rank} of {self.world}: the all-reduce failed, "
                             f"a worker stopped ({first[:200]})") from None
        return value

    def view(self, value):
        """The torch tensor that is `value`'s memory (an OrtValue, CPU or CUDA): DLPack, no copy."""
        return self.torch.from_dlpack(value)

    def synchronize(self, tensor) -> None:
        """Wait on the host for the collective's work on `tensor`: NCCL runs on its own CUDA
        stream, which onnxruntime's stream does not wait for (gloo on CPU returns when done)."""
        if tensor.is_cuda:
            self.torch.cuda.synchronize(tensor.device)

    def device(self, kind: str, index: int) -> int:
        """The device id this worker runs on: its local rank on a GPU (one GPU per worker; Ray
        Train and torchrun set LOCAL_RANK), made torch's current device for NCCL."""
        if kind != "cuda":
            return index
        self.torch.cuda.set_device(self.local_rank)
        return self.local_rank

    def mean(self, array: np.ndarray) -> np.ndarray:
        """The workers' average of `array` (a copy)."""
        out = np.ascontiguousarray(array, np.float32).copy()
        return self.all_reduce(out) / np.float32(self.world)


def join() -> Collective:
    """The process group of this worker: the launcher's (Ray Train), or one started from the
    torchrun/SLURM environment."""
    torch = optional_module("torch", MISSING, "data-parallel training")
    dist = optional_module("torch.distributed", MISSING, "data-parallel training")
    owned = not dist.is_initialized()
    if owned:
        if "MASTER_ADDR" not in os.environ:  # e.g. srun without it, or sbatch --ntasks N alone
            found = "WORLD_SIZE" if "WORLD_SIZE" in os.environ else "SLURM_NTASKS"
            raise DlcError(f"{found}={os.environ.get(found)} makes this one of several workers "
                           "but MASTER_ADDR is not set: export MASTER_ADDR and MASTER_PORT "
                           "(rank 0's host and a free port) for every worker")
        for name, slurm in SLURM.items():
            if name not in os.environ and slurm in os.environ:
                os.environ[name] = os.environ[slurm]
        dist.init_process_group(BACKEND if torch.cuda.is_available() else "gloo",
                                init_method="env://",
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return Collective(torch, owned)
