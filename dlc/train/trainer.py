"""The train loop: one onnxruntime `run` per step, per-epoch validation, early stopping.

Everything a run's future depends on (parameters, optimizer state, step count, the data-order and
dropout RNG, schedule and early-stopping state) lives in `TrainState`, which a checkpoint saves
whole, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from dlc.data._split import permutation
from dlc.data.augment import augment
from dlc.errors import DlcError
from dlc.model import metrics as M
from dlc.model.layers.base import numel
from dlc.model.names import column, suffixed, x_feeds, x_names
from dlc.model.network import Network
from dlc.runtime.cpus import default_threads
from dlc.runtime.session import make_session
from dlc.runtime.stepper import BoundStepper
from dlc.train.features import registry as features
from dlc.train.options import TrainOptions
from dlc.train.schedule import Schedule
from dlc.train.step import LR, build_eval_step, build_train_step, persistent_values, y_feeds

LOWER_IS_BETTER = {"loss", "mse", "mae"}
EVAL_BATCH = 1024


class Diverged(DlcError):
    """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """The loop's own state; parameters and optimizer states live in the stepper."""

    rng: np.random.Generator
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"epoch", "value", "params"}
    bad_epochs: int = 0
    skipped_steps: int = 0  # steps dropped for a non-finite loss (on_divergence: skip)


def monitor_of(train_cfg: dict, has_val: bool) -> tuple[str, bool]:
    """(metric column to monitor, lower is better)."""
    es = train_cfg.get("early_stopping") or {}
    name = es.get("monitor", "val_loss" if has_val else "train_loss")
    if name.startswith("val_") and not has_val:
        raise DlcError(f"train.early_stopping.monitor is {name} but the data has no validation "
                       "split; set data.split.val > 0 or monitor train_loss")
    return name, name.split("_", 1)[1].rsplit(".", 1)[-1] in LOWER_IS_BETTER


