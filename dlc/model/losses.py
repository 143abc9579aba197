"""Losses as standard ONNX ops over the logits, each reduced to a scalar mean over the batch.

They use only primitives that the VJP table differentiates (LogSoftmax, Softplus, Abs, Where, ...),
so the loss needs no rule of its own.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from dlc.errors import DlcError
from dlc.graph import Builder


def _mean(b: Builder, x: str) -> str:
    return b.ReduceMean(x, keepdims=0)


def _class_weights(task: dict) -> list[float] | None:
    """task.class_weights, one per class, or None (every class weighs 1)."""
    weights = task.get("class_weights")
    if isinstance(weights, str):  # "balanced": train.features.imbalance.resolve fills them in
        raise DlcError("task.class_weights: balanced is computed from the training data; "
                       "build the train step through the Trainer (or give the weights)")
    return None if weights is None else [float(w) for w in weights]


def weighted(task: dict) -> bool:
    """Whether the loss is a class-weighted mean, whose normaliser depends on the targets of
    the whole batch (a data-parallel worker's gradient graph then takes them: `y_all`)."""
    return task.get("class_weights") is not None


def _weighted_mean(b: Builder, terms: str, w: str, weight, y_all: str | None) -> str:
    """sum(terms) / sum(w), terms_i = w_i l_i, w = weight(y): torch's mean reduction with
    `weight=`.
    A data-parallel worker holds some rows of the batch and its terms are added up weighted by
    its share of the rows (dlc.distributed.stepper); with `y_all`, the whole batch's targets,
    its normaliser is its row count times the whole batch's mean weight, so that the sum is the
    whole batch's weighted mean (its own sum(w_i) would weigh each worker's rows alike)."""
    if y_all is None:
        norm = b.ReduceSum(w, keepdims=0)
    else:
        norm = b.Mul(b.Cast(b.Size(w), to=b.float_code), b.ReduceMean(weight(y_all), keepdims=0))
    return b.Div(b.ReduceSum(terms, keepdims=0), norm)


def _smoothed_target(b: Builder, y: str, task: dict, classes: int) -> str:
    """(1 - eps) onehot(y) + eps / classes, over a new last axis."""
    eps = float(task.get("label_smoothing", 0.0))
    values = b.const([eps / classes, 1.0 - eps + eps / classes])
    return b.OneHot(y, b.const(classes), values, axis=-1)


def _cross_entropy_gradient(b: Builder, logits: str, y: str, task: dict, classes: int) -> str:
    """d loss / d logits of the unweighted cross-entropy: (softmax - target) / count, as the
    target sums to 1 over the classes. Five kernels where the chain rule through the loss's
    nodes emitted 14 (on the digits MLP 11 nodes fewer after onnxruntime's optimisation, the
    same gradient to the bit, session.run 564-566 -> 556 us at 1 thread, min of 15 blocks). Its
    LogSoftmax and OneHot are the forward's again, merged by onnxruntime's CSE."""
    softmax = b.Exp(b.LogSoftmax(logits, axis=-1))
    count = b.Cast(b.Size(y), to=b.float_code)
    return b.Div(b.Sub(softmax, _smoothed_target(b, y, task, classes)), count)


def closed_gradient(b: Builder, task: dict, logits: str, y: str, classes: int):
    """A function emitting d loss / d logits in closed form when the task's loss has one
    (dlc.autodiff.gradients' `closed`), else None (class-weighted losses: the chain rule)."""
    form = GRADIENTS.get(task["loss"])
    if form is None or weighted(task):
        return None
    return partial(form, b, logits, y, task, classes)


def cross_entropy(b: Builder, logits: str, y: str, task: dict, classes: int,
                  y_all: str | None = None) -> str:
    """Softmax cross-entropy against integer labels, with label smoothing eps:
    target = (1 - eps) onehot + eps / classes. Classes are the last axis: logits [N, C] with y [N],
    or per-token logits [N, T, C] with y [N, T] (the mean then runs over every token)."""
    target, logp = _smoothed_target(b, y, task, classes), b.LogSoftmax(logits, axis=-1)
    weights = _class_weights(task)
    if weights is not None:  # torch's weight=: each class's share of the target times its weight
        w = b.const(np.asarray(weights, np.float32), name="class_weights")
        per_sample = b.ReduceSum(b.Mul(b.Mul(target, w), logp), b.const([-1]), keepdims=0)
        return b.Neg(_weighted_mean(b, per_sample, b.Gather(w, y), partial(b.Gather, w), y_all))
    return b.Neg(_mean(b, b.ReduceSum(b.Mul(target, logp), b.const([-1]), keepdims=0)))


def binary_cross_entropy(b: Builder, logits: str, y: str, task: dict, classes: int,
                         y_all: str | None = None) -> str:
    """BCE with logits: softplus(z) - y z (softplus is evaluated stably by onnxruntime).
    Class weights [w0, w1]: sample weight w0 + (w1 - w0) y."""
    per_sample = b.Sub(b.Softplus(logits), b.Mul(y, logits))
    weights = _class_weights(task)
    if weights is not None:
        w0, w1 = weights

        def weight(t: str) -> str:
            return b.Add(b.Mul(t, b.const(w1 - w0)), b.const(w0))

        per = weight(y)
        return _weighted_mean(b, b.Mul(per_sample, per), per, weight, y_all)
    return _mean(b, per_sample)


def mse(b: Builder, pred: str, y: str, task: dict, classes: int) -> str:
    d = b.Sub(pred, y)
    return _mean(b, b.Mul(d, d))


def mae(b: Builder, pred: str, y: str, task: dict, classes: int) -> str:
    return _mean(b, b.Abs(b.Sub(pred, y)))


def huber(b: Builder, pred: str, y: str, task: dict, classes: int) -> str:
    """0.5 d^2 where |d| < delta, else delta (|d| - delta / 2)."""
    delta = float(task.get("huber_delta", 1.0))
    d = b.Sub(pred, y)
    a = b.Abs(d)
    quad = b.Mul(b.Mul(d, d), b.const(0.5))
    lin = b.Mul(b.Sub(a, b.const(delta / 2)), b.const(delta))
    return _mean(b, b.Where(b.Less(a, b.const(delta)), quad, lin))


def distillation(b: Builder, student: str, teacher: str, temperature: float) -> str:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) over the last axis, the mean over
    samples (and tokens): torch's T^2 kl_div(..., reduction='batchmean') for [N, C] logits."""
    t = b.const(float(temperature))
    log_q = b.LogSoftmax(b.Div(student, t), axis=-1)
    log_p = b.LogSoftmax(b.Div(teacher, t), axis=-1)
    kl = b.ReduceSum(b.Mul(b.Exp(log_p), b.Sub(log_p, log_q)), b.const([-1]), keepdims=0)
    return b.Mul(_mean(b, kl), b.const(float(temperature) ** 2))


