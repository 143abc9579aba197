"""Sequence layers over per-sample (steps, features) inputs: embedding, the recurrent layers
(simple_rnn, lstm, gru), positional_encoding and sequence_pool.

Recurrent layers are unrolled over the declared number of steps with standard ONNX ops, so dlc's
VJP table differentiates them like any other graph: the input projection x W_ih of every step is
one MatMul before the loop; each step then costs one h W_hh MatMul and a few elementwise ops.
Gate layouts and biases follow torch (LSTM: i, f, g, o; GRU: r, z, n with
n = tanh(W_in x + b_in + r * (W_hn h + b_hn))), with weights stored [in, out] like dense layers:
`weight_ih` = torch's weight_ih_l0.T, `weight_hh` = weight_hh_l0.T; `_reverse` for the backward
direction.

Token padding (id 0) comes from `ctx.source`, the model's int64 input. numpy is imported only when
a table or an initial value is made (`dlc validate` builds layers without it).
"""

from __future__ import annotations

import math

from dlc.model.layers import activations
from dlc.model.layers.base import Layer, Param, Shape, ShapeError, numel
from dlc.model.layers.fields import Field, boolean, enum, integer, ref
from dlc.model.layers.init import initializer

PAD_ID = 0  # the padding token id (dlc's text data pads with 0)
INT64 = 7  # onnx.TensorProto.INT64 (onnx is not imported by layer modules)
GATES = {"simple_rnn": 1, "gru": 3, "lstm": 4}
MAX_UNROLL = 1000  # steps a recurrent layer unrolls over (the graph grows with every step)


# ---- helpers shared with attention.py ----------------------------------------------------------
def split(b, x: str, axis: int, parts: int, sizes: list[int] | None = None) -> list[str]:
    """x split into `parts` pieces along `axis` (equal unless `sizes`), always as a list."""
    if parts == 1:
        return [x]
    if sizes:
        return b.Split(x, b.const(sizes), axis=axis, outputs=parts)
    return b.Split(x, axis=axis, num_outputs=parts, outputs=parts)


def _source_steps(b, name: str) -> tuple[int | None, int | None]:
    """(element type, per-sample length) of the graph input that `name` derives from, following
    the first input of the ops that produced it. A Reshape to a constant [-1, T] fixes the length
    (the inference model pads variable-length ids to the declared length that way, and so does
    the text front, whose LabelEncoder makes int64 ids of raw strings: dlc.model.text_front)."""
    producers = {o: node for node in b.nodes for o in node.output}
    steps = None
    while name in producers:
        node = producers[name]
        shape = b.consts.get(node.input[1]) if node.op_type == "Reshape" else None
        if steps is None and shape is not None and len(shape) == 2:
            steps = int(shape[1])
        if node.op_type == "LabelEncoder":
            return INT64, steps
        name = node.input[0]
    vi = next((i for i in b.inputs if i.name == name), None)
    if vi is None:
        return None, None
    dims = vi.type.tensor_type.shape.dim
    if steps is None and len(dims) == 2 and dims[1].HasField("dim_value"):
        steps = dims[1].dim_value
    return vi.type.tensor_type.elem_type, steps if len(dims) == 2 else None


def token_ids(b, ctx, cfg: dict, steps: int) -> str | None:
    """The model's int64 token ids [N, steps] when padding should be masked (`mask_padding`, on by
    default) and the layer's steps are the tokens' positions; None otherwise."""
    if not cfg["mask_padding"] or not ctx.source:
        return None
    dtype, length = _source_steps(b, ctx.source)
    return ctx.source if dtype == INT64 and length == steps else None


def keep_mask(b, ids: str) -> str:
    """1.0 at real tokens, 0.0 at padding: float [N, T]."""
    return b.Cast(b.Not(b.Equal(ids, b.const(PAD_ID))), to=b.float_code)


def needs_sequence(layer: Layer, in_shape: Shape) -> None:
    if len(in_shape) != 2:
        hint = " (for token ids, add an embedding layer first)" if len(in_shape) == 1 else ""
        raise ShapeError(f"{layer.cfg['type']} takes (steps, features), got shape "
                         f"{list(in_shape)}{hint}")


# ---- embedding --------------------------------------------------------------------------------
def _embedding_init(padding_index):
    def init(rng, shape):
        import numpy as np

        w = rng.standard_normal(shape).astype(np.float32)  # N(0, 1), as torch.nn.Embedding
        if padding_index is not None:
            w[padding_index] = 0.0
        return w
    return init


