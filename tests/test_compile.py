"""Compile: every example spec gives a checked, deterministic ONNX model whose outputs match a
plain numpy forward pass of the same weights."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SPECS
from onnx import numpy_helper

from dlc.model.compile import compile_spec
from dlc.graph import IR_VERSION, OPSET
from dlc.model.spec import load_spec, load_spec_text

EXAMPLES = sorted(SPECS.glob("*.yaml"))

NUMPY_ACT = {
    "linear": lambda x, c: x,
    "relu": lambda x, c: np.maximum(x, 0),
    "leaky_relu": lambda x, c: np.where(x > 0, x, c.get("alpha", 0.01) * x),
    "elu": lambda x, c: np.where(x > 0, x, c.get("alpha", 1.0) * np.expm1(x)),
    "selu": lambda x, c: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "gelu": lambda x, c: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "silu": lambda x, c: x / (1 + np.exp(-x)),
    "sigmoid": lambda x, c: 1 / (1 + np.exp(-x)),
    "tanh": lambda x, c: np.tanh(x),
    "softmax": lambda x, c: np.exp(x - x.max(-1, keepdims=True))
    / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
    "softplus": lambda x, c: np.logaddexp(x, 0),
}


def _ints(value, rank: int) -> list[int]:
    return [value] * rank if isinstance(value, int) else list(value)


def window_pads(padding, size, k, s, d) -> list[int]:
    """[begin..., end...] zero padding of valid / same (TensorFlow's split: the extra one at the
    end) / explicit (per dim, or begin... end...) padding."""
    rank = len(size)
    if padding == "valid":
        return [0] * 2 * rank
    if padding == "same":
        total = [max((-(-n // st) - 1) * st + dd * (kk - 1) + 1 - n, 0)
                 for n, kk, st, dd in zip(size, k, s, d)]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    return list(padding) * 2 if len(padding) == rank else list(padding)


def _windows(h, k, s, d, pads, fill=0.0):
    """[N, C, out..., k...]: every (dilated, strided) window of the padded input."""
    r = len(k)
    h = np.pad(h, [(0, 0), (0, 0), *[(pads[i], pads[r + i]) for i in range(r)]],
               constant_values=fill)
    span = [dd * (kk - 1) + 1 for kk, dd in zip(k, d)]
    win = np.lib.stride_tricks.sliding_window_view(h, span, axis=tuple(range(2, 2 + r)))
    return win[(slice(None), slice(None), *[slice(None, None, st) for st in s],
                *[slice(None, None, dd) for dd in d])]


def numpy_conv(h, w, bias, k, s, d, pads, groups):
    r, f = len(k), w.shape[0]
    win, cg, fg = _windows(h, k, s, d, pads), h.shape[1] // groups, f // groups
    taps = ([1, *range(2 + r, 2 + 2 * r)], [1, *range(2, 2 + r)])  # (channel, kernel) axes
    out = np.concatenate([np.moveaxis(np.tensordot(win[:, g * cg:(g + 1) * cg],
                                                   w[g * fg:(g + 1) * fg], taps), -1, 1)
                          for g in range(groups)], axis=1)  # [N, F, out...]
    return out + (0 if bias is None else bias.reshape(1, f, *[1] * r))


def numpy_pool(cfg, h):
    r = h.ndim - 2
    k = _ints(cfg["pool"], r)
    s = _ints(cfg.get("stride") or k, r)
    pads = window_pads(cfg.get("padding", "valid"), h.shape[2:], k, s, [1] * r)
    axes = tuple(range(-r, 0))
    if cfg["type"].startswith("max"):
        return _windows(h, k, s, [1] * r, pads, fill=-np.inf).max(axes)
    counts = _windows(np.ones_like(h), k, s, [1] * r, pads).sum(axes)  # padding not counted
    return _windows(h, k, s, [1] * r, pads).sum(axes) / counts


def numpy_layer(cfg, weights: dict, h: np.ndarray) -> np.ndarray:
    """The convolutional and normalisation layers (inference mode)."""
    t, name = cfg["type"], cfg.get("name")
    if t in ("conv1d", "conv2d"):
        r = h.ndim - 2
        w = weights[f"{name}.weight"]
        k, s, d = _ints(cfg["kernel"], r), _ints(cfg.get("stride", 1), r), _ints(
            cfg.get("dilation", 1), r)
        pads = window_pads(cfg.get("padding", "valid"), h.shape[2:], k, s, d)
        h = numpy_conv(h, w, weights.get(f"{name}.bias"), k, s, d, pads, cfg.get("groups", 1))
        return NUMPY_ACT[cfg.get("activation", "linear")](h, cfg)
    if t in ("maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d"):
        return numpy_pool(cfg, h)
    if t in ("global_avg_pool", "global_max_pool"):
        axes = tuple(range(2, h.ndim))
        return h.max(axes) if t == "global_max_pool" else h.mean(axes)
    if t == "zero_padding":
        r = h.ndim - 2
        pad = cfg["padding"]
        pads = window_pads([pad] * r if isinstance(pad, int) else pad, h.shape[2:], [1] * r,
                           [1] * r, [1] * r)
        return np.pad(h, [(0, 0), (0, 0), *[(pads[i], pads[r + i]) for i in range(r)]])
    if t == "batchnorm":
        shape = (1, -1, *[1] * (h.ndim - 2))
        mean, var, gamma, beta = (weights[f"{name}.{k}"].reshape(shape) for k in
                                  ("running_mean", "running_var", "gamma", "beta"))
        return (h - mean) / np.sqrt(var + cfg.get("epsilon", 1e-5)) * gamma + beta
    if t == "layernorm":
        mean = h.mean(-1, keepdims=True)
        xhat = (h - mean) / np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True)
                                    + cfg.get("epsilon", 1e-5))
        return xhat * weights[f"{name}.gamma"] + weights[f"{name}.beta"]
    raise AssertionError(f"numpy_forward has no oracle for layer type {t}")


def numpy_forward(spec, weights: dict, x: np.ndarray) -> np.ndarray:
    """The last layer's output of `numpy_values`."""
    return numpy_values(spec, weights, x)[spec.data["layers"][-1]["name"]]