def batches_per_epoch(net: Network, n: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of one sample is dropped when the network has batchnorm:
    one sample has no batch variance (its running variance would be 0/0, a NaN model). torch
    refuses such a batch in training; dropping it is DataLoader(drop_last)'s remedy, for the
    one sample that it affects (a different one each epoch: the order is reshuffled)."""
    if n % batch_size == 1 and n > 1 and any(layer["type"] == "batchnorm"
                                             for layer in net.spec["layers"]):
        return n // batch_size
    return math.ceil(n / batch_size)


class Trainer:
    """`threads`: onnxruntime intra-op threads (default: OMP_NUM_THREADS, else the CPUs this
    process may use; dlc/runtime/cpus.py), the same for each of its sessions."""

    def __init__(self, net: Network, dataset, device: tuple[str, int] = ("cpu", 0), seed: int = 0,
                 threads: int | None = None):
        net = features.resolve(net, dataset)  # e.g. class_weights: balanced, from this data
        self.net, self.data, self.cfg = net, dataset, net.spec["train"]
        self.opts = TrainOptions.of(net.spec)
        self.features = features.active(net.spec, net)
        self.feature_state: dict = {}  # what each feature's start/begin returned, by its name
        self.device, self.threads = device, threads or default_threads()
        self.x_names = x_names(net)
        # the losses a step returns: `loss`, and `loss.<output>` for each of several outputs
        self.loss_names = ["loss", *(suffixed("loss", h.name) for h in net.heads if h.name)]
        self.state = TrainState(np.random.default_rng(seed))
        params = net.init_params(seed)
        self.step_graph, self.stepper = self._stepper(getattr(dataset, "norm", None), params)
        self._noise: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}  # by batch size
        features.start(self)  # e.g. train.prune's mask schedule
        opts = self.opts
        self.steps_per_epoch = batches_per_epoch(net, len(dataset.train.x), opts.batch_size)
        self.schedule = Schedule(opts.schedule, opts.optimizer.lr, opts.epochs,
                                 self.steps_per_epoch)
        self.monitor, self.lower_is_better = monitor_of(self.cfg, dataset.val is not None)

    def _stepper(self, data_norm: dict | None, params: dict):
        """The train-step graph and the stepper that runs it (dlc.distributed's trainer runs
        the split step instead), with the frozen parameters' host copies."""
        step = build_train_step(self.net, data_norm, self.device[0])
        self.frozen = {n: np.array(params[n], np.float32) for n in step.frozen}  # host copies
        self.sess = make_session(step.model, *self.device, self.threads)
        return step, BoundStepper(self.sess, persistent_values(self.net, step, params), *self.device,
                                  self.frozen)

    @functools.cached_property
    def eval_sess(self):
        """The inference-mode session, made on first use (validation or the final evaluation):
        a command that never evaluates never pays for it."""
        return make_session(build_eval_step(self.net).model, *self.device, self.threads)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every parameter by name (views of the flat vector, and the buffers)."""
        buffers = {p.name: self.stepper.get(p.name) for p in self.net.buffers}
        return {**self.step_graph.unpack(self.stepper.get("params")), **buffers, **self.frozen}

    @params.setter
    def params(self, values: dict[str, np.ndarray]) -> None:
        self.stepper.set("params", self.step_graph.pack(values))
        for p in self.net.buffers:
            self.stepper.set(p.name, values[p.name])
        self.frozen = {n: np.array(values[n], np.float32) for n in self.frozen}
        for name, value in self.frozen.items():  # fed unchanged every step (on the device)
            self.stepper.set_constant(name, value)

    @property
    def opt_states(self) -> dict[str, np.ndarray]:
        """Optimizer states by name ("m", "v", ...), each flat like the parameters."""
        return {s: self.stepper.get(f"state.{s}") for s in self.step_graph.states}

    @opt_states.setter
    def opt_states(self, values: dict[str, np.ndarray]) -> None:
        for s in self.step_graph.states:
            self.stepper.set(f"state.{s}", values[s])

    # ---- one epoch --------------------------------------------------------------------------
    def _feeds(self, xb, yb, lr: float) -> dict:
        feeds = {**x_feeds(self.x_names, xb), **y_feeds(yb), LR: np.array(lr, np.float32),
                 "step": np.array(self.state.step + 1, np.float32)}
        if self.step_graph.noise:
            feeds.update(self._dropout_noise(len(xb)))
        return feeds

    def _dropout_noise(self, n: int) -> dict[str, np.ndarray]:
        """Every noise input of a step of `n` samples from one draw into a buffer kept per batch
        size: the same numbers as one draw per tensor (resume stays exact), without allocating
        and faulting in fresh pages every step."""
        if n not in self._noise:
            sizes = [n * numel(shape) for _, shape in self.step_graph.noise]
            buf, offsets = np.empty(sum(sizes), np.float32), np.cumsum([0, *sizes])
            self._noise[n] = buf, {name: buf[o:o + size].reshape(n, *shape) for (name, shape), o,
                                   size in zip(self.step_graph.noise, offsets, sizes)}
        buf, views = self._noise[n]
        self.state.rng.random(out=buf, dtype=np.float32)
        return views

    def _finite(self, out: dict) -> bool:
        """True for a usable step; False to skip it (on_divergence: skip); else raise.
        Called after the step count moved on: `st.step` is the 1-based number of this step."""
        loss, norm = float(out["loss"]), float(out["grad_norm"])
        if math.isfinite(loss) and math.isfinite(norm):
            return True
        st = self.state
        message = (f"training diverged at epoch {st.epoch + 1}, step {st.step}: "
                   f"loss {loss}, gradient norm {norm}")
        if self.opts.on_divergence.action != "skip":
            raise Diverged(message)
        st.skipped_steps += 1
        return False

    def _step(self, idx: np.ndarray, yb, lr: float) -> tuple[dict | None, float]:
        """One optimizer step on the training samples `idx` (targets `yb`): its results (None
        when skipped for a non-finite loss) and the seconds spent inside onnxruntime."""
        st, train = self.state, self.data.train
        aug = (self.net.spec.get("data") or {}).get("augment")
        xb = augment(train.x[idx], aug, st.rng) if aug else train.x[idx]
        feeds = self._feeds(xb, yb, lr)
        t0 = time.perf_counter()
        out = self.stepper.run(feeds)
        seconds = time.perf_counter() - t0
        st.step += 1
        if not self._finite(out):
            return None, seconds
        self.stepper.commit()
        return out, seconds

    def train_epoch(self, on_step=None) -> dict:
        """One pass over the training split. `samples_per_s` times the whole epoch loop (batch
        gathering, feeds, the run, metrics, bookkeeping: comparable with other frameworks' loop
        timings); `run_samples_per_s` only the time inside onnxruntime."""
        t_start, st, train = time.perf_counter(), self.state, self.data.train
        bs, n = self.opts.batch_size, len(train.x)
        order = self._epoch_order()
        running = {h.name: M.Running(h.kind) for h in self.net.heads}
        sums, counted, run_seconds = dict.fromkeys(self.loss_names, 0.0), 0, 0.0
        for i in range(self.steps_per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            yb = train.y[idx]
            out, seconds = self._step(idx, yb, self.schedule.lr(st.epoch, i))
            run_seconds += seconds
            if out is None:
                continue
            for name in self.loss_names:
                sums[name] += float(out[name]) * len(idx)
            for h in self.net.heads:  # streaming sums: no batch's logits are kept
                running[h.name].add(h.targets(yb), out[suffixed("logits", h.name)])
            counted += len(idx)
            if on_step:
                on_step(i + 1, self.steps_per_epoch, float(out["loss"]))
        if not counted:
            raise Diverged(f"every step of epoch {st.epoch + 1} diverged")
        row = self._metrics("train", {h.name: running[h.name].result() for h in self.net.heads},
                            {k: v / counted for k, v in sums.items()})
        row["samples_per_s"] = n / (time.perf_counter() - t_start)
        row["run_samples_per_s"] = n / run_seconds if run_seconds else 0.0
        return row

    def _epoch_order(self) -> np.ndarray:
        """The training-sample order of the next epoch: a feature's (data.sampling: balanced),
        else a fresh permutation, from the run's checkpointed generator."""
        for f in self.features:
            order = f.epoch_order(self.state.rng, self.data.train.y, self.net.spec)
            if order is not None:
                return order
        return permutation(len(self.data.train.y), self.state.rng)

    def _metrics(self, prefix: str, results: dict[str, dict], losses: dict[str, float]) -> dict:
        """A metrics row: `<prefix>_loss`, and per output its loss (several outputs) and the
        metrics its task names (`results`: every metric of each output, by output name)."""
        row = {f"{prefix}_loss": losses["loss"]}
        for h in self.net.heads:
            values = dict(results[h.name])
            if h.name:
                values["loss"] = losses[suffixed("loss", h.name)]
            row.update({column(prefix, h.name, m): values[m]
                        for m in (["loss"] if h.name else []) + h.task["metrics"]})
        return row

    # ---- evaluation -------------------------------------------------------------------------
    def predict_split(self, split, params=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Mean losses (`loss`, per output `loss.<o>`) and each output's logits of a whole
        split, in inference mode."""
        params = params or self.params
        names = [o.name for o in self.eval_sess.get_outputs()]
        sums, outs = dict.fromkeys(self.loss_names, 0.0), []
        for i in range(0, len(split.x), EVAL_BATCH):
            xb, yb = split.x[i:i + EVAL_BATCH], split.y[i:i + EVAL_BATCH]
            out = dict(zip(names, self.eval_sess.run(None, {**x_feeds(self.x_names, xb),
                                                             **y_feeds(yb), **params})))
            for name in sums:
                sums[name] += float(out[name]) * len(xb)
            outs.append(out)
        logits = {h.name: np.concatenate([o[suffixed("logits", h.name)] for o in outs])
                  for h in self.net.heads}
        return {k: v / len(split.x) for k, v in sums.items()}, logits

    def evaluate(self, split, prefix: str, params=None) -> dict:
        losses, logits = self.predict_split(split, params)
        return self._metrics(prefix, {h.name: M.compute(h.kind, h.targets(split.y),
                                                        logits[h.name])
                                      for h in self.net.heads}, losses)

    # ---- the loop ---------------------------------------------------------------------------
    def end_epoch(self, row: dict) -> bool:
        """Record the epoch; update schedule and early stopping. True when training should stop."""
        st, es = self.state, self.opts.early_stopping
        st.epoch += 1
        st.history.append({"epoch": st.epoch, **row})
        value = row[self.monitor]
        self.schedule.end_epoch(value, self.lower_is_better)
        delta = es.min_delta if es else 0.0
        improved = st.best is None or (value < st.best["value"] - delta if self.lower_is_better
                                       else value > st.best["value"] + delta)
        if improved:
            st.best, st.bad_epochs = {"epoch": st.epoch, "value": value,
                                      "params": self.params}, 0
        else:
            st.bad_epochs += 1
        return es is not None and st.bad_epochs >= es.patience

    def final_params(self) -> dict[str, np.ndarray]:
        es = self.opts.early_stopping
        if es and es.restore_best and self.state.best:
            return self.state.best["params"]
        return self.params

    def _snapshot(self) -> dict:
        st = self.state
        return {"params": self.params, "opt": self.opt_states, "step": st.step,
                "rng": st.rng.bit_generator.state}

    def _restore(self, snap: dict) -> None:
        self.params, self.opt_states = snap["params"], snap["opt"]
        self.state.step, self.state.rng.bit_generator.state = snap["step"], snap["rng"]

    def _epoch_with_retries(self, reporter) -> dict:
        """One training epoch; on divergence with action retry, restart it at half the lr."""
        retries = self.opts.on_divergence.retry_budget
        snap = self._snapshot() if retries else None
        while True:
            try:
                return self.train_epoch(reporter.step)
            except Diverged as e:
                if retries == 0:
                    raise
                retries -= 1
                self._restore(snap)
                self.schedule.scale *= 0.5
                reporter.note(f"{e}; retrying epoch {self.state.epoch + 1} with the learning "
                              f"rate halved (x{self.schedule.scale:g})")

    def fit(self, reporter, on_epoch_end=None) -> None:
        epochs = self.opts.epochs
        while self.state.epoch < epochs:
            t0 = time.perf_counter()
            reporter.start_epoch(self.state.epoch + 1, epochs, self.steps_per_epoch)
            for f in self.features:  # e.g. train.prune's schedule, before its epoch
                f.epoch_start(self)
            row = self._epoch_with_retries(reporter)
            if self.data.val is not None:
                row.update(self.evaluate(self.data.val, "val"))
            row["lr"] = self.schedule.lr(self.state.epoch, self.steps_per_epoch - 1)
            row["seconds"] = time.perf_counter() - t0
            stop = self.end_epoch(row)
            reporter.end_epoch(self.state.history[-1])
            if on_epoch_end:
                on_epoch_end(self)
            if stop:
                reporter.note(f"early stopping after epoch {self.state.epoch}: "
                              f"{self.monitor} did not improve for "
                              f"{self.opts.early_stopping.patience} epochs")
                break
