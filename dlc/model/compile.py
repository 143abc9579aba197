"""Lowering a network to the ONNX inference model (the artefact users ship)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx

from dlc import __version__
from dlc.graph import Builder
from dlc.model import losses
from dlc.model.columns import column_front
from dlc.model.layers import Ctx
from dlc.model.names import spec_inputs
from dlc.model.network import Network, build_network
from dlc.model.text_front import SPECIALS, text_front

OUTPUTS = {  # task kind -> the inference model's output names (add_head emits them)
    "classification": ("logits", "probabilities", "class_index"),
    "binary": ("logits", "probabilities", "class_index"),
    "regression": ("prediction",),
}


def lower_body(b: Builder, net: Network, xs: dict[str, str], params: dict[str, str],
               ctx: Ctx) -> dict[str, str]:
    """Emit every layer in topological order from the model inputs `xs` (name -> tensor);
    return each output's logits tensor by output name ("" for a `task:` model)."""
    ctx.source = ctx.source or next(iter(xs.values()))
    values = dict(xs)
    for node in net.nodes:
        layer, p = node.layer, params
        other = layer.cfg.get("share")
        if other:  # `share: other`: this layer's parameter names resolve to the owner's tensors
            p = {**params, **{f"{layer.name}.{k[len(other) + 1:]}": v
                              for k, v in params.items() if k.startswith(f"{other}.")}}
        xs = [values[s] for s in node.sources]
        with b.scope(layer.name):
            if layer.multi:
                values[node.name] = layer.lower(b, xs, p, ctx, node.in_shapes)
            else:
                values[node.name] = layer.lower(b, xs[0], p, ctx, node.in_shapes[0])
    return {h.name: values[h.node] for h in net.heads}


def normalize_input(b: Builder, x: str, norm: dict | None, shape) -> str:
    """Bake `(x - offset) / scale` (training-split statistics) into the graph, after the
    missing-value fills (data.missing) where there are any: a NaN feature becomes its fill."""
    if not norm:
        return x
    with b.scope("normalize"):
        if norm.get("fill") is not None:
            fill = b.const(np.asarray(norm["fill"], np.float32).reshape(shape), name="fill")
            x = b.Where(b.IsNaN(x), fill, x)
        offset = np.asarray(norm["offset"], np.float32).reshape(shape)
        scale = np.asarray(norm["scale"], np.float32).reshape(shape)
        return b.Div(b.Sub(x, b.const(offset, name="offset")), b.const(scale, name="scale"))


def output_name(head: str, name: str) -> str:
    """An inference output's name: `probabilities`, or `<output>.probabilities` for `outputs:`."""
    return f"{head}.{name}" if head else name


def add_head(b: Builder, kind: str, logits: str, out_shape: list, head: str = "") -> None:
    """Named outputs: probabilities and class index for classifiers, the prediction for regressors.
    `out_shape`: the per-sample output dims, e.g. [units], or ["T", classes] per token; `head`:
    the output's name for `outputs:` models (prefixes the names)."""
    def out(value: str, name: str, dtype: str, shape: list) -> None:
        b.output(value, output_name(head, name), dtype, shape)

    if kind == "regression":
        out(logits, "prediction", "float32", ["N", *out_shape])
        return
    out(logits, "logits", "float32", ["N", *out_shape])
    if kind == "classification":
        out(b.Softmax(logits, axis=-1), "probabilities", "float32", ["N", *out_shape])
        out(b.ArgMax(logits, axis=-1, keepdims=0), "class_index", "int64", ["N", *out_shape[:-1]])
    else:
        out(b.Sigmoid(logits), "probabilities", "float32", ["N", 1])
        positive = b.Greater(b.Squeeze(logits, b.const([1])), b.const(0.0))
        out(b.Cast(positive, to=onnx.TensorProto.INT64), "class_index", "int64", ["N"])


def _is_token_input(cfg: dict) -> bool:
    """int64 ids of shape [T] without column names: token ids (categorical columns have names)."""
    return cfg.get("dtype", "float32") == "int64" and len(cfg["shape"]) == 1 \
        and not cfg.get("features")


def _text_input(b: Builder, spec: dict, stored: dict | None) -> str | None:
    """A text model's (data.text) input, raw strings [N], through the text front: its token ids;
    None for other models. `stored`: the trained settings and vocabulary (TextSpec.to_meta());
    without them (`dlc compile`) the vocabulary is the special ids alone."""
    cfg = (spec.get("data") or {}).get("text")
    if cfg is None:
        return None
    stored = stored or {}
    length = stored.get("max_length") or cfg.get("max_length") or spec["input"]["shape"][0]
    lowercase = stored.get("lowercase", cfg.get("lowercase", True))
    raw = b.input("input", "string", ["N"])
    with b.scope("text"):
        return text_front(b, raw, stored.get("vocab") or SPECIALS, int(length), bool(lowercase))