def numpy_values(spec, weights: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """The spec's layers in float64 numpy: an independent oracle for the lowering, every layer's
    output by name. Layers run in spec order (the example specs name only earlier layers in
    `inputs`)."""
    xs = x if isinstance(x, dict) else {"input": x}
    values = {k: v if v.dtype == np.int64 else v.astype(np.float64) for k, v in xs.items()}
    weights = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    prev = next(iter(values))
    for cfg in spec.data["layers"]:
        t = cfg["type"]
        srcs = [values[n] for n in cfg.get("inputs", [prev])]
        h = srcs[0]
        if t in ("add", "multiply", "average", "concat"):
            h = {"add": lambda: sum(srcs), "multiply": lambda: np.prod(srcs, axis=0),
                 "average": lambda: sum(srcs) / len(srcs),
                 "concat": lambda: np.concatenate(srcs, axis=cfg["axis"] % (h.ndim - 1) + 1)}[t]()
        elif t == "embedding":
            h = weights[f"{cfg['name']}.weight"][h]
        elif t == "dense":
            h = h @ weights[f"{cfg['name']}.weight"] + weights.get(f"{cfg['name']}.bias", 0)
            h = NUMPY_ACT[cfg["activation"]](h, cfg)
        elif t == "flatten":
            h = h.reshape(len(h), -1)
        elif t == "reshape":
            h = h.reshape(len(h), *cfg["shape"])
        elif t == "dropout":
            pass
        elif t in NUMPY_ACT:
            h = NUMPY_ACT[t](h, cfg)
        else:
            h = numpy_layer(cfg, weights, h)
        values[cfg["name"]] = h
        prev = cfg["name"]
    return values


def run(model: onnx.ModelProto, x) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in x.items()} \
        if isinstance(x, dict) else {"input": x}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


# Recurrent and attention layers are checked against torch in tests/test_sequence.py.
NUMPY_ORACLE_SKIPS = {"lstm", "gru", "simple_rnn", "multi_head_attention", "transformer_encoder",
                      "positional_encoding", "sequence_pool"}