class Embedding(Layer):
    """int64 token ids (steps,) -> (steps, dim) by a table lookup (Gather). With padding_index,
    that row starts at zero, its positions output zero and it never gets a gradient."""
    schema_name = "embedding"
    spec_doc = "Token embedding: int64 ids (steps,) -> (steps, dim), one learned vector per id."
    type_doc = "Layer type: a lookup table of learned vectors."
    fields = (
        Field("vocab_size",
              "Number of ids (rows of the table); inputs must lie in [0, vocab_size). Over "
              "categorical input columns (encoding: embedding) it may be left out: the number "
              "of ids learnt from the training split.",
              integer(minimum=1)),
        Field("dim", "Size of each vector (the output's last axis).",
              integer(minimum=1), required=True),
        Field("padding_index",
              "Optional id of the padding token (dlc's text data uses 0): its row starts at zero,"
              " outputs zero and is never trained.",
              integer(minimum=0)),
    )

    takes_ids = True  # its input must be an int64 model input (checked by build_network)

    @property
    def vocab(self) -> int:
        """vocab_size; 1 until training learns it from categorical input columns (a spec
        without it is refused elsewhere: semantics.check_columns)."""
        return self.cfg.get("vocab_size") or 1

    def output_shape(self, in_shape: Shape) -> Shape:
        pad, vocab = self.cfg.get("padding_index"), self.vocab
        if pad is not None and not 0 <= pad < vocab:
            raise ShapeError(f"padding_index {pad} is outside the vocabulary [0, {vocab})")
        return (*in_shape, self.cfg["dim"])

    def params(self, in_shape: Shape) -> list[Param]:
        shape = (self.vocab, self.cfg["dim"])
        return [Param(f"{self.name}.weight", shape, _embedding_init(self.cfg.get("padding_index")))]

    def lower(self, b, x, p, ctx, in_shape):
        y = b.Gather(p[f"{self.name}.weight"], x, axis=0)
        pad = self.cfg.get("padding_index")
        if pad is None:
            return y
        keep = b.Cast(b.Not(b.Equal(x, b.const(pad))), to=b.float_code)
        return b.Mul(y, b.Unsqueeze(keep, b.const([-1])))


# ---- recurrent layers -------------------------------------------------------------------------
def _orthogonal(gates: int):
    """Recurrent kernel [H, G*H]: an orthogonal H x H block per gate (Keras' default)."""
    def init(rng, shape):
        import numpy as np

        blocks = []
        for _ in range(gates):
            q, r = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))
            blocks.append(q * np.sign(np.diag(r)))
        return np.concatenate(blocks, axis=1).astype(np.float32)
    return init


def _gate_bias(gates: int, forget: bool):
    """Zeros; an LSTM's input-side forget-gate bias starts at 1 (Keras' unit_forget_bias)."""
    def init(rng, shape):
        import numpy as np

        bias = np.zeros(shape, np.float32)
        if forget:
            h = shape[0] // gates
            bias[h:2 * h] = 1.0
        return bias
    return init


