"""`dlc explain`: input attributions through dlc's own gradient pass.

The inference graph is rebuilt from the model's stored resolved spec (`dlc.spec_resolved`), its
trained weights (the model's initializers) and its input normalisation (`dlc.normalize`), with
the raw inputs as graph inputs. The explained quantity is the target logit of each sample, taken
as f = sum_i <logits_i, w_i> over the batch (w_i one-hot on the target class; +1/-1 on the single
logit of a binary model, i.e. the log-odds of the target class; one-hot on an output for
regression). `dlc.autodiff.gradients` emits df/dx as standard ONNX, so one onnxruntime run gives
the logits and the gradient of each sample's target logit w.r.t. its own raw input (samples are
independent in inference mode).

Methods, against a baseline x0: grad_x_input ((x - x0) * df/dx) and integrated_gradients
((x - x0) * mean_k df/dx at x0 + a_k (x - x0), a_k = (k + 1/2) / steps, the midpoint Riemann
sum), whose attributions add up to f(x) - f(x0) up to the quadrature error (completeness).
Baselines: `mean`, the training split's mean in raw units (the offset of a standard
normalisation, which the model carries; otherwise computed from the model's own training data),
so a feature scores by how far it sits from the typical sample, not by its magnitude; or `zero`.

Column kinds (`input.columns`): the raw rows are encoded as training encodes them (the model's
stored encoders, dlc.columns) and attributed per encoded feature (a one-hot slot, a filled and
scaled number, an indicator, a token position's embedding); each raw column's attribution is the
sum over its encoded features, so the per-column values still add up to f(x) - f(x0). Their
`mean` baseline is the mean encoded training row (its embeddings, for id inputs).

Categorical columns (int64 inputs of `inputs:` models) are attributed through their embeddings:
each lookup's output becomes a graph input, and the path runs from the baseline embedding to the
sample's. An embedding is linear in the one-hot of its id, so this is the integrated gradient of
the one-hot column; a column's attribution sums its embedding dimensions. Their baselines: zero
(no category), or `mean`, the mean embedding of the column's known values (the model stores the
values, not their frequencies).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dlc.autodiff import gradients
from dlc.commands.quantize import spec_splits
from dlc.data.columns import encode, width
from dlc.data.text import text_config
from dlc.errors import DlcError, UsageError
from dlc.files.untrusted import load_json, read_model
from dlc.graph import Builder
from dlc.model import losses
from dlc.model.compile import lower_body, normalize_input
from dlc.model.layers import Ctx
from dlc.model.names import spec_inputs
from dlc.model.network import build_network
from dlc.model.spec import Spec
from dlc.runtime.infer import load_model
from dlc.runtime.session import choose_device, make_session

METHODS = ("grad_x_input", "integrated_gradients")
BASELINES = ("mean", "zero")
MAX_ROWS = 4096  # rows per onnxruntime run (samples x interpolation steps)
MAX_STEPS = 1024  # integrated-gradients steps; the midpoint rule's error is ~1/steps^2 already


@dataclass
class Lookup:
    """An embedding lookup of a categorical input, fed to the gradient graph as an input."""

    tensor: str  # the lookup's output tensor, now a graph input [N, *shape, dim]
    source: str  # the int64 model input it reads
    table: np.ndarray  # the embedding weights [vocab, dim]


@dataclass
class Explainer:
    """The gradient graph of one model: `run(feed, w)` -> (logits, {tensor: d<logits, w>/d})."""

    session: object
    model: object  # dlc.runtime.infer.Model: the stored spec, class and feature names
    shapes: dict  # model input name -> per-sample shape
    floats: list[str]  # the float inputs, differentiated directly
    lookups: list[Lookup]
    outputs: int  # units of the model's output (last dim)
    norm: dict | None  # the stored normalisation by input name
    columns: dict | None = None  # column kinds: the stored encoders by input name

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def labels(self) -> list[str] | None:
        return self.model.labels

    @property
    def wrt(self) -> list[str]:
        return self.floats + [u.tensor for u in self.lookups]

    def run(self, feed, w: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`feed`: by graph input name (an array: the one float input)."""
        feed = feed if isinstance(feed, dict) else {self.floats[0]: feed}
        names = ["logits", *(f"grad:{t}" for t in self.wrt)]
        parts = [self.session.run(names, {**{k: v[i:i + MAX_ROWS] for k, v in feed.items()},
                                          "weight": w[i:i + MAX_ROWS]})
                 for i in range(0, len(w), MAX_ROWS)]
        logits = np.concatenate([p[0] for p in parts])
        return logits, {t: np.concatenate([p[k + 1] for p in parts])
                        for k, t in enumerate(self.wrt)}