def pad_tokens(b: Builder, x: str, steps: int) -> str:
    """Variable-length token ids: the inference model takes [N, T] for any T; the ids are padded
    with the padding id 0 up to the declared length `steps` (longer inputs are cut to it), so
    every layer sees the shapes it was built for. The closing Reshape states that length (the
    sequence layers read it to match their padding masks to the tokens)."""
    with b.scope("pad_tokens"):
        missing = b.Sub(b.const([steps]), b.Slice(b.Shape(x), b.const([1]), b.const([2])))
        padded = b.Pad(x, b.Concat(b.const([0, 0, 0]), missing, axis=0), b.const(0))
        return b.Reshape(padded, b.const([-1, steps]))


def inference_model(spec, net: Network, values: dict[str, np.ndarray], norm: dict | None = None,
                    meta: dict | None = None) -> onnx.ModelProto:
    """The self-contained inference model: raw input in, named outputs out, weights inside."""
    b = Builder()
    norms = norm if net.spec.get("inputs") else {"input": norm}  # `inputs:`: one per name
    xs, steps = {}, None  # steps: the first variable-length token input's length (a tensor)
    columns = (meta or {}).get("columns")  # input.columns: raw columns in, encoded in the graph
    text = _text_input(b, net.spec, (meta or {}).get("text"))
    for name, (shape, dtype) in net.inputs.items():
        if name in (columns or {}):
            xs[name] = column_front(b, columns[name])
            if dtype == "int64":  # embedding ids
                xs[name] = b.Cast(xs[name], to=onnx.TensorProto.INT64)
            continue
        if text is not None:  # one input: the ids of the raw text
            xs[name] = text
            continue
        tokens = _is_token_input(spec_inputs(net.spec)[name])
        time = "T" if len(net.inputs) == 1 else f"{name}_T"
        x = b.input(name, dtype, ["N", time] if tokens else ["N", *shape])
        with b.scope(name):
            if tokens:
                steps = steps or b.Slice(b.Shape(x), b.const([1]), b.const([2]))
                xs[name] = pad_tokens(b, x, shape[0])
            else:
                xs[name] = normalize_input(b, x, (norms or {}).get(name), shape)
    params = {p.name: b.initializer(p.name, values[p.name]) for p in net.params}
    logits = lower_body(b, net, xs, params, Ctx(training=False))
    for head in net.heads:
        logits[head.name] = losses.unscaled(b, losses.target_stats(b, head),  # target_scaling
                                            logits[head.name])
        out_shape = list(head.shape)
        if steps and head.kind == "classification" and len(out_shape) == 2:  # per-token outputs
            logits[head.name] = b.Slice(logits[head.name], b.const([0]), steps,
                                        b.const([1]))  # back to the input length
            out_shape[0] = "T" if len(net.inputs) == 1 else "T_out"
        add_head(b, head.kind, logits[head.name], out_shape, head.name)
    return b.model(net.spec["name"], metadata=metadata(spec, norm, meta),
                   doc=net.spec.get("description", ""))


def metadata(spec, norm: dict | None, extra: dict | None) -> dict[str, str]:
    data = spec.data
    meta = {
        "dlc.version": __version__,
        "dlc.spec": spec.text,
        "dlc.spec_sha256": hashlib.sha256(spec.text.encode()).hexdigest(),
        "dlc.spec_resolved": json.dumps(data),  # spec order: the first input is the default one
        "dlc.task": json.dumps(data.get("task") or data["outputs"], sort_keys=True),
        "dlc.inputs": json.dumps(spec_inputs(data), sort_keys=True),
        "dlc.normalize": json.dumps(norm),
    }
    if len(spec_inputs(data)) == 1:
        meta["dlc.input_shape"] = json.dumps(next(iter(spec_inputs(data).values()))["shape"])
    if data.get("input", {}).get("features"):
        meta["dlc.features"] = json.dumps(data["input"]["features"])
    if data.get("task", {}).get("labels"):
        meta["dlc.labels"] = json.dumps(data["task"]["labels"])
    for key, value in (extra or {}).items():
        meta[f"dlc.{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return meta


def compile_spec(spec, seed: int | None = None) -> onnx.ModelProto:
    """`dlc compile`: freshly initialised weights (seeded), no normalisation (no data seen yet)."""
    net = build_network(spec)
    seed = spec.data.get("train", {}).get("seed", 0) if seed is None else seed
    return inference_model(spec, net, net.init_params(seed), meta={"seed": str(seed)})
