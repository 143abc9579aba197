"""Self-attention layers over (steps, dim): multi_head_attention and transformer_encoder.

Parameters follow torch.nn.MultiheadAttention with weights stored [in, out] like dense layers:
`in_proj.weight` [D, 3 H K] = torch's in_proj_weight.T (query, key, value blocks in that order),
`out_proj.weight` [H K, D] = out_proj.weight.T. Scores are q k^T / sqrt(K); masked keys get
-1e9 added before the softmax (a causal mask, and the padding of int64 token inputs). The
encoder block composes attention, dense and layernorm lowerings exactly as
torch.nn.TransformerEncoderLayer (post-norm, or pre-norm with norm_first), dropout included.
"""

from __future__ import annotations

import math

from dlc.model.layers.base import Layer, Param, Shape, ShapeError
from dlc.model.layers.core import Dense, Dropout
from dlc.model.layers.fields import Field, boolean, enum, integer, number
from dlc.model.layers.init import initializer
from dlc.model.layers.norm import LayerNorm
from dlc.model.layers.sequence import PAD_ID, needs_sequence, positions, split, token_ids

MASKED = -1e9  # added to the score of a key that must not be attended to


def dropout(b, x: str, ctx, name: str, rate: float, shape: Shape) -> str:
    """The dropout layer's lowering (noise input `<name>.noise`, per-sample `shape`)."""
    return Dropout(name, {"type": "dropout", "rate": rate}).lower(b, x, {}, ctx, shape)


def _causal(b, steps: int) -> str:
    """[T, T]: MASKED where key j > query i, else 0 (built in the graph, no T x T constant)."""
    pos = positions(b, steps)
    later = b.Greater(b.Unsqueeze(pos, b.const([0])), b.Unsqueeze(pos, b.const([1])))
    return b.Mul(b.Cast(later, to=b.float_code), b.const(MASKED))


