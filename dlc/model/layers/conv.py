"""Convolution and pooling over channels-first inputs: (C, L) for 1-D, (C, H, W) for 2-D."""

from __future__ import annotations

import math

from dlc.model.layers import activations, conv_gemm
from dlc.model.layers.base import Layer, Param, Shape, ShapeError, numel
from dlc.model.layers.fields import AUTO_INIT_DOC, Field, INITIALIZERS, boolean, enum, integer, ref
from dlc.model.layers.init import initializer


MAX_SIZE = 2 ** 31 - 1  # a kernel, stride, dilation or padding (a per-sample size, too)


def _tuple(value, rank: int, what: str) -> list[int]:
    values = [value] * rank if isinstance(value, int) else list(value)
    if len(values) != rank:
        raise ShapeError(f"{what} needs {rank} value(s), got {values}")
    return values


def _pads(padding, in_sp, k, s, d) -> list[int]:
    """ONNX pads [begin..., end...] for valid, same (TensorFlow's split) or explicit padding."""
    rank = len(in_sp)
    if padding == "valid":
        return [0] * (2 * rank)
    if padding == "same":
        total = [max((math.ceil(i / st) - 1) * st + dd * (kk - 1) + 1 - i, 0)
                 for i, kk, st, dd in zip(in_sp, k, s, d)]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    pads = list(padding)
    if len(pads) == rank:
        return pads + pads
    if len(pads) != 2 * rank:
        raise ShapeError(f"padding needs {rank} (symmetric) or {2 * rank} (begin..., end...) "
                         f"values, got {pads}")
    return pads


def _out_sizes(in_sp, k, s, d, pads) -> list[int]:
    rank = len(in_sp)
    return [(i + pads[j] + pads[rank + j] - dd * (kk - 1) - 1) // st + 1
            for j, (i, kk, st, dd) in enumerate(zip(in_sp, k, s, d))]


def _check_int64(*sizes) -> None:
    """ONNX attributes are int64."""
    if max(v for vs in sizes for v in vs) > MAX_SIZE:
        raise ShapeError(f"kernel, stride, dilation and padding must be at most {MAX_SIZE:,}, "
                         "got kernel {}, stride {}, dilation {}, pads {}".format(*sizes[:4]))


class _Windowed(Layer):
    """Shared geometry of conv and pooling layers."""

    rank = 2

    def window(self):
        """(kernel, stride, dilation) as written: an int or one per spatial dim."""
        return self.cfg["kernel"], self.cfg["stride"], self.cfg["dilation"]

    def spatial(self, in_shape: Shape) -> tuple[list[int], list[int], list[int]]:
        """(kernel, stride, dilation), one per spatial dim, for an input of the right rank."""
        if len(in_shape) != self.rank + 1:
            raise ShapeError(f"{self.cfg['type']} takes (channels, {self.rank} spatial dims), got "
                             f"shape {list(in_shape)}" + ("; add {type: reshape, shape: [1, ...]}"
                                                          if len(in_shape) == 1 else ""))
        kernel, stride, dilation = self.window()
        return (_tuple(kernel, self.rank, "kernel"), _tuple(stride, self.rank, "stride"),
                _tuple(dilation, self.rank, "dilation"))

    def geometry(self, in_shape: Shape):
        k, s, d = self.spatial(in_shape)
        pads = _pads(self.cfg["padding"], in_shape[1:], k, s, d)
        _check_int64(k, s, d, pads)
        out = _out_sizes(in_shape[1:], k, s, d, pads)
        if min(out) < 1:
            raise ShapeError(f"window {k} does not fit input {list(in_shape)} (output {out})")
        return k, s, d, pads, out


