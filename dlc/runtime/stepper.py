"""Where the persistent tensors of training live between steps, and how one step runs.

Persistent tensors are the train graph's inputs that it also returns as `<name>.new`: the flat
parameters, the flat optimizer states and the running statistics. `HostStepper` keeps them as
numpy arrays (CPU). `BoundStepper` keeps two sets of OrtValues on the device and binds one set
as inputs and the other as outputs, swapping each step (ping-pong), so nothing but the batch goes
up and loss, gradient norm and logits come down. The same OrtValue is never bound as both input
and output: onnxruntime would write in place, and a node that reads the old value after the
update would see the new one.
"""

from __future__ import annotations

import numpy as np

def results(sess) -> list[str]:
    """What a step returns to the host: every output that is not a persistent `.new` (loss,
    grad_norm, logits; per output `loss.<o>` and `logits.<o>`)."""
    return [o.name for o in sess.get_outputs() if not o.name.endswith(".new")]


class HostStepper:
    """`constants`: inputs fed unchanged every step (frozen parameters)."""

    def __init__(self, sess, persistent: dict[str, np.ndarray],
                 constants: dict[str, np.ndarray] | None = None):
        self.sess = sess
        self.names = [o.name for o in sess.get_outputs()]
        self.results = results(sess)
        self.values = dict(persistent)
        self.constants = {k: np.ascontiguousarray(v, np.float32)
                          for k, v in (constants or {}).items()}
        self._pending: dict[str, np.ndarray] | None = None

    def get(self, name: str) -> np.ndarray:
        return self.values[name]

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = np.ascontiguousarray(value, np.float32)

    def set_constant(self, name: str, value: np.ndarray) -> None:
        self.constants[name] = np.ascontiguousarray(value, np.float32)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(zip(self.names, self.sess.run(None, {**feeds, **self.constants,
                                                        **self.values})))
        self._pending = {k: out[f"{k}.new"] for k in self.values}
        return {k: out[k] for k in self.results}

    def commit(self) -> None:
        """Accept the last step's update (a skipped step is simply not committed)."""
        self.values, self._pending = self._pending, None


class BoundStepper:
    """`constants` (frozen parameters) are uploaded once and bound, unchanged, every step."""

    def __init__(self, sess, persistent: dict[str, np.ndarray], device: str = "cuda",
                 device_id: int = 0, constants: dict[str, np.ndarray] | None = None):
        import onnxruntime as ort

        self.ort, self.sess, self.device, self.device_id = ort, sess, device, device_id
        self.results = results(sess)
        self.sets = [{}, {}]
        for name, value in persistent.items():
            for s in self.sets:
                s[name] = self._upload(value)
        self.constants = {k: self._upload(v) for k, v in (constants or {}).items()}
        self.cur = 0

    def _upload(self, value: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, np.float32),
                                                     self.device, self.device_id)

    def get(self, name: str) -> np.ndarray:
        return self.sets[self.cur][name].numpy()

    def set(self, name: str, value: np.ndarray) -> None:
        self.sets[self.cur][name].update_inplace(np.ascontiguousarray(value, np.float32))

    def set_constant(self, name: str, value: np.ndarray) -> None:
        self.constants[name].update_inplace(np.ascontiguousarray(value, np.float32))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.sess.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, self._upload_any(value))
        for name, value in self.constants.items():
            binding.bind_ortvalue_input(name, value)
        src, dst = self.sets[self.cur], self.sets[1 - self.cur]
        for name in src:
            binding.bind_ortvalue_input(name, src[name])
            binding.bind_ortvalue_output(f"{name}.new", dst[name])
        for name in self.results:
            binding.bind_output(name, "cpu")
        self.sess.run_with_iobinding(binding)
        values = binding.get_outputs()[-len(self.results):]  # bound last, on the host
        return {name: value.numpy() for name, value in zip(self.results, values)}

    def _upload_any(self, value: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device,
                                                     self.device_id)

    def commit(self) -> None:
        self.cur = 1 - self.cur
