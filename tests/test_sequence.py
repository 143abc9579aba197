"""Sequence layers end to end: one dlc train step (onnxruntime, fp32) against torch (float64)
from the same weights, for simple_rnn / lstm / gru (torch.nn.RNN / LSTM / GRU), multi-head
attention (torch.nn.MultiheadAttention, causal and key-padding masks), transformer_encoder
(torch.nn.TransformerEncoderLayer, and a composition of torch ops with dlc's dropout masks),
embedding, positional_encoding and sequence_pool; per-token classification; the inference model's
variable-length token input; and a Transformer that learns to reverse sequences.

dlc stores weights [in, out] (torch's weight.T). Gradients are read back from one SGD step with
a large power-of-two lr, as in test_train_step.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from oracles import F, needs_torch, torch
from stepio import assert_close, named, pack_feeds

from dlc.model import metrics as M
from dlc.model.compile import inference_model
from dlc.errors import SpecError
from dlc.model.network import build_network
from dlc.model.spec import load_spec_text
from dlc.train.step import build_train_step


LR = 1024.0
CE = {"kind": "classification", "loss": "cross_entropy"}
MSE = {"kind": "regression", "loss": "mse"}
N, T = 4, 5


# ---- dlc side -----------------------------------------------------------------------------------
def make_spec(layers, shape, dtype="float32", task=CE, optimizer=None):
    data = {"dlc": 1, "name": "seq", "input": {"shape": list(shape), "dtype": dtype},
            "layers": layers, "task": task,
            "train": {"optimizer": optimizer or {"type": "sgd", "lr": 0.1}}}
    return load_spec_text(json.dumps(data))


def dense(units, name="out", **kw):
    return {"type": "dense", "units": units, "name": name, **kw}


def tokens(shape=(N, 6), vocab=9, seed=1):
    """Token ids with padding (0) at the end of some rows, never a row of padding only."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=shape)
    for i, length in enumerate([shape[1], 3, 1, shape[1] - 1][:shape[0]]):
        ids[i, length:] = 0
    return ids


def step_of(layers, x, shape, dtype="float32", task=CE, y=None, seed=0):
    """(network, named outputs, noise, initial values, gradients) of one dlc train step."""
    net = build_network(make_spec(layers, shape, dtype, task))
    step = build_train_step(net)
    values = net.init_params(seed)
    rng = np.random.default_rng(2)
    y = rng.integers(0, net.output_shape[-1], size=(len(x), *net.output_shape[:-1])) \
        if y is None else y
    noise = {name: rng.random((len(x), *s)).astype(np.float32) for name, s in step.noise}
    feeds = {"x": x, "y": y, "lr": np.array(LR, np.float32), "step": np.array(1.0, np.float32),
             **pack_feeds(step, values), **noise}
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = named(step, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))
    grads = {k: (v.astype(np.float64) - out[f"{k}.new"].astype(np.float64)) / LR
             for k, v in values.items() if f"{k}.new" in out}
    return net, out, noise, values, grads, y




def check_step(out, grads, logits, loss, torch_grads: dict):
    """dlc's loss, logits and every parameter gradient against torch's (dlc layout)."""
    assert_close(out["loss"], loss, "loss")
    assert_close(out["logits"], logits, "logits")
    assert set(torch_grads) == set(grads)
    for k, g in torch_grads.items():
        assert float(np.abs(np.asarray(g)).max()) > 0, f"{k}: torch gradient is zero"
        assert_close(grads[k], g, f"d loss / d {k}")


# ---- torch side ---------------------------------------------------------------------------------
def tparams(values):
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}


def head(h, P, name="out"):
    return h.reshape(len(h), -1) @ P[f"{name}.weight"] + P[f"{name}.bias"]


def ce(logits, y, smoothing=0.0):
    c = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, c), torch.from_numpy(np.asarray(y).reshape(-1)),
                           label_smoothing=smoothing)