class Recurrent(Layer):
    """simple_rnn, lstm, gru over (steps, features): (units,) from the last step, or
    (steps, units) with return_sequences; bidirectional concatenates both directions (the
    final states, or the per-step outputs aligned by position, forward first)."""
    schema_name = "recurrent"
    spec_doc = ("Recurrent layer over (steps, features), unrolled over the steps: simple_rnn, lstm"
                " or gru (torch's gate layouts).")
    type_doc = "Layer type: simple_rnn, lstm or gru."
    fields = (
        Field("units", "Size of the hidden state (per direction).",
              integer(minimum=1), required=True),
        Field("return_sequences",
              "false: the final state, shape (units,); true: every step's output, shape (steps, "
              "units).",
              boolean(), default=False),
        Field("bidirectional",
              "Also run backwards over the steps and concatenate both directions (2 * units).",
              boolean(), default=False),
        Field("activation", "simple_rnn only: the activation of the new state (default tanh).",
              ref("activationName")),
    )

    @property
    def gates(self) -> int:
        return GATES[self.cfg["type"]]

    def directions(self) -> list[str]:
        return ["", "_reverse"] if self.cfg["bidirectional"] else [""]

    def output_shape(self, in_shape: Shape) -> Shape:
        needs_sequence(self, in_shape)
        if in_shape[0] > MAX_UNROLL:
            raise ShapeError(f"{self.cfg['type']} unrolls over at most {MAX_UNROLL} steps, got "
                             f"{in_shape[0]}; use shorter sequences, or attention")
        if "activation" in self.cfg and self.cfg["type"] != "simple_rnn":
            raise ShapeError("activation applies to simple_rnn only; lstm and gru use sigmoid "
                             "gates and tanh")
        units = self.cfg["units"] * len(self.directions())
        return (in_shape[0], units) if self.cfg["return_sequences"] else (units,)

    def params(self, in_shape: Shape) -> list[Param]:
        f, h, g, n = in_shape[-1], self.cfg["units"], self.gates, self.name
        out = []
        for d in self.directions():
            out += [Param(f"{n}.weight_ih{d}", (f, g * h), initializer("glorot_uniform", (f, h))),
                    Param(f"{n}.weight_hh{d}", (h, g * h), _orthogonal(g)),
                    Param(f"{n}.bias_ih{d}", (g * h,), _gate_bias(g, g == 4)),
                    Param(f"{n}.bias_hh{d}", (g * h,), initializer("zeros"))]
        return out

    def flops(self, in_shape: Shape) -> int:
        (t, f), h, g = in_shape, self.cfg["units"], self.gates
        return len(self.directions()) * t * (2 * (f + h) * g * h + 4 * g * h)

    def lower(self, b, x, p, ctx, in_shape):
        outs = []
        for d in self.directions():
            with b.scope("reverse" if d else "forward"):
                outs.append(self._direction(b, x, lambda k, d=d: p[f"{self.name}.{k}{d}"],
                                            in_shape[0], reverse=bool(d)))
        return outs[0] if len(outs) == 1 else b.Concat(*outs, axis=-1)

    def _direction(self, b, x, w, steps: int, reverse: bool) -> str:
        """One direction, unrolled: the hoisted projection, then one cell per step. The
        projection, viewed as [N, T*G*H], is cut into the steps' [N, G*H] slabs by one Split, and
        return_sequences stacks the states by one Concat viewed as [N, T, H]: no Squeeze or
        Unsqueeze per step, nor their Reshape and Shape in the gradient: 567 of the 5,828 nodes
        of the suite LSTM's train step, which training (no memory-reuse planning for large
        graphs) paid for: 2.5% of its speed at 1 thread, 4-6% at 2, and 19 MB of peak RSS
        (bench/suite.py). The views reshape to 0, keeping the batch axis's symbolic size:
        onnxruntime fuses a step's MatMul and Add into one Gemm only when both operands have
        it."""
        units = self.cfg["units"]
        bias = w("bias_ih")
        if self.gates != 3:  # GRU keeps b_hh inside r * (W_hn h + b_hn); others fold it in
            bias = b.Add(bias, w("bias_hh"))
        xw = b.Add(b.MatMul(x, w("weight_ih")), bias)  # [N, T, G*H], every step at once
        xs = split(b, b.Reshape(xw, b.const([0, steps * self.gates * units])), 1, steps)
        h, c, hs = None, None, [None] * steps
        for t in (reversed(range(steps)) if reverse else range(steps)):
            with b.scope(f"t{t}"):
                h, c = self._cell(b, xs[t], h, c, w)
            hs[t] = h
        if not self.cfg["return_sequences"]:
            return h  # the final state: step T-1 forward, step 0 backward
        return b.Reshape(b.Concat(*hs, axis=1), b.const([0, steps, units]))

    def _cell(self, b, xt, h, c, w):
        """One step from the projected input xt [N, G*H] and the state (None at the start)."""
        kind = self.cfg["type"]
        if kind == "lstm":
            gates = xt if h is None else b.Add(xt, b.MatMul(h, w("weight_hh")))
            i, f, g, o = split(b, gates, -1, 4)
            i, f, o, g = b.Sigmoid(i), b.Sigmoid(f), b.Sigmoid(o), b.Tanh(g)
            c = b.Mul(i, g) if c is None else b.Add(b.Mul(f, c), b.Mul(i, g))
            return b.Mul(o, b.Tanh(c)), c
        if kind == "gru":
            return self._gru(b, xt, h, w), None
        pre = xt if h is None else b.Add(xt, b.MatMul(h, w("weight_hh")))
        return activations.apply(b, pre, self.cfg.get("activation", "tanh")), None

    def _gru(self, b, xt, h, w):
        units = self.cfg["units"]
        hw = w("bias_hh") if h is None else b.Add(b.MatMul(h, w("weight_hh")), w("bias_hh"))
        x_rz, x_n = split(b, xt, -1, 2, [2 * units, units])
        h_rz, h_n = split(b, hw, -1, 2, [2 * units, units])
        r, z = split(b, b.Sigmoid(b.Add(x_rz, h_rz)), -1, 2)
        n = b.Tanh(b.Add(x_n, b.Mul(r, h_n)))
        if h is None:  # h0 = 0: h = (1 - z) n
            return b.Sub(n, b.Mul(z, n))
        return b.Add(n, b.Mul(z, b.Sub(h, n)))  # (1 - z) n + z h


# ---- positional encoding ----------------------------------------------------------------------
def positions(b, steps: int) -> str:
    """int64 [0, 1, ..., steps - 1], computed in the graph (no steps-sized constant)."""
    return b.Range(b.const(0), b.const(steps), b.const(1))