def random_inputs(spec, n: int = 7) -> dict:
    from dlc.model.names import spec_inputs

    rng, xs = np.random.default_rng(0), {}
    if (spec.data.get("data") or {}).get("text"):  # a text model takes the raw strings
        words = np.array(["a", "cat,", "Dog", "", "ÉTÉ"], object)
        return {"input": np.array([" ".join(rng.choice(words, size=k)) for k in range(n)],
                                  object)}
    for name, cfg in spec_inputs(spec.data).items():
        shape = (n, *cfg["shape"])
        xs[name] = (rng.integers(0, 3, size=shape) if cfg.get("dtype") == "int64"
                    else rng.standard_normal(shape))
    return xs


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_compiles_and_matches_numpy(path):
    spec = load_spec(path)
    model = compile_spec(spec)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION and model.opset_import[0].version == OPSET
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    xs = random_inputs(spec)
    out = run(model, xs)
    types = {cfg["type"] for cfg in spec.data["layers"]}
    if types & NUMPY_ORACLE_SKIPS:
        assert all(np.isfinite(v).all() for v in out.values() if v.dtype != np.int64)
        return
    x = xs if len(xs) > 1 or "input" not in xs else xs["input"]
    base = spec.data.get("base")
    if base:  # the head reads the base file's cut tensor, run by onnxruntime on the base itself
        sess = ort.InferenceSession(base["model"], providers=["CPUExecutionProvider"])
        feeds = {sess.get_inputs()[0].name: x.astype(np.float32)}
        x = {"base": sess.run([base["cut"]], feeds)[0]}
    values = numpy_values(spec, weights, x)
    heads = spec.data.get("outputs") or {"": {**spec.data["task"],
                                              "layer": spec.data["layers"][-1]["name"]}}
    for head, task in heads.items():
        expected, kind = values[task["layer"]], task["kind"]
        name = lambda n: f"{head}.{n}" if head else n  # noqa: E731
        if kind == "regression":
            np.testing.assert_allclose(out[name("prediction")], expected, rtol=1e-5, atol=1e-5)
            continue
        np.testing.assert_allclose(out[name("logits")], expected, rtol=1e-5, atol=1e-5)
        probs = NUMPY_ACT["softmax" if kind == "classification" else "sigmoid"](expected, {})
        np.testing.assert_allclose(out[name("probabilities")], probs, rtol=1e-5, atol=1e-6)
        assert (out[name("class_index")] == (probs.argmax(1) if kind == "classification"
                                             else (probs[:, 0] > 0.5))).all()


ALL_ACTIVATIONS = """\
dlc: 1
name: acts
input: {shape: [2, 3]}
layers:
  - {type: flatten}
  - {type: dense, units: 5, activation: elu}
  - {type: leaky_relu, alpha: 0.2}
  - {type: dense, units: 6, activation: selu, use_bias: false}
  - {type: reshape, shape: [2, 3]}
  - {type: flatten}
  - {type: gelu}
  - {type: dense, units: 4, activation: silu, initializer: glorot_normal}
  - {type: dropout, rate: 0.5}
  - {type: tanh}
  - {type: dense, units: 4, activation: softplus, initializer: he_normal}
  - {type: sigmoid}
  - {type: dense, units: 3, activation: linear}
  - {type: softmax}
task: {kind: classification}
"""


def test_every_activation_matches_numpy():
    spec = load_spec_text(ALL_ACTIVATIONS, "acts.yaml")
    model = compile_spec(spec, seed=3)
    onnx.checker.check_model(model, full_check=True)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    out = run(model, x.astype(np.float32))
    np.testing.assert_allclose(out["probabilities"], numpy_forward(spec, weights, x),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_compile_is_deterministic(cli, tmp_path, path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli("compile", path, "-o", a).code == 0
    assert cli("compile", path, "-o", b).code == 0
    assert a.read_bytes() == b.read_bytes()
    assert cli("compile", path, "-o", b, "--seed", "7").code == 0
    assert a.read_bytes() != b.read_bytes()


def test_metadata_carries_spec(tmp_path):
    path = SPECS / "digits_mlp.yaml"
    model = compile_spec(load_spec(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dlc.spec"] == path.read_text()
    import hashlib

    assert meta["dlc.spec_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["dlc.version"]
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_summary_table(cli):
    r = cli("summary", SPECS / "digits_mlp.yaml")
    assert r.code == 0, r
    assert "85,002" in r.out  # 64*256+256 + 256*256+256 + 256*10+10
    assert "169,472" in r.out  # 2*(64*256 + 256*256 + 256*10) + 256 + 256 relu


def test_schema_command_prints_schema(cli):
    import json

    r = cli("schema")
    assert r.code == 0
    assert json.loads(r.out)["$schema"].startswith("https://json-schema.org/draft/2020-12")


def test_help_and_validate_do_not_import_heavy_modules():
    import subprocess
    import sys

    code = ("import sys; from dlc.cli import main; sys.argv=['dlc','validate',%r]\n"
            "try: main()\nexcept SystemExit: pass\n"
            "bad=[m for m in ('onnxruntime','numpy','onnx') if m in sys.modules]\n"
            "print('HEAVY', bad)") % str(SPECS / "digits_mlp.yaml")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out, out