class MultiHeadAttention(Layer):
    """Self-attention: (steps, dim) -> (steps, dim), `heads` heads of size key_dim (default
    dim / heads), optional causal mask, padding mask on token inputs, attention dropout."""
    schema_name = "attention"
    spec_doc = ("Multi-head self-attention over (steps, dim) -> (steps, dim), with an output "
                "projection.")
    type_doc = "Layer type: multi-head self-attention."
    fields = (
        Field("heads", "Number of attention heads.", integer(minimum=1), required=True),
        Field("key_dim", "Size of each head's queries, keys and values (default dim / heads).",
              integer(minimum=1)),
        Field("causal", "Each step attends only to itself and earlier steps.",
              boolean(), default=False),
        Field("dropout", "Dropout rate on the attention weights while training.",
              number(minimum=0, exclusiveMaximum=1), default=0.0),
        Field("mask_padding",
              "On int64 token inputs: ignore padding positions (token id 0). No effect on float "
              "inputs.",
              boolean(), default=True),
    )

    def sizes(self, in_shape: Shape) -> tuple[int, int, int, int]:
        """(steps, dim, heads, key_dim)."""
        needs_sequence(self, in_shape)
        (steps, dim), heads = in_shape, self.cfg["heads"]
        key_dim = self.cfg.get("key_dim")
        if key_dim is None:
            if dim % heads:
                raise ShapeError(f"heads {heads} does not divide dim {dim}; set key_dim")
            key_dim = dim // heads
        return steps, dim, heads, key_dim

    def output_shape(self, in_shape: Shape) -> Shape:
        self.sizes(in_shape)
        return in_shape

    def params(self, in_shape: Shape) -> list[Param]:
        _, d, h, k = self.sizes(in_shape)
        n = self.name
        return [Param(f"{n}.in_proj.weight", (d, 3 * h * k), initializer("glorot_uniform",
                                                                         (d, h * k))),
                Param(f"{n}.in_proj.bias", (3 * h * k,), initializer("zeros")),
                Param(f"{n}.out_proj.weight", (h * k, d), initializer("glorot_uniform")),
                Param(f"{n}.out_proj.bias", (d,), initializer("zeros"))]

    def flops(self, in_shape: Shape) -> int:
        t, d, h, k = self.sizes(in_shape)
        return 2 * t * d * 4 * h * k + 4 * t * t * h * k + 5 * h * t * t

    def mask(self, b, ctx, steps: int) -> str | None:
        """The additive mask: [T, T] causal, [N, 1, 1, T] key padding, their sum, or None."""
        bias = _causal(b, steps) if self.cfg["causal"] else None
        ids = token_ids(b, ctx, self.cfg, steps)
        if ids is not None:
            pad = b.Cast(b.Equal(ids, b.const(PAD_ID)), to=b.float_code)
            pad = b.Unsqueeze(b.Mul(pad, b.const(MASKED)), b.const([1, 2]))
            bias = pad if bias is None else b.Add(bias, pad)
        return bias

    def lower(self, b, x, p, ctx, in_shape):
        t, _, h, k = self.sizes(in_shape)
        n = self.name
        qkv = b.Add(b.MatMul(x, p[f"{n}.in_proj.weight"]), p[f"{n}.in_proj.bias"])
        q, key, v = split(b, qkv, -1, 3)
        shape = b.const([-1, t, h, k])
        q = b.Transpose(b.Reshape(b.Mul(q, b.const(1.0 / math.sqrt(k))), shape), perm=[0, 2, 1, 3])
        key = b.Transpose(b.Reshape(key, shape), perm=[0, 2, 3, 1])  # [N, H, K, T]
        v = b.Transpose(b.Reshape(v, shape), perm=[0, 2, 1, 3])  # [N, H, T, K]
        scores = b.MatMul(q, key)  # [N, H, T, T]
        bias = self.mask(b, ctx, t)
        weights = b.Softmax(scores if bias is None else b.Add(scores, bias), axis=-1)
        rate = float(self.cfg["dropout"])
        if rate:
            weights = dropout(b, weights, ctx, f"{n}.attn", rate, (h, t, t))
        out = b.Transpose(b.MatMul(weights, v), perm=[0, 2, 1, 3])  # [N, T, H, K]
        out = b.Reshape(out, b.const([-1, t, h * k]))
        return b.Add(b.MatMul(out, p[f"{n}.out_proj.weight"]), p[f"{n}.out_proj.bias"])