def sinusoids(b, steps: int, dim: int) -> str:
    """PE[t, 2i] = sin(t / 10000^(2i/dim)), PE[t, 2i+1] = cos(t / 10000^(2i/dim)), computed in
    the graph from the positions (the model holds no steps x dim table)."""
    import numpy as np

    half = (dim + 1) // 2
    freq = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
    pos = b.Cast(positions(b, steps), to=b.float_code)
    angle = b.Mul(b.Unsqueeze(pos, b.const([1])), b.const(freq))  # [T, half]
    pairs = b.Concat(b.Unsqueeze(b.Sin(angle), b.const([2])),
                     b.Unsqueeze(b.Cos(angle), b.const([2])), axis=2)  # [T, half, (sin, cos)]
    table = b.Reshape(pairs, b.const([steps, 2 * half]))
    return table if dim % 2 == 0 else b.Slice(table, b.const([0]), b.const([dim]), b.const([1]))


def _small_normal(rng, shape):
    import numpy as np

    return (rng.standard_normal(shape) * 0.02).astype(np.float32)


class PositionalEncoding(Layer):
    """(steps, dim) + a position table: fixed sinusoids, or learned (one vector per position)."""
    schema_name = "positional_encoding"
    spec_doc = ("Adds a position signal to (steps, dim): fixed sinusoids or a learned vector per "
                "position.")
    type_doc = "Layer type: positional encoding."
    fields = (
        Field("kind", "sinusoidal (fixed, no parameters) or learned (a (steps, dim) parameter).",
              enum("sinusoidal", "learned"), default="sinusoidal"),
    )

    def output_shape(self, in_shape: Shape) -> Shape:
        needs_sequence(self, in_shape)
        return in_shape

    def params(self, in_shape: Shape) -> list[Param]:
        if self.cfg["kind"] != "learned":
            return []
        return [Param(f"{self.name}.embedding", tuple(in_shape), _small_normal)]

    def flops(self, in_shape: Shape) -> int:
        return numel(in_shape)

    def lower(self, b, x, p, ctx, in_shape):
        if self.cfg["kind"] == "learned":
            return b.Add(x, p[f"{self.name}.embedding"])
        with b.scope("sinusoids"):
            return b.Add(x, sinusoids(b, *in_shape))


# ---- pooling over time ------------------------------------------------------------------------
class SequencePool(Layer):
    """(steps, features) -> (features,): mean, max, last or first (cls) over the steps. On token
    inputs (mask_padding), mean and max skip padding and last is the last real token (padding
    at the end, as dlc's text data writes it)."""
    schema_name = "sequence_pool"
    spec_doc = "Pools (steps, features) -> (features,) over the steps."
    type_doc = "Layer type: pooling over the steps."
    fields = (
        Field("mode",
              "mean, max, last (the last real token on token inputs), or first (cls: the same).",
              enum("mean", "max", "last", "first", "cls"), default="mean"),
        Field("mask_padding",
              "On int64 token inputs: mean and max skip padding (token id 0) and last takes the "
              "last real token. No effect on float inputs.",
              boolean(), default=True),
    )

    def output_shape(self, in_shape: Shape) -> Shape:
        needs_sequence(self, in_shape)
        return in_shape[1:]

    def flops(self, in_shape: Shape) -> int:
        return numel(in_shape)

    def lower(self, b, x, p, ctx, in_shape):
        mode, steps = self.cfg["mode"], in_shape[0]
        ids = token_ids(b, ctx, self.cfg, steps)
        if mode in ("first", "cls"):
            return b.Gather(x, b.const(0), axis=1)
        if ids is None:
            if mode == "last":
                return b.Gather(x, b.const(steps - 1), axis=1)
            reduce = b.ReduceMax if mode == "max" else b.ReduceMean
            return reduce(x, b.const([1]), keepdims=0)
        if mode == "max":
            real = b.Unsqueeze(b.Not(b.Equal(ids, b.const(PAD_ID))), b.const([2]))
            return b.ReduceMax(b.Where(real, x, b.const(-1e9)), b.const([1]), keepdims=0)
        keep = keep_mask(b, ids)
        count = b.ReduceSum(keep, b.const([1]), keepdims=1)  # [N, 1]
        if mode == "last":
            last = b.Max(b.Sub(b.Cast(b.Squeeze(count, b.const([1])), to=INT64), b.const(1)),
                         b.const(0))
            keep = b.OneHot(last, b.const(steps), b.const([0.0, 1.0]), axis=-1)
        total = b.ReduceSum(b.Mul(x, b.Unsqueeze(keep, b.const([2]))), b.const([1]), keepdims=0)
        return total if mode == "last" else b.Div(total, b.Max(count, b.const(1.0)))
