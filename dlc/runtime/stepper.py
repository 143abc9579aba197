"""Where the persistent tensors of training live between steps, and how one step runs.

Persistent tensors are the train graph's inputs that it also returns as `<name>.new`: the flat
parameters, the flat optimizer states and the running statistics. `BoundStepper`, what training
uses on every device, keeps two sets of onnxruntime-owned OrtValues and binds one set as inputs
and the other as outputs, swapping each step (ping-pong), so nothing but the batch goes in and
loss, gradient norm and logits come out; no feed dict is merged and no parameter copied per step.
`HostStepper` is the plain `session.run` reference it is tested (and benchmarked) against.
The same OrtValue is never bound as both input and output: onnxruntime would write in place, and
a node that reads the old value after the update would see the new one.
"""

from __future__ import annotations

import numpy as np


def results(sess) -> list[str]:
    """What a step returns to the host: every output that is not a persistent `.new` (loss,
    grad_norm, logits; per output `loss.<o>` and `logits.<o>`)."""
    return [o.name for o in sess.get_outputs() if not o.name.endswith(".new")]


class HostValues:
    """Persistent tensors kept as host arrays, and the commit of a step's update."""

    def __init__(self, persistent: dict[str, np.ndarray],
                 constants: dict[str, np.ndarray] | None = None):
        self.values = {k: np.ascontiguousarray(v, np.float32) for k, v in persistent.items()}
        self.constants = {k: np.ascontiguousarray(v, np.float32)
                          for k, v in (constants or {}).items()}
        self._pending: dict[str, np.ndarray] | None = None

    def get(self, name: str) -> np.ndarray:
        return self.values[name]

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = np.ascontiguousarray(value, np.float32)

    def set_constant(self, name: str, value: np.ndarray) -> None:
        self.constants[name] = np.ascontiguousarray(value, np.float32)

    def commit(self) -> None:
        """Accept the last step's update (a skipped step is simply not committed)."""
        self.values, self._pending = self._pending, None


class HostStepper(HostValues):
    """`constants`: inputs fed unchanged every step (frozen parameters)."""

    def __init__(self, sess, persistent: dict[str, np.ndarray],
                 constants: dict[str, np.ndarray] | None = None):
        super().__init__(persistent, constants)
        self.sess = sess
        self.names = [o.name for o in sess.get_outputs()]
        self.results = results(sess)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(zip(self.names, self.sess.run(None, {**feeds, **self.constants,
                                                        **self.values})))
        self._pending = {k: out[f"{k}.new"] for k in self.values}
        return {k: out[k] for k in self.results}


class BoundValues:
    """Persistent tensors in two sets of onnxruntime-owned OrtValues (on the CPU or a GPU), one
    read and the other written by a step (ping-pong), and `constants` (frozen parameters) copied
    in once: shared by BoundStepper and the data-parallel stepper (dlc.distributed)."""

    def __init__(self, persistent: dict[str, np.ndarray], device: str = "cpu",
                 device_id: int = 0, constants: dict[str, np.ndarray] | None = None):
        import onnxruntime as ort

        self.ort, self.device, self.device_id = ort, device, device_id
        self.sets = [{name: self._owned(value) for name, value in persistent.items()}
                     for _ in range(2)]
        self.constants = {k: self._owned(v) for k, v in (constants or {}).items()}
        self.cur = 0

    def _owned(self, value: np.ndarray):
        """A copy of `value` in memory onnxruntime allocated (never a view of a numpy array: the
        two sets must not share a buffer)."""
        value = np.ascontiguousarray(value, np.float32)
        owned = self.ort.OrtValue.ortvalue_from_shape_and_type(value.shape, np.float32,
                                                               self.device, self.device_id)
        owned.update_inplace(value)
        return owned

    def get(self, name: str) -> np.ndarray:
        """A host copy (the buffer is overwritten two steps later)."""
        return np.array(self.sets[self.cur][name].numpy())

    def set(self, name: str, value: np.ndarray) -> None:
        self.sets[self.cur][name].update_inplace(np.ascontiguousarray(value, np.float32))

    def set_constant(self, name: str, value: np.ndarray) -> None:
        self.constants[name].update_inplace(np.ascontiguousarray(value, np.float32))

    def commit(self) -> None:
        """Accept the last step's update: the set it wrote becomes the input of the next."""
        self.cur = 1 - self.cur


class BoundStepper(BoundValues):
    """The fused step over BoundValues, bound once by two prebuilt IOBindings, one per direction
    of the ping-pong; a step rebinds only what changes (the batch, lr, step and dropout noise).
    Frozen parameters are bound, unchanged, every step."""

    def __init__(self, sess, persistent: dict[str, np.ndarray], device: str = "cpu",
                 device_id: int = 0, constants: dict[str, np.ndarray] | None = None):
        super().__init__(persistent, device, device_id, constants)
        self.sess, self.results = sess, results(sess)
        self.bindings = [self._binding(cur) for cur in (0, 1)]
        self.batched = next(i.name for i in sess.get_inputs()  # an input [N, ...]: the batch size
                            if i.shape and isinstance(i.shape[0], str))
        self.outs: dict[int, dict] = {}  # batch size -> result buffers
        self.bound = [None, None]  # the batch size each binding's results are bound for

    def _binding(self, cur: int):
        """Set `cur` in, the other set out (results: bound for each batch size, after them)."""
        binding = self.sess.io_binding()
        for name, value in self.constants.items():
            binding.bind_ortvalue_input(name, value)
        src, dst = self.sets[cur], self.sets[1 - cur]
        for name in src:
            binding.bind_ortvalue_input(name, src[name])
            binding.bind_ortvalue_output(f"{name}.new", dst[name])
        return binding

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step from contiguous host arrays (the binding keeps them alive until rebound)."""
        binding = self.bindings[self.cur]
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        outs = self._result_buffers(binding, len(feeds[self.batched]))
        self.sess.run_with_iobinding(binding)
        return {name: np.array(value.numpy()) for name, value in outs.items()}

    def _result_buffers(self, binding, n: int) -> dict:
        """Host buffers for the results of an `n`-sample step, made once per batch size and bound
        when the size changes (a result is `[N, ...]` or a scalar)."""
        if n not in self.outs:
            self.outs[n] = {o.name: self.ort.OrtValue.ortvalue_from_shape_and_type(
                [n if isinstance(d, str) else d for d in o.shape], np.float32, "cpu", 0)
                for o in self.sess.get_outputs() if o.name in self.results}
        if self.bound[self.cur] != n:
            for name, value in self.outs[n].items():
                binding.bind_ortvalue_output(name, value)
            self.bound[self.cur] = n
        return self.outs[n]