def scale_targets(net, dataset):
    """The network whose regression outputs with target_scaling: standard carry the training
    split's target statistics (per column: offset = mean, scale = std, 1 where the std is 0);
    the same network when there is nothing to scale."""
    heads = []
    for h in net.heads:
        if h.task.get("target_scaling", "none") == "standard":
            y = np.asarray(h.targets(dataset.train.y), np.float64).reshape(len(dataset.train), -1)
            std = y.std(axis=0)
            h = replace(h, target_norm={"offset": y.mean(axis=0).tolist(),
                                        "scale": np.where(std > 0, std, 1.0).tolist()})
        heads.append(h)
    return net if heads == net.heads else replace(net, heads=heads)


def target_stats(b: Builder, head) -> tuple[str, str] | None:
    """The constants (offset, scale) of an output's target scaling; None without it. Made once
    per graph and shared by `standardised` and `unscaled`."""
    norm = head.target_norm
    if norm is None:
        return None
    return (b.const(np.asarray(norm["offset"], np.float32), name="target_offset"),
            b.const(np.asarray(norm["scale"], np.float32), name="target_scale"))


def standardised(b: Builder, stats: tuple[str, str] | None, y: str) -> str:
    """The target the loss compares the logits to: (y - offset) / scale with target scaling."""
    if stats is None:
        return y
    offset, scale = stats
    return b.Div(b.Sub(y, offset), scale)


def unscaled(b: Builder, stats: tuple[str, str] | None, logits: str) -> str:
    """The prediction in the target's own units (what metrics, evaluate and predict see):
    logits * scale + offset with target scaling."""
    if stats is None:
        return logits
    offset, scale = stats
    return b.Add(b.Mul(logits, scale), offset)


LOSSES = {"cross_entropy": cross_entropy, "binary_cross_entropy": binary_cross_entropy,
          "mse": mse, "mae": mae, "huber": huber}
GRADIENTS = {"cross_entropy": _cross_entropy_gradient}  # closed forms of d loss / d logits


def loss(b: Builder, task: dict, logits: str, y: str, classes: int,
         y_all: str | None = None) -> str:
    """The task's loss; `y_all`: the whole batch's targets, for a weighted mean on a
    data-parallel worker's rows (see `weighted`)."""
    with b.scope("loss"):
        if weighted(task):
            return LOSSES[task["loss"]](b, logits, y, task, classes, y_all)
        return LOSSES[task["loss"]](b, logits, y, task, classes)
