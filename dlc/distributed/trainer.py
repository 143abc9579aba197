"""The Trainer of one data-parallel worker: the split step behind a ParallelStepper on the CPU
or this worker's GPU, the global batch N * B (train.batch_size B per worker), batchnorm
statistics averaged each epoch."""

from __future__ import annotations

import dataclasses

from dlc.distributed.stepper import ParallelStepper
from dlc.errors import DlcError
from dlc.runtime.session import make_session
from dlc.train.step import build_split_step, persistent_values
from dlc.train.trainer import Trainer


def global_network(net, world: int):
    """The network whose train.batch_size is the global batch: every worker walks the same
    seeded order in steps of N * B rows and keeps its B."""
    train = {**net.spec["train"], "batch_size": net.spec["train"]["batch_size"] * world}
    return dataclasses.replace(net, spec={**net.spec, "train": train})


class ParallelTrainer(Trainer):
    """A Trainer whose step is the split step with an all-reduce between its two runs; build
    one with `ParallelTrainer.factory(comm)`, in the signature of Trainer."""

    comm = None  # the Collective, set by factory

    @classmethod
    def factory(cls, comm):
        return type(cls.__name__, (cls,), {"comm": comm})

    def __init__(self, net, dataset, device=("cpu", 0), seed: int = 0, threads=None):
        world = self.comm.world
        n, batch = len(dataset.train.x), net.spec["train"]["batch_size"] * world
        if 0 < n % batch < world:
            raise DlcError(f"the last global batch has {n % batch} rows, fewer than the "
                           f"{world} workers; change train.batch_size or the worker count")
        device = (device[0], self.comm.device(*device))  # a GPU per worker: its local rank
        super().__init__(global_network(net, world), dataset, device, seed, threads)

    def _stepper(self, data_norm, params):
        grad, update = build_split_step(self.net, data_norm, self.device[0])
        self.frozen = {n: params[n] for n in grad.frozen}
        persistent = persistent_values(self.net, update, params)
        sessions = [make_session(g.model, *self.device, self.threads) for g in (grad, update)]
        stepper = ParallelStepper(*sessions, persistent, self.frozen, self.comm, *self.device)
        return dataclasses.replace(update, noise=grad.noise, frozen=grad.frozen), stepper

    def train_epoch(self, on_step=None) -> dict:
        """One epoch; then the running statistics are averaged over the workers, so that
        validation, checkpoints and the model see the same values on every worker."""
        row = super().train_epoch(on_step)
        self.stepper.average_buffers([p.name for p in self.net.buffers])
        return row