def load_module(mod, values, names: dict):
    """Copy dlc values into a float64 torch module; names: torch param -> dlc param (weights
    transposed). Returns a function giving the module's gradients by dlc name."""
    mod.double()
    params = dict(mod.named_parameters())
    with torch.no_grad():
        for tname, dname in names.items():
            v = torch.from_numpy(values[dname].astype(np.float64))
            params[tname].copy_(v.T if v.ndim == 2 else v)
    return lambda: {d: (params[t].grad.T if params[t].grad.ndim == 2 else params[t].grad).numpy()
                    for t, d in names.items()}


def mha_names(dlc: str, torch_prefix: str = "") -> dict:
    return {f"{torch_prefix}in_proj_weight": f"{dlc}.in_proj.weight",
            f"{torch_prefix}in_proj_bias": f"{dlc}.in_proj.bias",
            f"{torch_prefix}out_proj.weight": f"{dlc}.out_proj.weight",
            f"{torch_prefix}out_proj.bias": f"{dlc}.out_proj.bias"}


def causal_bool(t):
    return torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)


# ---- recurrent layers ---------------------------------------------------------------------------
RNN_KINDS = {"simple_rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}  # dlc type -> torch.nn class
RNN_CASES = [(kind, bi, seq) for kind in RNN_KINDS for bi in (False, True) for seq in (False, True)]


@pytest.mark.parametrize("kind,bidirectional,return_sequences", [
    *RNN_CASES, ("simple_rnn_relu", True, True)])
@needs_torch
def test_recurrent_matches_torch(kind, bidirectional, return_sequences):
    act = "relu" if kind.endswith("relu") else None
    kind = kind.removesuffix("_relu")
    cfg = {"type": kind, "name": "rnn", "units": 4, "bidirectional": bidirectional,
           "return_sequences": return_sequences, **({"activation": act} if act else {})}
    x = np.random.default_rng(0).standard_normal((N, T, 3)).astype(np.float32)
    layers = [cfg, *([{"type": "flatten"}] if return_sequences else []), dense(3)]
    net, out, _, values, grads, y = step_of(layers, x, (T, 3))

    extra = {"nonlinearity": act} if act else {}
    mod = getattr(torch.nn, RNN_KINDS[kind])(3, 4, batch_first=True, bidirectional=bidirectional, **extra)
    names = {t: "rnn." + t.replace("_l0", "") for t, _ in mod.named_parameters()}
    torch_grads = load_module(mod, values, names)
    P = tparams({"out.weight": values["out.weight"], "out.bias": values["out.bias"]})
    seq, state = mod(torch.from_numpy(x.astype(np.float64)))
    h_n = state[0] if kind == "lstm" else state  # [directions, N, units]
    h = seq if return_sequences else torch.cat(list(h_n), dim=-1)
    logits = head(h, P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {**torch_grads(), **{k: p.grad.numpy()
                                                               for k, p in P.items()}})


def test_unrolled_lstm_hoists_the_input_projection():
    """One MatMul projects every step's input; each later step adds one h W_hh MatMul."""
    net = build_network(make_spec([{"type": "lstm", "units": 4}, dense(3)], (7, 3)))
    model = inference_model(make_spec([{"type": "lstm", "units": 4}, dense(3)], (7, 3)), net,
                            net.init_params(0))
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 7  # 1 projection + 6 recurrent steps (h0 = 0 needs none)
    assert matmuls[0].input[0] == "input"


def test_stacked_lstm_train_step_differentiates_each_projection_as_one_gemm_per_use():
    """Issue 14: the input projections' backward is GEMM-shaped over all steps at once: one
    Gemm each for dW_ih ([N*T, in]^T x [N*T, 4H]); the second layer's input gradient is one Gemm
    too, and the first layer, whose input is data, gets no input gradient at all."""
    layers = [{"type": "lstm", "name": "l1", "units": 4, "return_sequences": True},
              {"type": "lstm", "name": "l2", "units": 4}, dense(3)]
    step = build_train_step(build_network(make_spec(layers, (7, 3))), None)
    gemms = {}
    for n in step.model.graph.node:
        if n.op_type == "Gemm" and "/MatMul.grad/" in n.name:
            gemms.setdefault(n.name.split("/")[0], []).append(n)
    assert {k: len(v) for k, v in gemms.items()} == {"l1": 1, "l2": 2}
    producer = {o: n.op_type for n in step.model.graph.node for o in n.output}
    (dw_ih,) = gemms["l1"]  # both operands: every step's rows, flattened
    assert [producer[i] for i in dw_ih.input] == ["Flatten", "Flatten"]


def test_unrolled_steps_add_no_reshapes_to_the_train_step():
    """The steps' inputs are slabs of one Split and the states are stacked by one Concat: the
    train step's Squeeze, Unsqueeze, Reshape and Shape nodes do not grow with the steps (each
    step had a Squeeze, a return_sequences step an Unsqueeze, and each their Reshape + Shape
    in the gradient)."""
    def reshapes(steps):
        layers = [{"type": "lstm", "name": "l1", "units": 4, "return_sequences": True},
                  {"type": "simple_rnn", "name": "l2", "units": 4, "bidirectional": True},
                  dense(3)]
        step = build_train_step(build_network(make_spec(layers, (steps, 3))), None)
        return [n.op_type for n in step.model.graph.node
                if n.op_type in ("Squeeze", "Unsqueeze", "Reshape", "Shape")]

    assert sorted(reshapes(T)) == sorted(reshapes(2 * T))


def test_onnxruntime_fuses_each_recurrent_step_into_one_gemm(tmp_path):
    """Each step after the first is one Gemm (h W_hh + its input slab) once onnxruntime has
    optimised the train step; a view of the projection that lost the batch axis's symbolic
    size (Reshape to -1) left a MatMul and an Add per step."""
    layers = [{"type": "lstm", "name": "l1", "units": 4}, dense(3)]
    step = build_train_step(build_network(make_spec(layers, (T, 3))), None)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(step.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    step_gemm = re.compile(r"l1/forward/t\d+/MatMul/MatMulAddFusion")
    fused = [n.name for n in onnx.load(opts.optimized_model_filepath).graph.node
             if n.op_type == "Gemm" and step_gemm.match(n.name)]
    assert len(fused) == T - 1, fused


# ---- multi-head attention -----------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("causal", [False, True])
def test_attention_on_float_sequences_matches_torch(causal):
    x = np.random.default_rng(0).standard_normal((N, T, 8)).astype(np.float32)
    layers = [{"type": "multi_head_attention", "name": "att", "heads": 2, "causal": causal},
              {"type": "flatten"}, dense(3)]
    net, out, _, values, grads, y = step_of(layers, x, (T, 8))
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    torch_grads = load_module(mha, values, mha_names("att"))
    P = tparams({k: values[k] for k in ("out.weight", "out.bias")})
    xt = torch.from_numpy(x.astype(np.float64))
    h, _ = mha(xt, xt, xt, attn_mask=causal_bool(T) if causal else None, need_weights=False)
    logits = head(h, P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {**torch_grads(), **{k: p.grad.numpy()
                                                               for k, p in P.items()}})


@needs_torch
@pytest.mark.parametrize("causal,mask_padding", [(False, True), (True, True), (False, False)])
def test_attention_on_tokens_masks_padding_like_torch(causal, mask_padding):
    ids = tokens()
    layers = [{"type": "embedding", "name": "emb", "vocab_size": 9, "dim": 8},
              {"type": "multi_head_attention", "name": "att", "heads": 2, "causal": causal,
               "mask_padding": mask_padding}, {"type": "flatten"}, dense(3)]
    net, out, _, values, grads, y = step_of(layers, ids, (6,), "int64")
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    torch_grads = load_module(mha, values, mha_names("att"))
    P = tparams({k: values[k] for k in ("emb.weight", "out.weight", "out.bias")})
    e = F.embedding(torch.from_numpy(ids), P["emb.weight"])
    pad = torch.from_numpy(ids == 0) if mask_padding else None
    h, _ = mha(e, e, e, key_padding_mask=pad, attn_mask=causal_bool(6) if causal else None,
               need_weights=False)
    logits = head(h, P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {**torch_grads(), **{k: p.grad.numpy()
                                                               for k, p in P.items()}})


def torch_mha(x, P, pre, heads, key_dim, causal=False, pad=None, keep=None, rate=0.0):
    """Self-attention from torch ops (dlc's layout, any key_dim; keep: the dropout mask)."""
    n, t, _ = x.shape
    q, k, v = (x @ P[f"{pre}.in_proj.weight"] + P[f"{pre}.in_proj.bias"]).chunk(3, dim=-1)
    q, k, v = (z.reshape(n, t, heads, key_dim).transpose(1, 2) for z in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(key_dim)
    if causal:
        s = s.masked_fill(causal_bool(t), -math.inf)
    if pad is not None:
        s = s.masked_fill(pad[:, None, None, :], -math.inf)
    w = s.softmax(-1)
    if keep is not None:
        w = w * keep / (1.0 - rate)
    o = (w @ v).transpose(1, 2).reshape(n, t, heads * key_dim)
    return o @ P[f"{pre}.out_proj.weight"] + P[f"{pre}.out_proj.bias"]


@needs_torch
def test_attention_key_dim_and_dropout_match_torch_ops():
    """key_dim != dim / heads (torch's module cannot) and attention-weight dropout, against a
    composition of torch ops fed dlc's noise."""
    x = np.random.default_rng(0).standard_normal((N, T, 6)).astype(np.float32)
    layers = [{"type": "multi_head_attention", "name": "att", "heads": 3, "key_dim": 4,
               "dropout": 0.3, "causal": True}, {"type": "flatten"}, dense(3)]
    net, out, noise, values, grads, y = step_of(layers, x, (T, 6))
    assert list(noise) == ["att.attn.noise"] and noise["att.attn.noise"].shape == (N, 3, T, T)
    P = tparams(values)
    keep = torch.from_numpy((noise["att.attn.noise"] >= np.float32(0.3)).astype(np.float64))
    h = torch_mha(torch.from_numpy(x.astype(np.float64)), P, "att", 3, 4, True, keep=keep,
                  rate=0.3)
    logits = head(h, P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {k: p.grad.numpy() for k, p in P.items()})


# ---- transformer encoder ------------------------------------------------------------------------
def sinusoids(t, d):
    """The position table of the torch tutorial (an independent formula)."""
    pe = torch.zeros(t, d, dtype=torch.float64)
    pos = torch.arange(t, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


def encoder_spec(dropout, norm_first, activation, pool="mean", layers=2):
    return [{"type": "embedding", "name": "emb", "vocab_size": 9, "dim": 8, "padding_index": 0},
            {"type": "positional_encoding"},
            {"type": "transformer_encoder", "name": "enc", "heads": 2, "ff_dim": 16,
             "dropout": dropout, "norm_first": norm_first, "activation": activation,
             "num_layers": layers},
            {"type": "sequence_pool", "mode": pool}, dense(3)]


def masked_mean(h, ids):
    keep = torch.from_numpy((ids != 0).astype(np.float64))[..., None]
    return (h * keep).sum(1) / keep.sum(1)


@needs_torch
@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_transformer_encoder_matches_torch_layers(norm_first, activation):
    ids = tokens()
    net, out, _, values, grads, y = step_of(encoder_spec(0.0, norm_first, activation), ids, (6,),
                                            "int64")
    P = tparams({k: values[k] for k in ("emb.weight", "out.weight", "out.bias")})
    h = F.embedding(torch.from_numpy(ids), P["emb.weight"], padding_idx=0) + sinusoids(6, 8)
    getters = []
    for i in range(2):
        block = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation,
                                                 batch_first=True, norm_first=norm_first)
        names = {**mha_names(f"enc.{i}.self_attn", "self_attn."),
                 **{f"{m}.{p}": f"enc.{i}.{m}.{p}" for m in ("linear1", "linear2")
                    for p in ("weight", "bias")},
                 **{f"{m}.{t}": f"enc.{i}.{m}.{d}" for m in ("norm1", "norm2")
                    for t, d in (("weight", "gamma"), ("bias", "beta"))}}
        getters.append(load_module(block, values, names))
        h = block(h, src_key_padding_mask=torch.from_numpy(ids == 0))
    logits = head(masked_mean(h, ids), P)
    loss = ce(logits, y)
    loss.backward()
    expected = {k: p.grad.numpy() for k, p in P.items()}
    for get in getters:
        expected.update(get())
    assert expected["emb.weight"][0].tolist() == [0.0] * 8  # torch: padding_idx gets none
    check_step(out, grads, logits, loss, expected)


def torch_encoder(h, P, noise, ids, rate, norm_first, activation, layers):
    """transformer_encoder from torch ops, dropout masks taken from dlc's noise inputs."""
    def drop(z, name):
        keep = torch.from_numpy((noise[f"{name}.noise"] >= np.float32(rate)).astype(np.float64))
        return z * keep / (1.0 - rate)

    def norm(z, name):
        return F.layer_norm(z, (8,), P[f"{name}.gamma"], P[f"{name}.beta"], eps=1e-5)

    act = F.gelu if activation == "gelu" else F.relu
    for i in range(layers):
        pre = f"enc.{i}"
        keep = torch.from_numpy((noise[f"{pre}.self_attn.attn.noise"] >= np.float32(rate))
                                .astype(np.float64))
        attend = lambda z: drop(torch_mha(z, P, f"{pre}.self_attn", 2, 4,  # noqa: E731
                                          pad=torch.from_numpy(ids == 0), keep=keep, rate=rate),
                                f"{pre}.dropout1")
        lin = lambda z, m: z @ P[f"{pre}.{m}.weight"] + P[f"{pre}.{m}.bias"]  # noqa: E731
        ff = lambda z: drop(lin(drop(act(lin(z, "linear1")), f"{pre}.dropout"),  # noqa: E731
                                "linear2"), f"{pre}.dropout2")
        if norm_first:
            h = h + attend(norm(h, f"{pre}.norm1"))
            h = h + ff(norm(h, f"{pre}.norm2"))
        else:
            h = norm(h + attend(h), f"{pre}.norm1")
            h = norm(h + ff(h), f"{pre}.norm2")
    return h


@needs_torch
@pytest.mark.parametrize("norm_first,activation", [(False, "gelu"), (True, "relu")])
def test_transformer_encoder_dropout_matches_torch_ops(norm_first, activation):
    ids = tokens()
    net, out, noise, values, grads, y = step_of(encoder_spec(0.2, norm_first, activation, "max"),
                                                ids, (6,), "int64")
    assert {name.rsplit(".", 2)[-2] for name in noise} == {"attn", "dropout1", "dropout",
                                                           "dropout2"} and len(noise) == 8
    P = tparams(values)
    h = F.embedding(torch.from_numpy(ids), P["emb.weight"], padding_idx=0) + sinusoids(6, 8)
    h = torch_encoder(h, P, noise, ids, 0.2, norm_first, activation, 2)
    pooled = h.masked_fill(torch.from_numpy(ids == 0)[..., None], -math.inf).amax(1)
    logits = head(pooled, P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {k: p.grad.numpy() for k, p in P.items()})


# ---- embedding, positions, pooling --------------------------------------------------------------
@needs_torch
def test_embedding_gradient_repeated_ids_and_padding_index():
    ids = np.array([[1, 1, 3, 0, 0, 0], [3, 3, 3, 2, 1, 0], [2, 1, 0, 0, 0, 0]])
    layers = [{"type": "embedding", "name": "emb", "vocab_size": 6, "dim": 4, "padding_index": 0},
              {"type": "flatten"}, dense(3)]
    net, out, _, values, grads, y = step_of(layers, ids, (6,), "int64")
    assert not values["emb.weight"][0].any() and values["emb.weight"][1:].all()
    emb = torch.nn.Embedding(6, 4, padding_idx=0)
    torch_grads = load_module(emb, {"w": values["emb.weight"].T}, {"weight": "w"})
    P = tparams({k: values[k] for k in ("out.weight", "out.bias")})
    logits = head(emb(torch.from_numpy(ids)), P)
    loss = ce(logits, y)
    loss.backward()
    g = grads["emb.weight"]
    assert not g[0].any() and not g[4:].any()  # padding row, rows never looked up: exactly 0
    assert_close(g, torch_grads()["w"].T, "d loss / d emb.weight")
    assert_close(out["logits"], logits, "logits")
    for k, p in P.items():
        assert_close(grads[k], p.grad.numpy(), f"d loss / d {k}")


@pytest.mark.parametrize("dim", [6, 7])
def test_sinusoidal_positions_are_the_standard_table(dim):
    """Computed in the graph (no steps x dim constant): x + PE, checked on x = 0 through an
    identity dense layer."""
    spec = make_spec([{"type": "positional_encoding"}, {"type": "flatten"},
                      dense(T * dim, initializer="zeros")], (T, dim), task=MSE)
    net = build_network(spec)
    values = net.init_params(0)
    values["out.weight"] = np.eye(T * dim, dtype=np.float32)
    model = inference_model(spec, net, values)
    assert [p.name for p in net.params] == ["out.weight", "out.bias"]
    assert all(math.prod(i.dims) < T * dim for i in model.graph.initializer
               if not i.name.startswith("out."))
    pe = run_model(model, np.zeros((1, T, dim), np.float32))["prediction"].reshape(T, dim)
    angle = np.arange(T)[:, None] / 10000.0 ** (2 * (np.arange(dim) // 2) / dim)  # odd dims too
    expected = np.where(np.arange(dim) % 2, np.cos(angle), np.sin(angle))
    np.testing.assert_allclose(pe, expected, atol=1e-6)


@needs_torch
def test_learned_positions_match_torch():
    x = np.zeros((2, T, 6), np.float32)
    learned = [{"type": "positional_encoding", "name": "pos", "kind": "learned"},
               {"type": "flatten"}, dense(3)]
    net, out, _, values, grads, y = step_of(learned, x, (T, 6))
    P = tparams(values)
    logits = head(torch.zeros(2, T, 6, dtype=torch.float64) + P["pos.embedding"], P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {k: p.grad.numpy() for k, p in P.items()})


def torch_pool(h, ids, mode, masked):
    pad = torch.from_numpy(ids == 0)[..., None] if masked else None
    if mode in ("first", "cls"):
        return h[:, 0]
    if mode == "mean":
        return masked_mean(h, ids) if masked else h.mean(1)
    if mode == "max":
        return (h.masked_fill(pad, -math.inf) if masked else h).amax(1)
    last = (torch.from_numpy((ids != 0).sum(1)) - 1) if masked else torch.full((len(h),), -1)
    return h[torch.arange(len(h)), last]


@pytest.mark.parametrize("mode,masked", [("mean", True), ("max", True), ("last", True),
                                         ("first", True), ("cls", True), ("mean", False),
                                         ("max", False), ("last", False)])
@needs_torch
def test_sequence_pool_on_tokens_matches_torch(mode, masked):
    ids = tokens()
    layers = [{"type": "embedding", "name": "emb", "vocab_size": 9, "dim": 5},
              {"type": "sequence_pool", "mode": mode, "mask_padding": masked}, dense(3)]
    net, out, _, values, grads, y = step_of(layers, ids, (6,), "int64")
    P = tparams(values)
    logits = head(torch_pool(F.embedding(torch.from_numpy(ids), P["emb.weight"]), ids, mode,
                             masked), P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {k: p.grad.numpy() for k, p in P.items()})


@needs_torch
@pytest.mark.parametrize("mode", ["mean", "max", "last", "first"])
def test_sequence_pool_on_floats_ignores_mask_padding(mode):
    """mask_padding has no effect on float inputs (zeros are not padding there)."""
    x = np.random.default_rng(0).standard_normal((N, T, 3)).astype(np.float32)
    x[:, 1:3] = 0.0
    layers = [{"type": "dense", "name": "d", "units": 4},
              {"type": "sequence_pool", "mode": mode}, dense(3)]
    net, out, _, values, grads, y = step_of(layers, x, (T, 3))
    P = tparams(values)
    h = torch.from_numpy(x.astype(np.float64)) @ P["d.weight"] + P["d.bias"]
    logits = head(torch_pool(h, np.ones((N, T), np.int64), mode, False), P)
    loss = ce(logits, y)
    loss.backward()
    check_step(out, grads, logits, loss, {k: p.grad.numpy() for k, p in P.items()})


# ---- per-token classification and the inference model -------------------------------------------
def per_token_spec(steps=6):
    return [{"type": "embedding", "name": "emb", "vocab_size": 9, "dim": 6},
            {"type": "gru", "name": "rnn", "units": 5, "return_sequences": True},
            dense(4)]


@needs_torch
def test_per_token_classification_loss_metrics_and_torch():
    ids = tokens()
    task = {**CE, "label_smoothing": 0.1}
    net, out, _, values, grads, y = step_of(per_token_spec(), ids, (6,), "int64", task)
    assert net.output_shape == (6, 4) and y.shape == (N, 6) and out["logits"].shape == (N, 6, 4)
    gru = torch.nn.GRU(6, 5, batch_first=True)
    torch_grads = load_module(gru, values, {t: "rnn." + t.replace("_l0", "")
                                            for t, _ in gru.named_parameters()})
    P = tparams({k: values[k] for k in ("emb.weight", "out.weight", "out.bias")})
    seq, _ = gru(F.embedding(torch.from_numpy(ids), P["emb.weight"]))
    logits = seq @ P["out.weight"] + P["out.bias"]
    loss = ce(logits, y, 0.1)
    loss.backward()
    check_step(out, grads, logits, loss, {**torch_grads(), **{k: p.grad.numpy()
                                                               for k, p in P.items()}})
    metrics = M.compute("classification", y, out["logits"])
    assert metrics["accuracy"] == (out["logits"].argmax(-1) == y).mean()


def test_per_token_output_needs_a_classification_task():
    with pytest.raises(SpecError, match="flat output"):
        build_network(make_spec(per_token_spec(), (6,), "int64",
                                {"kind": "regression", "loss": "mse"}))


def run_model(model, x):
    onnx.checker.check_model(model, full_check=True)  # what `dlc compile` runs
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


def test_inference_model_takes_any_token_length_up_to_the_declared_one():
    layers = encoder_spec(0.1, False, "gelu", "mean")
    spec = make_spec(layers, (6,), "int64")
    net = build_network(spec)
    model = inference_model(spec, net, net.init_params(0))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "T"]
    ids = tokens((3, 6))
    full = run_model(model, ids)
    short = run_model(model, ids[:, :4])  # == the same ids padded with 0 to length 6
    padded = np.where(np.arange(6) < 4, ids, 0)
    np.testing.assert_allclose(short["logits"], run_model(model, padded)["logits"], atol=1e-5)
    longer = run_model(model, np.concatenate([ids, ids], axis=1))  # cut to the first 6
    np.testing.assert_allclose(longer["logits"], full["logits"], atol=1e-6)


def test_inference_model_slices_per_token_outputs_back_to_the_input_length():
    spec = make_spec(per_token_spec(), (6,), "int64")
    net = build_network(spec)
    model = inference_model(spec, net, net.init_params(0))
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in model.graph.output}
    assert shapes == {"logits": ["N", "T", 4], "probabilities": ["N", "T", 4],
                      "class_index": ["N", "T"]}
    ids = tokens((2, 6))
    out = run_model(model, ids[:, :3])
    assert out["logits"].shape == (2, 3, 4) and out["class_index"].shape == (2, 3)
    np.testing.assert_allclose(out["logits"], run_model(model, ids)["logits"][:, :3], atol=1e-6)
    np.testing.assert_array_equal(out["class_index"], out["logits"].argmax(-1))


def test_float_sequence_inputs_keep_their_declared_shape():
    spec = make_spec([{"type": "lstm", "units": 3}, dense(2)], (T, 3))
    net = build_network(spec)
    model = inference_model(spec, net, net.init_params(0))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", T, 3]


# ---- spec checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("layers,shape,dtype,message", [
    ([{"type": "lstm", "units": 4, "activation": "relu"}, dense(2)], (T, 3), "float32",
     "activation applies to simple_rnn only"),
    ([{"type": "gru", "units": 4}, dense(2)], (T,), "float32", "add an embedding layer first"),
    ([{"type": "lstm", "units": 2}, dense(2)], (1001, 2), "float32",
     "lstm unrolls over at most 1000 steps, got 1001"),
    ([{"type": "dense", "units": 3}, {"type": "embedding", "vocab_size": 5, "dim": 2},
      {"type": "flatten"}, dense(2)], (T,), "float32",
     "embedding 'embedding_1' takes int64 ids, but 'dense_0' is not an int64 model input"),
    ([dense(2)], (T,), "int64", "input 'input' holds int64 ids; only an embedding layer can take "
                                "it, not dense"),
    ([{"type": "multi_head_attention", "heads": 3}, {"type": "flatten"}, dense(2)], (T, 8),
     "float32", "heads 3 does not divide dim 8; set key_dim"),
    ([{"type": "embedding", "vocab_size": 5, "dim": 4, "padding_index": 5}, {"type": "flatten"},
      dense(2)], (T,), "int64", "padding_index 5 is outside the vocabulary"),
    ([{"type": "sequence_pool"}, dense(2)], (8,), "float32", "takes (steps, features)"),
])
def test_shape_errors_name_the_problem(layers, shape, dtype, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        build_network(make_spec(layers, shape, dtype))


def test_schema_defaults_are_filled():
    spec = make_spec([{"type": "lstm", "units": 4}, {"type": "transformer_encoder", "heads": 2,
                                                     "ff_dim": 8}, {"type": "sequence_pool"},
                      dense(2)], (T, 4))
    lstm, enc, pool = spec.data["layers"][:3]
    assert lstm["return_sequences"] is False and lstm["bidirectional"] is False
    assert "activation" not in lstm
    assert (enc["num_layers"], enc["dropout"], enc["activation"], enc["norm_first"]) == \
        (1, 0.1, "relu", False)
    assert pool["mode"] == "mean" and pool["mask_padding"] is True


# ---- learning -----------------------------------------------------------------------------------
def test_transformer_learns_to_reverse_sequences():
    """Per-token classification: out[t] = in[T-1-t] over 9 tokens; >= 0.99 token accuracy on
    fresh sequences through the exported inference model."""
    steps, vocab = 8, 10
    spec = make_spec([{"type": "embedding", "vocab_size": vocab, "dim": 32},
                      {"type": "positional_encoding"},
                      {"type": "transformer_encoder", "heads": 4, "ff_dim": 64, "dropout": 0.0,
                       "norm_first": True},
                      {"type": "dense", "units": vocab}], (steps,), "int64",
                     optimizer={"type": "adam", "lr": 0.005})
    net = build_network(spec)
    step = build_train_step(net)
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feeds = pack_feeds(step, net.init_params(0))
    rng = np.random.default_rng(0)
    for i in range(300):
        x = rng.integers(1, vocab, size=(64, steps))
        out = dict(zip(names, sess.run(None, {**feeds, "x": x, "y": x[:, ::-1].copy(),
                                              "lr": np.array(0.005, np.float32),
                                              "step": np.array(i + 1, np.float32)})))
        feeds.update({k: out[f"{k}.new"] for k in feeds})
    model = inference_model(spec, net, step.unpack(feeds["params"]))
    x = rng.integers(1, vocab, size=(500, steps))
    logits = run_model(model, x)["logits"]
    assert M.compute("classification", x[:, ::-1], logits)["accuracy"] >= 0.99