class TransformerEncoder(Layer):
    """num_layers encoder blocks (torch.nn.TransformerEncoderLayer): self-attention and a
    feed-forward net (dense ff_dim, activation, dense dim), each with dropout and a residual add;
    layernorm after each residual (post-norm) or before each sublayer (norm_first)."""
    schema_name = "transformer_encoder"
    spec_doc = ("Transformer encoder blocks over (steps, dim) -> (steps, dim): self-attention and "
                "a feed-forward net, each with dropout, a residual add and layer normalisation (as"
                " torch.nn.TransformerEncoderLayer).")
    type_doc = "Layer type: a stack of transformer encoder blocks."
    fields = (
        Field("heads", "Number of attention heads.", integer(minimum=1), required=True),
        Field("ff_dim", "Hidden size of the feed-forward net.", integer(minimum=1), required=True),
        Field("key_dim", "Size of each attention head (default dim / heads).", integer(minimum=1)),
        Field("num_layers", "Number of blocks (each with its own parameters), at most 64.",
              integer(minimum=1, maximum=64), default=1),
        Field("dropout",
              "Dropout rate on the attention weights, after each sublayer and inside the feed-"
              "forward net.",
              number(minimum=0, exclusiveMaximum=1), default=0.1),
        Field("activation", "Activation of the feed-forward net: relu or gelu.",
              enum("relu", "gelu"), default="relu"),
        Field("norm_first",
              "false: layernorm after each residual add (post-norm); true: before each sublayer "
              "(pre-norm).",
              boolean(), default=False),
        Field("causal", "Each step attends only to itself and earlier steps.",
              boolean(), default=False),
        Field("epsilon", "Added to the variance in the layer normalisations.",
              number(exclusiveMinimum=0), default=1e-05),
        Field("mask_padding",
              "On int64 token inputs: ignore padding positions (token id 0). No effect on float "
              "inputs.",
              boolean(), default=True),
    )

    def parts(self, i: int, in_shape: Shape) -> dict[str, Layer]:
        """Block i's sublayers, named `<name>.<i>.<part>` (torch's names)."""
        cfg, pre = self.cfg, f"{self.name}.{i}"
        eps = {"epsilon": cfg["epsilon"]}
        return {
            "self_attn": MultiHeadAttention(f"{pre}.self_attn", {
                "type": "multi_head_attention", "heads": cfg["heads"],
                "key_dim": cfg.get("key_dim"), "causal": cfg["causal"],
                "dropout": cfg["dropout"], "mask_padding": cfg["mask_padding"]}),
            "linear1": Dense(f"{pre}.linear1", {"type": "dense", "units": cfg["ff_dim"],
                                                "activation": cfg["activation"]}),
            "linear2": Dense(f"{pre}.linear2", {"type": "dense", "units": in_shape[-1]}),
            "norm1": LayerNorm(f"{pre}.norm1", {"type": "layernorm", **eps}),
            "norm2": LayerNorm(f"{pre}.norm2", {"type": "layernorm", **eps}),
        }

    def output_shape(self, in_shape: Shape) -> Shape:
        needs_sequence(self, in_shape)
        return self.parts(0, in_shape)["self_attn"].output_shape(in_shape)

    def params(self, in_shape: Shape) -> list[Param]:
        out = []
        for i in range(self.cfg["num_layers"]):
            parts = self.parts(i, in_shape)
            hidden = parts["linear1"].output_shape(in_shape)
            for key, layer in parts.items():
                out += layer.params(hidden if key == "linear2" else in_shape)
        return out

    def flops(self, in_shape: Shape) -> int:
        parts = self.parts(0, in_shape)
        hidden = parts["linear1"].output_shape(in_shape)
        per = sum(layer.flops(hidden if key == "linear2" else in_shape)
                  for key, layer in parts.items())
        return self.cfg["num_layers"] * (per + 2 * in_shape[0] * in_shape[1])

    def lower(self, b, x, p, ctx, in_shape):
        for i in range(self.cfg["num_layers"]):
            with b.scope(str(i)):
                x = self._block(b, x, p, ctx, i, in_shape)
        return x

    def _drop(self, b, x, ctx, name: str, shape: Shape) -> str:
        rate = float(self.cfg["dropout"])
        return dropout(b, x, ctx, name, rate, shape) if rate else x

    def _block(self, b, x, p, ctx, i: int, shape: Shape) -> str:
        parts, pre = self.parts(i, shape), f"{self.name}.{i}"
        hidden = parts["linear1"].output_shape(shape)

        def attend(h):
            with b.scope("self_attn"):
                y = parts["self_attn"].lower(b, h, p, ctx, shape)
            return self._drop(b, y, ctx, f"{pre}.dropout1", shape)

        def feed_forward(h):
            with b.scope("ff"):
                y = parts["linear1"].lower(b, h, p, ctx, shape)
                y = self._drop(b, y, ctx, f"{pre}.dropout", hidden)
                y = parts["linear2"].lower(b, y, p, ctx, hidden)
            return self._drop(b, y, ctx, f"{pre}.dropout2", shape)

        def norm(key, h):
            with b.scope(key):
                return parts[key].lower(b, h, p, ctx, shape)

        if self.cfg["norm_first"]:
            x = b.Add(x, attend(norm("norm1", x)))
            return b.Add(x, feed_forward(norm("norm2", x)))
        x = norm("norm1", b.Add(x, attend(x)))
        return norm("norm2", b.Add(x, feed_forward(x)))
