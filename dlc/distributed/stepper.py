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

The vector stays where onnxruntime put it: it is one onnxruntime-owned OrtValue (on the CPU or
the worker's GPU) into which the gradient graph's IOBinding writes the gradient, losses and
logits; torch sees the same memory through DLPack (no copy) and all-reduces it in place (gloo
on CPU, NCCL on a GPU); the update graph's IOBinding reads the gradient from it. Parameters,
optimizer states and running statistics stay in onnxruntime-owned OrtValues too (BoundValues'
ping-pong), so only the batch goes in and the losses, logits and gradient norm come out.

Stream order on a GPU: onnxruntime writes the buffer on its CUDA stream, torch's scaling and
NCCL run on torch's streams, which know nothing of onnxruntime's. Two host-side waits order
them: IOBinding.synchronize_outputs() after the gradient run (onnxruntime's stream is done
before torch reads), torch.cuda.synchronize() after the all-reduce (NCCL is done before the
update run reads). Nothing else touches the buffer between them. (OrtValue.__dlpack__ ignores
the consumer's stream, so DLPack's own stream handshake orders nothing here.)
"""

from __future__ import annotations

import math

import numpy as np

from dlc.runtime.stepper import BoundValues, results
from dlc.train.step import whole_batch

SCALARS = ("lr", "step")  # update-graph feeds that are not rows of the batch


def shard(n: int, rank: int, world: int) -> slice:
    """This worker's rows of an n-row global batch (contiguous, sizes differing by one at most)."""
    return slice(n * rank // world, n * (rank + 1) // world)


class Wire:
    """The all-reduced vector of an n-row global batch: [grad | losses | each logits block of
    n rows], one onnxruntime-owned OrtValue, and `tensor`, torch's view of the same memory."""

    def __init__(self, grad_sess, names: list[str], total: int, n: int, owner, comm):
        shapes = {o.name: [n if isinstance(d, str) else d for d in o.shape]
                  for o in grad_sess.get_outputs() if o.name in names}
        self.blocks = [k for k in names if shapes[k]]  # logits, [n, ...]
        self.names = [*(k for k in names if not shapes[k]), *self.blocks]  # losses first
        self.shapes = {"grad": [total], **shapes}
        sizes = [math.prod(self.shapes[k]) for k in ["grad", *self.names]]
        self.offsets = dict(zip(["grad", *self.names], np.cumsum([0, *sizes]).tolist()))
        self.n, self.end = n, sum(sizes)
        self.scaled = self.offsets[self.blocks[0]] if self.blocks else self.end
        self.value = owner.ort.OrtValue.ortvalue_from_shape_and_type(
            [self.end], np.float32, owner.device, owner.device_id)
        self.tensor, self.comm = comm.view(self.value), comm

    def pointer(self, name: str, first_row: int = 0) -> int:
        """The address of `name`'s part, from row `first_row` of a logits block (a loss is one
        number whatever the rows: every worker's sits at the same place, to be summed)."""
        row = math.prod(self.shapes[name][1:]) if name in self.blocks else 0
        return self.value.data_ptr() + 4 * (self.offsets[name] + first_row * row)

    def reduce(self, rows: slice) -> None:
        """Zero the other workers' rows of the logits, weight gradient and losses by this
        worker's share of the batch, sum over the workers in place, and wait for the sum."""
        t = self.tensor
        for name in self.blocks:
            o, row = self.offsets[name], math.prod(self.shapes[name][1:])
            t[o:o + rows.start * row].zero_()
            t[o + rows.stop * row:o + self.n * row].zero_()
        t[:self.scaled].mul_((rows.stop - rows.start) / self.n)
        self.comm.all_reduce(t)
        self.comm.synchronize(t)

    def results(self) -> dict[str, np.ndarray]:
        """Host copies of the whole batch's losses and logits (all but the gradient)."""
        start = self.shapes["grad"][0]
        host = np.array(self.tensor[start:].cpu().numpy())
        return {k: host[self.offsets[k] - start:][:math.prod(self.shapes[k])]
                .reshape(self.shapes[k]) for k in self.names}


class ParallelStepper(BoundValues):
    """The stepper interface of dlc.runtime.stepper (get, set, set_constant, run, commit) over
    the two sessions of a split step and a Collective, device-resident (module docstring)."""

    def __init__(self, grad_sess, update_sess, persistent: dict[str, np.ndarray],
                 constants: dict[str, np.ndarray], comm, device: str = "cpu", device_id: int = 0):
        super().__init__(persistent, device, device_id, constants)
        self.sessions, self.comm, self.total = (grad_sess, update_sess), comm, \
            int(np.asarray(persistent["params"]).size)
        self.inputs = [{i.name for i in s.get_inputs()} for s in self.sessions]
        self.outputs = [{o.name for o in s.get_outputs()} for s in self.sessions]
        self.reduced = [n for n in results(grad_sess) if n != "grad"]  # losses and logits
        self.grad_norm = self.ort.OrtValue.ortvalue_from_shape_and_type([], np.float32, "cpu", 0)
        self.wires: dict[int, Wire] = {}
        self.bindings: dict[tuple, tuple] = {}  # (cur, n) -> the two sessions' IOBindings

    def _bind(self, cur: int, n: int, rows: slice):
        """The IOBindings of both runs for set `cur` in and an n-row global batch: persistent
        tensors in and `.new` out (ping-pong), constants in, results into the wire."""
        if (cur, n) in self.bindings:
            return self.bindings[cur, n]
        if n not in self.wires:
            self.wires[n] = Wire(self.sessions[0], self.reduced, self.total, n, self, self.comm)
        wire, where = self.wires[n], (self.device, self.device_id, np.float32)
        pair = tuple(s.io_binding() for s in self.sessions)
        for binding, inputs, outputs in zip(pair, self.inputs, self.outputs):
            for name, value in {**self.constants, **self.sets[cur]}.items():
                if name in inputs:
                    binding.bind_ortvalue_input(name, value)
                if f"{name}.new" in outputs:
                    binding.bind_ortvalue_output(f"{name}.new", self.sets[1 - cur][name])
        grad, update = pair
        for name in wire.names:
            shape = wire.shapes[name] and [rows.stop - rows.start, *wire.shapes[name][1:]]
            grad.bind_output(name, *where, shape, wire.pointer(name, rows.start))
        grad.bind_output("grad", *where, [self.total], wire.pointer("grad"))
        update.bind_input("grad", *where, [self.total], wire.pointer("grad"))
        update.bind_ortvalue_output("grad_norm", self.grad_norm)
        self.bindings[cur, n] = pair
        return pair

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(v for k, v in feeds.items() if k not in SCALARS))
        rows = shard(n, self.comm.rank, self.comm.world)
        grad, update = self._bind(self.cur, n, rows)
        for name, value in feeds.items():
            if name in self.inputs[0]:
                grad.bind_cpu_input(name, value[rows])
            if whole_batch(name) in self.inputs[0]:  # a weighted loss's normaliser
                grad.bind_cpu_input(whole_batch(name), value)
            if name in self.inputs[1]:
                update.bind_cpu_input(name, value)
        self.sessions[0].run_with_iobinding(grad)
        grad.synchronize_outputs()  # onnxruntime's stream has written the wire
        wire = self.wires[n]
        wire.reduce(rows)
        self.sessions[1].run_with_iobinding(update)
        return {**wire.results(), "grad_norm": np.array(self.grad_norm.numpy())}

    def average_buffers(self, names: list[str]) -> None:
        """Running statistics (batchnorm) to the workers' mean: each worker saw its own rows."""
        for name in names:
            self.set(name, self.comm.mean(self.get(name)))