class Conv(_Windowed):
    schema_name = "conv"
    spec_doc = ("Convolution over channels-first input: conv1d takes (channels, length), conv2d "
                "(channels, height, width).")
    type_doc = "Layer type: conv1d or conv2d."
    fields = (
        Field("filters", "Number of output channels.", integer(minimum=1), required=True),
        Field("kernel",
              "Kernel size: one integer for every spatial dimension, or one per dimension.",
              ref("ints"), required=True),
        Field("stride", "Stride (default 1).", ref("ints"), default=1),
        Field("padding", "valid, same, or explicit zero padding (default valid).",
              ref("padding"), default="valid"),
        Field("dilation", "Dilation of the kernel (default 1).", ref("ints"), default=1),
        Field("groups",
              "Grouped convolution: channels and filters split into this many groups (groups = "
              "channels: depthwise).",
              integer(minimum=1), default=1),
        Field("activation", "Activation applied after the convolution (default linear: none).",
              ref("activationName"), default="linear"),
        Field("use_bias", "Whether to add a learned bias per filter.", boolean(), default=True),
        Field("initializer", AUTO_INIT_DOC, enum(*INITIALIZERS), default="auto"),
    )

    def output_shape(self, in_shape: Shape) -> Shape:
        groups, filters = self.cfg["groups"], self.cfg["filters"]
        if in_shape[0] % groups or filters % groups:
            raise ShapeError(f"groups {groups} must divide both input channels {in_shape[0]} and "
                             f"filters {filters}")
        return (filters, *self.geometry(in_shape)[4])

    def params(self, in_shape: Shape) -> list[Param]:
        k = self.geometry(in_shape)[0]
        groups, filters = self.cfg["groups"], self.cfg["filters"]
        shape = (filters, in_shape[0] // groups, *k)
        fans = (shape[1] * math.prod(k), filters * math.prod(k) // groups)
        return self._weight_and_bias(shape, fans)

    def _weight_and_bias(self, shape, fans) -> list[Param]:
        init = self.cfg["initializer"]
        if init == "auto":
            init = activations.AUTO_INIT.get(self.cfg["activation"], "glorot_uniform")
        params = [Param(f"{self.name}.weight", shape, initializer(init, fans))]
        if self.cfg["use_bias"]:
            params.append(Param(f"{self.name}.bias", (self.cfg["filters"],),
                                initializer("zeros")))
        return params

    def flops(self, in_shape: Shape) -> int:
        k, out = self.geometry(in_shape)[0], self.output_shape(in_shape)
        per_output = 2 * in_shape[0] // self.cfg["groups"] * math.prod(k)
        return per_output * numel(out)

    def lower(self, b, x, p, ctx, in_shape):
        k, s, d, pads, out = self.geometry(in_shape)
        w, bias, groups = p[f"{self.name}.weight"], p.get(f"{self.name}.bias"), self.cfg["groups"]
        if ctx.training and conv_gemm.lowers(ctx.device, groups, out):
            ws = (self.cfg["filters"], in_shape[0], *k)
            y = conv_gemm.lower(b, x, w, bias, ws, s, d, pads, out)
        else:
            y = b.Conv(x, w, bias, kernel_shape=k, strides=s, dilations=d, pads=pads, group=groups)
        return activations.apply(b, y, self.cfg["activation"], self.cfg)


class Conv1D(Conv):
    rank = 1


class ConvTranspose(Conv):
    """The adjoint of conv2d (a 'deconvolution', torch.nn.ConvTranspose2d): each input position
    spreads kernel-weighted copies into a (stride-spaced) output, which `padding` then crops.
    Output size (in - 1) * stride + dilation * (kernel - 1) + 1 + output_padding - pads; padding
    same gives in * stride. Weight [in channels, filters / groups, kh, kw] as in torch and ONNX."""
    schema_name = "conv_transpose"
    spec_doc = ("Transposed convolution over (channels, height, width): upsamples by the stride "
                "(the adjoint of conv2d, torch.nn.ConvTranspose2d).")
    type_doc = "Layer type: conv_transpose2d."
    fields = (
        *(f for f in Conv.fields if f.name != "padding"),
        Field("padding", "valid (output (in - 1) * stride + dilation * (kernel - 1) + 1), same "
              "(output in * stride), or explicit zeros cropped from the output (default valid).",
              ref("padding"), default="valid"),
        Field("output_padding", "Extra positions at the end of each output dimension (smaller "
              "than the stride), to reach sizes the stride skips (default 0).",
              {"oneOf": [integer(minimum=0), {"type": "array", "items": integer(minimum=0),
                                              "minItems": 1, "maxItems": 2}]}, default=0),
    )

    def geometry(self, in_shape: Shape):
        k, s, d = self.spatial(in_shape)
        extra = _tuple(self.cfg["output_padding"], self.rank, "output_padding")
        if any(e >= st for e, st in zip(extra, s)):  # onnxruntime refuses it, even < dilation
            raise ShapeError(f"output_padding {extra} must be smaller than the stride {s}")
        full = [(i - 1) * st + dd * (kk - 1) + 1 + e
                for i, kk, st, dd, e in zip(in_shape[1:], k, s, d, extra)]
        if self.cfg["padding"] == "same":
            total = [f - i * st for f, i, st in zip(full, in_shape[1:], s)]
            if min(total) < 0:
                raise ShapeError(f"padding same needs dilation * (kernel - 1) + 1 + "
                                 f"output_padding >= stride, got kernel {k}, stride {s}")
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            pads = _pads(self.cfg["padding"], in_shape[1:], k, s, d)
        _check_int64(k, s, d, pads, extra)
        out = [f - pads[j] - pads[self.rank + j] for j, f in enumerate(full)]
        if min(out) < 1:
            raise ShapeError(f"padding {pads} crops the whole output {full}")
        return k, s, d, pads, out

    def params(self, in_shape: Shape) -> list[Param]:
        k = self.geometry(in_shape)[0]
        groups, filters = self.cfg["groups"], self.cfg["filters"]
        shape = (in_shape[0], filters // groups, *k)
        fans = (shape[1] * math.prod(k), in_shape[0] // groups * math.prod(k))
        return self._weight_and_bias(shape, fans)

    def flops(self, in_shape: Shape) -> int:
        k = self.geometry(in_shape)[0]
        return 2 * numel(in_shape) * self.cfg["filters"] // self.cfg["groups"] * math.prod(k)

    def lower(self, b, x, p, ctx, in_shape):
        k, s, d, pads, _ = self.geometry(in_shape)
        extra = _tuple(self.cfg["output_padding"], self.rank, "output_padding")
        y = b.ConvTranspose(x, p[f"{self.name}.weight"], p.get(f"{self.name}.bias"),
                            kernel_shape=k, strides=s, dilations=d, pads=pads,
                            output_padding=extra, group=self.cfg["groups"])
        return activations.apply(b, y, self.cfg["activation"], self.cfg)


class MaxPool(_Windowed):
    schema_name = "pool"
    spec_doc = ("Max or average pooling over channels-first input (average excludes padding from "
                "the count).")
    type_doc = "Layer type: maxpool1d, maxpool2d, avgpool1d or avgpool2d."
    fields = (
        Field("pool", "Window size.", ref("ints"), required=True),
        Field("stride", "Stride (default: the window size).", ref("ints")),
        Field("padding", "valid (no padding) or same (output size = ceil(input / stride)).",
              enum("valid", "same"), default="valid"),
    )

    def window(self):
        """Pooling has no dilation; its stride defaults to the window."""
        return self.cfg["pool"], self.cfg.get("stride") or self.cfg["pool"], 1

    def output_shape(self, in_shape: Shape) -> Shape:
        return (in_shape[0], *self.geometry(in_shape)[4])

    def flops(self, in_shape: Shape) -> int:
        return math.prod(self.geometry(in_shape)[0]) * numel(self.output_shape(in_shape))

    def lower(self, b, x, p, ctx, in_shape):
        k, s, _, pads, _ = self.geometry(in_shape)
        if not ctx.training:
            return b.MaxPool(x, kernel_shape=k, strides=s, pads=pads)
        return b.MaxPool(x, kernel_shape=k, strides=s, pads=pads, outputs=2)[0]  # + Indices


class MaxPool1D(MaxPool):
    rank = 1


class AvgPool(MaxPool):
    def lower(self, b, x, p, ctx, in_shape):
        k, s, _, pads, _ = self.geometry(in_shape)
        return b.AveragePool(x, kernel_shape=k, strides=s, pads=pads, count_include_pad=0)


class AvgPool1D(AvgPool):
    rank = 1


class GlobalPool(Layer):
    """(C, spatial...) -> (C,): the mean or max over every spatial position."""
    schema_name = "global_pool"
    spec_doc = "Mean or maximum over every spatial position: (channels, ...) -> (channels,)."
    type_doc = "Layer type: global_avg_pool or global_max_pool."

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) < 2:
            raise ShapeError(f"{self.cfg['type']} takes (channels, spatial...), got "
                             f"{list(in_shape)}")
        return (in_shape[0],)

    def flops(self, in_shape: Shape) -> int:
        return numel(in_shape)

    def lower(self, b, x, p, ctx, in_shape):
        axes = b.const(list(range(2, len(in_shape) + 1)))
        if self.cfg["type"] == "global_max_pool":
            return b.ReduceMax(x, axes, keepdims=0)
        return b.ReduceMean(x, axes, keepdims=0)


class ZeroPadding(Layer):
    """Zeros around the spatial dims: padding p, [p per dim], or [begin..., end...]."""
    schema_name = "zero_padding"
    spec_doc = "Zeros around the spatial dimensions of channels-first input."
    type_doc = "Layer type: zero padding."
    fields = (
        Field("padding", "One integer (every side), one per spatial dimension (both sides), or "
              "begin... then end...",
              {"oneOf": [integer(minimum=0), {"type": "array", "items": integer(minimum=0),
                                              "minItems": 1, "maxItems": 6}]}, required=True),
    )

    def pads(self, in_shape: Shape) -> list[int]:
        rank = len(in_shape) - 1
        if rank < 1:
            raise ShapeError(f"zero_padding takes (channels, spatial...), got {list(in_shape)}")
        pad = self.cfg["padding"]
        return _pads([pad] * rank if isinstance(pad, int) else pad, in_shape[1:], [1] * rank,
                     [1] * rank, [1] * rank)

    def output_shape(self, in_shape: Shape) -> Shape:
        pads, rank = self.pads(in_shape), len(in_shape) - 1
        return (in_shape[0], *(n + pads[i] + pads[rank + i] for i, n in enumerate(in_shape[1:])))

    def lower(self, b, x, p, ctx, in_shape):
        pads, rank = self.pads(in_shape), len(in_shape) - 1
        full = [0, 0, *pads[:rank], 0, 0, *pads[rank:]]
        return b.Pad(x, b.const(full), mode="constant")
