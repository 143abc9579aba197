"""Normalisation layers. Training graphs take the batch statistics with primitive ops
(onnxruntime's CUDA BatchNormalization refuses training mode at opset >= 14); batchnorm then
applies them with one BatchNormalization in inference form, whose VJP rule
(dlc/autodiff/norm.py) recognises them as its input's own and emits the closed-form backward.
Layernorm trains through one LayerNormalization, whose rule reads its Mean and InvStdDev."""

from __future__ import annotations

from dlc.model.layers.base import Layer, Param, Shape, numel
from dlc.model.layers.fields import Field, number
from dlc.model.layers.init import initializer


def normalise(b, x: str, axes: str, eps: float) -> tuple[str, str, str, str]:
    """(x - mean, mean, biased variance, 1 / sqrt(variance + eps)) over `axes`, in primitive ops:
    layernorm's exported (inference) form, kept as it was so that exported models stay byte for
    byte what they were; training takes one LayerNormalization instead (LayerNorm.lower)."""
    mean = b.ReduceMean(x, axes, keepdims=1)
    centred = b.Add(x, b.Neg(mean))
    var = b.ReduceMean(b.Mul(centred, centred), axes, keepdims=1)
    return centred, mean, var, b.Reciprocal(b.Sqrt(b.Add(var, b.const(eps))))


def batch_statistics(b, x: str, rank: int) -> tuple[str, str]:
    """Per-channel (axis 1) mean and biased variance of x as [C] vectors: mean, and the mean of
    c * c with c = x + Neg(Reshape(mean)), the form the BatchNormalization VJP rule recognises
    as x's own statistics (autodiff/norm.py `_own_statistics`: c is what its backward reads).
    A Mul and a mean: onnxruntime's ReduceSumSquare took 1 ms more on [128, 16, 32, 32]."""
    mean = channel_mean(b, x, rank)
    centred = b.Add(x, b.Neg(b.Reshape(mean, b.const([1, -1, *[1] * (rank - 2)]))))
    return mean, channel_mean(b, b.Mul(centred, centred), rank)


def channel_mean(b, t: str, rank: int) -> str:
    """[C] mean of an [N, C, ...] tensor over every axis but 1: over the spatial axes first (one
    contiguous run per image and channel), then over N. onnxruntime took 0.19 against 0.43 ms
    for one ReduceMean over (0, 2, 3) of [128, 16, 32, 32] at 1 thread."""
    if rank > 2:
        t = b.ReduceMean(b.Reshape(t, b.const([0, 0, -1])), b.const([2]), keepdims=0)
    return b.ReduceMean(t, b.const([0]), keepdims=0)


class BatchNorm(Layer):
    """Per-channel (axis 1) batch statistics in training, running statistics at inference.

    running = momentum * running + (1 - momentum) * batch, with the unbiased batch variance
    (as torch) for the running variance; the normalisation itself uses the biased one."""
    schema_name = "batchnorm"
    spec_doc = ("Batch normalisation over axis 1 (channels, or features of a flat input): batch "
                "statistics while training, running statistics at inference.")
    type_doc = "Layer type: batch normalisation."
    fields = (
        Field("momentum",
              "Running statistics keep this share of their old value each step (0.9: new = 0.9 "
              "old + 0.1 batch).",
              number(minimum=0, exclusiveMaximum=1), default=0.9),
        Field("epsilon", "Added to the variance before the square root.",
              number(exclusiveMinimum=0), default=1e-05),
    )

    def params(self, in_shape: Shape) -> list[Param]:
        c, n = (in_shape[0],), self.name
        return [Param(f"{n}.gamma", c, initializer("ones")),
                Param(f"{n}.beta", c, initializer("zeros")),
                Param(f"{n}.running_mean", c, initializer("zeros"), trainable=False),
                Param(f"{n}.running_var", c, initializer("ones"), trainable=False)]

    def flops(self, in_shape: Shape) -> int:
        return 4 * numel(in_shape)

    def lower(self, b, x, p, ctx, in_shape):
        n = self.name
        if ctx.training:
            mean, var = batch_statistics(b, x, len(in_shape) + 1)
            self._update_running(b, x, p, ctx, mean, var, in_shape[0])
        else:
            mean, var = p[f"{n}.running_mean"], p[f"{n}.running_var"]
        return b.BatchNormalization(x, p[f"{n}.gamma"], p[f"{n}.beta"], mean, var,
                                    epsilon=float(self.cfg["epsilon"]))

    def _update_running(self, b, x, p, ctx, mean, var, channels):
        n, m = self.name, float(self.cfg["momentum"])
        count = b.Cast(b.Div(b.Size(x), b.const(channels)), to=b.float_code)
        unbiased = b.Mul(var, b.Div(count, b.Sub(count, b.const(1.0))))
        for stat, batch in (("running_mean", mean), ("running_var", unbiased)):
            old = p[f"{n}.{stat}"]
            ctx.updates[f"{n}.{stat}"] = b.Add(b.Mul(old, b.const(m)),
                                               b.Mul(batch, b.const(1.0 - m)))


class LayerNorm(Layer):
    """Normalise each sample over its last axis; gamma and beta of that axis' size.

    Training: one LayerNormalization with its Mean and InvStdDev outputs, which its VJP rule
    reads for the closed-form backward (7 passes over x-sized tensors forward and back, 15
    through primitive ops; tests/test_grad_shapes.py). Inference keeps the primitive ops, so
    exported models are what they were, byte for byte."""
    schema_name = "layernorm"
    spec_doc = ("Layer normalisation of each sample over its last axis, with a learned scale and "
                "shift.")
    type_doc = "Layer type: layer normalisation."
    fields = (
        Field("epsilon", "Added to the variance before the square root.",
              number(exclusiveMinimum=0), default=1e-05),
    )

    def params(self, in_shape: Shape) -> list[Param]:
        d = (in_shape[-1],)
        return [Param(f"{self.name}.gamma", d, initializer("ones")),
                Param(f"{self.name}.beta", d, initializer("zeros"))]

    def flops(self, in_shape: Shape) -> int:
        return 5 * numel(in_shape)

    def lower(self, b, x, p, ctx, in_shape):
        gamma, beta, eps = p[f"{self.name}.gamma"], p[f"{self.name}.beta"], self.cfg["epsilon"]
        if ctx.training:
            return b.LayerNormalization(x, gamma, beta, axis=-1, epsilon=float(eps),
                                        outputs=3)[0]
        centred, _, _, inv_std = normalise(b, x, b.const([-1]), float(eps))
        return b.Add(b.Mul(b.Mul(centred, inv_std), gamma), beta)
