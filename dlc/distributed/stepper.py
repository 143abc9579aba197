"""One data-parallel step: the gradient graph on this worker's rows of the global batch, one sum
all-reduce, the update graph on the averaged gradient.

Every worker is fed the same global batch (the same seeded order, augmentation and dropout
noise as one process with the whole batch) and keeps its rows [n*r/N, n*(r+1)/N). What crosses
the wire in one all-reduce is one float32 vector: the flat gradient times this worker's share of
the rows, the losses likewise, and the logits in this worker's rows of a zeroed global-batch
block; the sum is then the gradient and losses of the whole batch (their row-weighted mean) and
every row's logits, on every worker. So the update, the gradient norm and the divergence
decision (NaN skip/stop) are the same on every worker, and rank 0's metrics cover the batch.
A class-weighted loss is a weighted mean whose normaliser is the whole batch's, not the
worker's rows': every worker's gradient graph takes the global batch's targets for it.
"""

from __future__ import annotations

import numpy as np

from dlc.runtime.stepper import HostValues, results
from dlc.train.step import whole_batch

SCALARS = ("lr", "step")  # update-graph feeds that are not rows of the batch


def shard(n: int, rank: int, world: int) -> slice:
    """This worker's rows of an n-row global batch (contiguous, sizes differing by one at most)."""
    return slice(n * rank // world, n * (rank + 1) // world)


class ParallelStepper(HostValues):
    """The stepper interface of dlc.runtime.stepper (get, set, set_constant, run, commit) over
    the two sessions of a split step and a Collective. Host arrays: the all-reduce reads them."""

    def __init__(self, grad_sess, update_sess, persistent: dict[str, np.ndarray],
                 constants: dict[str, np.ndarray], comm):
        super().__init__(persistent, constants)
        self.grad_sess, self.update_sess, self.comm = grad_sess, update_sess, comm
        self.grad_names = [o.name for o in grad_sess.get_outputs()]
        self.update_names = [o.name for o in update_sess.get_outputs()]
        self.grad_in = {i.name for i in grad_sess.get_inputs()}
        self.update_in = {i.name for i in update_sess.get_inputs()}
        self.reduced = [n for n in results(grad_sess) if n != "grad"]  # losses and logits

    def _local(self, feeds: dict, rows: slice) -> dict[str, np.ndarray]:
        """The gradient graph's outputs on this worker's rows."""
        local = {k: v[rows] for k, v in feeds.items() if k in self.grad_in}
        local.update({whole_batch(k): v for k, v in feeds.items()  # a weighted loss's normaliser
                      if whole_batch(k) in self.grad_in})
        inputs = {k: v for k, v in {**self.values, **self.constants}.items() if k in self.grad_in}
        return dict(zip(self.grad_names, self.grad_sess.run(None, {**local, **inputs})))

    def _reduce(self, out: dict, rows: slice, n: int) -> dict[str, np.ndarray]:
        """The whole batch's gradient, losses and logits: one all-reduce of one vector."""
        share = np.float32((rows.stop - rows.start) / n)
        parts, shapes = [], {}
        for name in ["grad", *self.reduced]:
            value = np.asarray(out[name], np.float32)
            if value.ndim and name != "grad":  # logits: this worker's rows of the global block
                block = np.zeros((n, *value.shape[1:]), np.float32)
                block[rows] = value
                value = block
            else:
                value = value * share
            shapes[name] = value.shape
            parts.append(value.ravel())
        flat = self.comm.all_reduce(np.concatenate(parts))
        offsets = np.cumsum([0, *(p.size for p in parts)])
        return {name: flat[o:o + parts[i].size].reshape(shapes[name])
                for i, (name, o) in enumerate(zip(shapes, offsets))}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(v for k, v in feeds.items() if k not in SCALARS))
        rows = shard(n, self.comm.rank, self.comm.world)
        out = self._local(feeds, rows)
        whole = self._reduce(out, rows, n)
        inputs = {k: v for k, v in {**self.values, **feeds}.items() if k in self.update_in}
        new = dict(zip(self.update_names,
                       self.update_sess.run(None, {**inputs, "grad": whole["grad"]})))
        written = {**out, **new}  # buffers from the gradient graph, the rest from the update
        self._pending = {k: written[f"{k}.new"] for k in self.values}
        return {**{k: whole[k] for k in self.reduced}, "grad_norm": new["grad_norm"]}

    def average_buffers(self, names: list[str]) -> None:
        """Running statistics (batchnorm) to the workers' mean: each worker saw its own rows."""
        for name in names:
            self.values[name] = self.comm.mean(self.values[name])