def _stored(path: Path, device: str = "cpu"):
    """(model, normalisation by input name, {initializer: array}, target scaling, column
    encoders or None)."""
    from onnx import numpy_helper

    model = load_model(path, device)  # checks that it is a dlc model with sane metadata
    proto = read_model(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    norm = load_json(meta.get("dlc.normalize", "null"), f"{path}: dlc.normalize")
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    scaling = load_json(meta.get("dlc.target_norm", "null"), f"{path}: dlc.target_norm")
    stats = scaling.get("") if isinstance(scaling, dict) else scaling  # target_scaling: standard
    per_input = norm.values() if model.spec.get("inputs") and isinstance(norm, dict) else [norm]
    for key, values in (("normalize", per_input), ("target_norm", [stats])):
        if not all(map(_is_stats, values)):
            raise DlcError(f"{path}: corrupt dlc metadata (dlc.{key})")
    columns = load_json(meta.get("dlc.columns", "null"), f"{path}: dlc.columns")
    return model, norm, weights, stats, columns


def _check_explainable(spec_data: dict, net, weights: dict, file: str) -> None:
    tokens = [n for n, cfg in spec_inputs(spec_data).items() if cfg.get("dtype", "float32")
              == "int64" and not cfg.get("features") and not cfg.get("columns")]
    if text_config(spec_data) is not None:
        raise DlcError("dlc explain needs float inputs or categorical columns; a text model "
                       "(data.text) takes raw text, which has no gradient")
    if tokens:
        raise DlcError("dlc explain needs float inputs or categorical columns, not token ids")
    missing = [p.name for p in net.params if p.name not in weights]
    if missing:
        raise DlcError(f"{file}: no weights for {missing[0]} in the model; corrupt or not "
                       "made by dlc")


def _is_stats(value) -> bool:
    """None, or {offset: [numbers], scale: [numbers]} as dlc writes it."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return value is None or isinstance(value, dict) and all(
        isinstance(value.get(k), list) and all(map(number, value[k])) for k in ("offset", "scale"))


def gradient_model(spec_data: dict, norm: dict | None, weights: dict, file: str = "model",
                   target_norm: dict | None = None, device: str = "cpu"):
    """(ONNX model, network, lookups): inputs the raw model inputs, each categorical column's
    embedding lookups, and `weight` [N, *out]; outputs `logits` and `grad:<tensor>` =
    d sum(logits * weight) / d tensor per float input and lookup. `norm`: by input name for
    `inputs:` models; `target_norm`: a regression model's target scaling, so that outputs are
    in the target's units as the model's are; `device`: where it will run (the gradient forms
    for it)."""
    net = build_network(Spec(data=spec_data, text="", file=file))
    _check_explainable(spec_data, net, weights, file)
    b = Builder()
    xs = _raw_inputs(b, net, norm if spec_data.get("inputs") else {"input": norm})
    params = {p.name: b.initializer(p.name, weights[p.name]) for p in net.params}
    logits = lower_body(b, net, xs, params, Ctx(training=False))[net.head.name]
    stats = losses.target_stats(b, replace(net.head, target_norm=target_norm))
    logits = losses.unscaled(b, stats, logits)
    _pool_indices(b)
    lookups = _lookups_as_inputs(b, net, weights)
    out_shape = list(net.output_shape)
    w = b.input("weight", "float32", ["N", *out_shape])
    target = b.ReduceSum(b.Mul(logits, w), keepdims=0)
    wrt = [n for n, (_, d) in net.inputs.items() if d == "float32"] + [u.tensor for u in lookups]
    grads = gradients(b, target, wrt, device=device)
    if all(g is None for g in grads.values()):
        raise DlcError("the model's output does not depend on its input; nothing to explain")
    b.output(logits, "logits", "float32", ["N", *out_shape])
    for t, g in grads.items():  # an input the output ignores: a zero gradient
        b.output(g if g is not None else b.Mul(t, b.const(0.0)), f"grad:{t}", "float32")
    return b.model("explain"), net, lookups


def _raw_inputs(b, net, norms: dict | None) -> dict[str, str]:
    """The model inputs in raw units; float ones normalised in-graph as the model does."""
    xs = {}
    for name, (shape, dtype) in net.inputs.items():
        x = b.input(name, dtype, ["N", *shape])
        xs[name] = normalize_input(b, x, (norms or {}).get(name), list(shape)) \
            if dtype == "float32" else x
    return xs


def _pool_indices(b) -> None:
    """Give inference-mode MaxPool nodes their Indices output: the MaxPool VJP scatters the
    gradient through it (training lowers MaxPool with it; inference without)."""
    for node in b.nodes:
        if node.op_type == "MaxPool" and len(node.output) == 1:
            node.output.append(b.fresh(f"{node.name}/indices"))


def _lookups_as_inputs(b, net, weights: dict) -> list[Lookup]:
    """Replace each Gather of an int64 model input (an embedding lookup) by a graph input of
    the same name, so that gradients reach it and a path can run through it."""
    ids = {n: shape for n, (shape, d) in net.inputs.items() if d == "int64"}
    lookups = []
    for node in [n for n in b.nodes if n.op_type == "Gather" and n.input[1] in ids]:
        b.nodes.remove(node)
        table = weights[node.input[0]]
        b.input(node.output[0], "float32", ["N", *ids[node.input[1]], table.shape[1]])
        lookups.append(Lookup(node.output[0], node.input[1], table))
    return lookups


def load_explainer(path: str | Path, device: str = "cpu") -> Explainer:
    model, norm, weights, target_norm, columns = _stored(Path(path), device)
    kind, index = choose_device(device)[:2]
    proto, net, lookups = gradient_model(model.spec, norm, weights, str(path), target_norm,
                                         kind)
    norms = norm if model.spec.get("inputs") else {"input": norm}
    floats = [n for n, (_, d) in net.inputs.items() if d == "float32"]
    return Explainer(make_session(proto.SerializeToString(), kind, index), model,
                     {n: tuple(s) for n, (s, _) in net.inputs.items()}, floats, lookups,
                     int(net.output_shape[-1]), norms, columns)


def parse_target(ex: Explainer, target: str | None) -> int | None:
    """--target as a class name or index (classification/binary), an output index
    (regression); None: the predicted class (regression: output 0)."""
    if target is None:
        return None if ex.kind != "regression" else 0
    names = ex.labels or []
    count = 2 if ex.kind == "binary" else ex.outputs
    if target in names:
        return names.index(target)
    if target.lstrip("-").isdigit() and 0 <= int(target) < count:
        return int(target)
    known = f"a class name ({', '.join(names)}) or " if names else ""
    raise UsageError(f"--target {target}: expected {known}an index 0..{count - 1}")


def target_weights(ex: Explainer, logits: np.ndarray, target: int | None) -> np.ndarray:
    """w [N, outputs]: selects each sample's target logit (the predicted class by default)."""
    n = len(logits)
    if ex.kind == "binary":
        cls = (logits[:, 0] > 0).astype(np.int64) if target is None else np.full(n, target)
        return np.where(cls == 1, 1.0, -1.0).astype(np.float32)[:, None]
    cls = logits.argmax(axis=1) if target is None else np.full(n, target)
    return np.eye(ex.outputs, dtype=np.float32)[cls]


def target_classes(ex: Explainer, w: np.ndarray) -> np.ndarray:
    return (w[:, 0] > 0).astype(np.int64) if ex.kind == "binary" else w.argmax(axis=1)


def baselines(ex: Explainer, kind: str) -> dict[str, np.ndarray]:
    """x0 of one sample for each float input and lookup tensor."""
    if kind not in BASELINES:
        raise UsageError(f"unknown --baseline '{kind}'; use {' or '.join(BASELINES)}")
    if kind == "mean" and ex.columns:
        return column_means(ex)
    if kind == "zero":
        return {**{n: np.zeros(ex.shapes[n], np.float32) for n in ex.floats},
                **{u.tensor: np.zeros((*ex.shapes[u.source], u.table.shape[1]), np.float32)
                   for u in ex.lookups}}
    return {**input_means(ex), **{u.tensor: category_means(ex, u) for u in ex.lookups}}


def input_means(ex: Explainer) -> dict[str, np.ndarray]:
    """The training split's mean of each float input, in raw units: a standard
    normalisation's offset, else the mean of the model's own training data."""
    norms = ex.norm or {}
    if all((norms.get(n) or {}).get("kind") == "standard" for n in ex.floats):
        return {n: np.asarray(norms[n]["offset"], np.float32).reshape(ex.shapes[n])
                for n in ex.floats}
    try:
        train, _ = spec_splits(ex.model)
    except DlcError as e:
        raise DlcError(f"--baseline mean: the model's normalisation does not hold the training "
                       f"mean, and its training data did not load ({e}); use --baseline zero "
                       "or run where the data is") from None
    train = train if isinstance(train, dict) else {ex.floats[0]: train}
    return {n: train[n].mean(axis=0).astype(np.float32) for n in ex.floats}


def encoded(ex: Explainer, raw: dict) -> dict[str, np.ndarray]:
    """Raw table columns -> each model input's encoded rows, as training encodes them."""
    out = {n: encode(state, raw) for n, state in ex.columns.items()}
    return {n: x if n in ex.floats else x.astype(np.int64) for n, x in out.items()}


def column_means(ex: Explainer) -> dict[str, np.ndarray]:
    """The mean encoded training row of each float input, and the mean embedding at each
    position of each id input."""
    try:
        train = encoded(ex, spec_splits(ex.model)[0])
    except DlcError as e:
        raise DlcError(f"--baseline mean: the model's training data did not load ({e}); use "
                       "--baseline zero or run where the data is") from None
    return {**{n: train[n].mean(axis=0).astype(np.float32) for n in ex.floats},
            **{u.tensor: u.table[train[u.source]].mean(axis=0) for u in ex.lookups}}


def per_column(ex: Explainer, attributions: dict) -> dict[str, np.ndarray]:
    """Each raw column's attribution [N, 1]: the sum over its encoded features."""
    out = {}
    for name, state in ex.columns.items():
        a = attributions[name].reshape(len(attributions[name]), -1)
        edges = np.cumsum([0] + [width(c) for c in state["columns"]])
        for c, lo, hi in zip(state["columns"], edges[:-1], edges[1:]):
            out[c["name"]] = a[:, lo:hi].sum(axis=1, keepdims=True)
    return out


def category_means(ex: Explainer, lookup: Lookup) -> np.ndarray:
    """[*shape, dim]: per column, the mean embedding of the column's known values (ids
    offset + 1 .. offset + count, as dlc.data.multi.encode_categories numbers them)."""
    columns = spec_inputs(ex.model.spec)[lookup.source]["features"]
    known = (ex.model.categories or {}).get(lookup.source) or {}
    rows, offset = [], 0
    for column in columns:
        count = len(known.get(column, []))
        rows.append(lookup.table[offset + 1:offset + 1 + count].mean(axis=0) if count
                    else np.zeros(lookup.table.shape[1]))
        offset += count
    return np.asarray(rows, np.float32).reshape(*ex.shapes[lookup.source], -1)


def path_gradients(ex: Explainer, x: dict, x0: dict, w: np.ndarray, steps: int) -> dict:
    """The midpoint Riemann mean of the gradients along the straight path x0 -> x (ids, which
    only gate, stay the sample's)."""
    alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
    per = max(1, MAX_ROWS // steps)
    out = {t: np.empty_like(x[t]) for t in ex.wrt}
    for i in range(0, len(w), per):
        part = slice(i, i + per)
        point = {}
        for k, v in x.items():
            if k not in out:
                point[k] = np.repeat(v[part], steps, axis=0)
                continue
            a = alphas.reshape(1, steps, *[1] * (v.ndim - 1))
            start = x0[k][part][:, None]
            point[k] = (start + a * (v[part][:, None] - start)).reshape(-1, *v.shape[1:])
        _, g = ex.run(point, np.repeat(w[part], steps, axis=0))
        for t in out:
            out[t][part] = g[t].reshape(-1, steps, *x[t].shape[1:]).mean(axis=1)
    return out


def explain(ex: Explainer, x, method: str = "grad_x_input", steps: int = 32,
            target: str | None = None, baseline: str = "mean") -> dict:
    """Attributions of each sample's target logit: {attributions (by model input, each
    [N, *shape]), target, logit, baseline_logit, method, baseline}. `x`: the raw inputs (an
    array, or a mapping by input name)."""
    if method not in METHODS:
        raise UsageError(f"unknown --method '{method}'; use {' or '.join(METHODS)}")
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS} (MAX_STEPS), not {steps}")
    x = encoded(ex, x) if ex.columns else x
    feed = {k: np.ascontiguousarray(v, np.float32 if k in ex.floats else np.int64)
            for k, v in (x.items() if isinstance(x, dict) else [(ex.floats[0], x)])}
    n = len(next(iter(feed.values())))
    full = {**feed, **{u.tensor: u.table[feed[u.source]] for u in ex.lookups}}
    logits, _ = ex.run(full, np.zeros((n, ex.outputs), np.float32))
    w = target_weights(ex, logits, parse_target(ex, target))
    x0 = {**feed, **{t: np.broadcast_to(v, (n, *v.shape)).astype(np.float32)
                     for t, v in baselines(ex, baseline).items()}}
    base_logits, _ = ex.run(x0, w)
    grads = ex.run(full, w)[1] if method == "grad_x_input" else \
        path_gradients(ex, full, x0, w, steps)
    per = {t: (full[t] - x0[t]) * grads[t] for t in ex.wrt}
    attributions = {name: per[name] for name in ex.floats}
    for u in ex.lookups:  # a categorical column: the sum over its embedding dimensions
        summed = per[u.tensor].sum(axis=-1)
        attributions[u.source] = attributions.get(u.source, 0) + summed
    attributions = {k: attributions[k] for k in ex.shapes if k in attributions}
    return {"method": method, "baseline": baseline,
            "attributions": per_column(ex, attributions) if ex.columns else attributions,
            "target": target_classes(ex, w), "logit": (logits * w).sum(axis=1),
            "baseline_logit": (base_logits * w).sum(axis=1)}
