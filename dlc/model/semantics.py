"""The semantic checks of a spec's network (after the schema, once shapes are known): int64 id
inputs, each output's loss, metrics, layer and shape against its task kind, where softmax may
stand, the early-stopping monitor, and class weights and balanced sampling
(check_class_balance). Each problem is a Diagnostic at the spec position it is
about; dlc.model.network.build_network collects them all."""

from __future__ import annotations

import difflib

from dlc.errors import Diagnostic
from dlc.model.layers import Layer, Shape
from dlc.model.names import HEAD, class_count, column, head_path, spec_heads, spec_inputs

LOSSES = {"classification": {"cross_entropy"}, "binary": {"binary_cross_entropy"},
          "regression": {"mse", "mae", "huber"}}
METRICS = {"classification": {"accuracy", "precision", "recall", "f1"},
           "binary": {"accuracy", "precision", "recall", "f1"},
           "regression": {"mse", "mae", "r2"}}


def check_ids(spec, layers: list[Layer], sources: list[list[str]]) -> list[Diagnostic]:
    """int64 model inputs hold ids: only id-taking layers (embedding) read them, and those read
    nothing else."""
    ints = {n for n, c in spec_inputs(spec.data).items() if c.get("dtype", "float32") == "int64"}
    diags = []
    for i, (layer, srcs) in enumerate(zip(layers, sources)):
        takes_ids = getattr(layer, "takes_ids", False)
        for src in srcs:
            if takes_ids and src not in ints:
                diags.append(spec.diag(("layers", i), f"{layer.cfg['type']} '{layer.name}' takes "
                                       f"int64 ids, but '{src}' is not an int64 model input"))
            elif not takes_ids and src in ints:
                diags.append(spec.diag(("layers", i), f"input '{src}' holds int64 ids; only an "
                                       f"embedding layer can take it, not {layer.cfg['type']}"))
    return diags


def check_missing(spec) -> list[Diagnostic]:
    """data.missing fills (and data.cache: true caches) the columns of a table: those named by
    kind (input.columns, or columns per `inputs:` entry: dlc.data.columns, its every column's
    default fill) or the numeric columns of one float `input:`; anywhere else it would be
    silently ignored, so it is refused."""
    data = spec.data.get("data") or {}
    asked = [k for k in ("missing", "cache") if data.get(k) and data.get(k) != "auto"]
    entries = (spec.data.get("inputs") or {}).values() if spec.data.get("inputs") \
        else [spec.data.get("input")]
    if not asked or any(isinstance(e, dict) and e.get("columns") for e in entries):
        return []
    source = str(data.get("source") or "")
    table = source.split(":", 1)[0] in ("csv", "parquet", "feather") or \
        source.lower().endswith((".csv", ".parquet", ".feather"))
    plain = (spec.data.get("input") or {}).get("dtype", "float32") == "float32"
    others = [k for k in ("inputs", "outputs") if spec.data.get(k)] + \
        [f"data.{k}" for k in ("window", "text") if data.get(k)]
    if table and plain and not others:
        return []
    why = f"not with {', '.join(others)}" if others else \
        "a csv:, parquet: or feather: source and a float32 input"
    what = {"missing": "fills", "cache": "caches"}
    return [spec.diag(("data", k), f"{what[k]} the numeric table columns of one `input:` "
                      f"only: {why}") for k in asked]


def check_columns(spec) -> list[Diagnostic]:
    """Table columns by kind (`input.columns`, or `columns` per `inputs:` entry) encode one
    table for one `task:` (dlc.data.columns); an int64 entry takes embedding ids only; an
    embedding learns its vocab_size only over such an entry."""
    found = spec.data["inputs"] if spec.data.get("inputs") else {"input": spec.data.get("input")}
    found = {k: v for k, v in found.items() if isinstance(v, dict)}
    at = lambda name, *keys: (("inputs", name) if spec.data.get("inputs") else ("input",)) + keys  # noqa: E731,E501
    diags = [spec.diag(at(name, "columns"), message)
             for name, cfg in found.items() if cfg.get("columns")
             for message in _column_problems(spec.data, cfg)]
    with_columns = [n for n, c in found.items() if c.get("columns")]
    if with_columns and len(with_columns) < len(found):
        name = next(n for n in found if n not in with_columns)
        diags.append(spec.diag(at(name), "give columns to every input or to none"))
    seen: dict[str, str] = {}
    for name in with_columns:
        for col in found[name]["columns"]:
            if col in seen:
                diags.append(spec.diag(at(name, "columns", col), f"column '{col}' is taken by "
                                       f"input '{seen[col]}' too; give each column one input"))
            seen.setdefault(col, name)
    for i, layer in enumerate(spec.data.get("layers") or []):
        if layer.get("type") == "embedding" and not layer.get("vocab_size") and not with_columns:
            diags.append(spec.diag(("layers", i), "an embedding needs vocab_size (it is learnt "
                                   "only over categorical columns with encoding: embedding)"))
    return diags


def _column_problems(data: dict, cfg: dict) -> list[str]:
    """Why one input's `columns` cannot be encoded, if they cannot."""
    others = [k for k in ("outputs",) if data.get(k)] + \
        [f"data.{k}" for k in ("window", "text", "features") if (data.get("data") or {}).get(k)]
    others += ["features"] if cfg.get("features") else []
    source = str((data.get("data") or {}).get("source") or "csv:")
    if source.split(":", 1)[0] not in ("csv", "parquet", "feather") and \
            not source.lower().endswith((".csv", ".parquet", ".feather")):
        others.append(f"data.source {source}")
    out = ["encodes the columns of a csv:, parquet: or feather: table for one task: (the "
           f"columns name the features); not with {', '.join(others)}"] if others else []
    ids = cfg.get("dtype", "float32") == "int64"
    for col, c in cfg["columns"].items():
        c = {"kind": c} if isinstance(c, str) else c
        embedded = c.get("kind") == "text" or \
            (c.get("kind") == "categorical" and c.get("encoding") == "embedding")
        if ids != embedded or (embedded and c.get("indicator")):
            what = "text" if c.get("kind") == "text" else "encoding: embedding"
            out.append(f"{col}: " + ("an int64 input takes text columns and categorical columns "
                                     "with encoding: embedding (no indicator)" if ids else
                                     f"{what} needs an int64 input (dtype: int64) read by an "
                                     "embedding"))
    return out


def check_task(spec, layers: list[Layer], layer_of: dict[str, int],
               shapes: dict[str, Shape] | None) -> list[Diagnostic]:
    """Each output against its task, outputs that share a layer, softmax, the monitor and the
    inputs' feature names. `layer_of`: output name -> its layer's index (-1: unknown);
    `shapes`: every built layer's output shape (None when earlier errors left them unknown)."""
    diags, heads = [], spec_heads(spec.data)
    for name, task in heads.items():
        i = layer_of[name]
        out = shapes.get(layers[i].name) if shapes is not None and i >= 0 else None
        diags += _check_head(spec, layers, name, task, i, out)
    readers: dict[int, str] = {}
    for name, i in layer_of.items():
        if i >= 0 and i in readers:
            diags.append(spec.diag(head_path(name, "layer"), f"outputs '{readers[i]}' and "
                                   f"'{name}' read the same layer; give each its own"))
        readers.setdefault(i, name)
    diags += _check_softmax(spec, layers, {i: heads[n]["kind"] for n, i in layer_of.items()})
    diags += _check_monitor(spec, heads)
    for name, cfg in spec_inputs(spec.data).items():
        feats, shape = cfg.get("features"), cfg["shape"]
        at = ("input",) if name == "input" and "input" in spec.data else ("inputs", name)
        if feats is not None and (len(shape) != 1 or len(feats) != shape[0]):
            diags.append(spec.diag((*at, "features"), f"{len(feats)} feature names for input "
                                   f"shape {shape}; give one name per feature of a flat input"))
    return diags


def _check_head(spec, layers: list[Layer], name: str, task: dict, i: int,
                out: Shape | None) -> list[Diagnostic]:
    """One output: loss, metrics and target scaling fit its kind; its layer exists and has the
    shape the kind needs (`out`, when known); its class weights."""
    diags, kind = [], task["kind"]
    if task["loss"] not in LOSSES[kind]:
        allowed = ", ".join(sorted(LOSSES[kind]))
        diags.append(spec.diag(head_path(name, "loss"), f"loss '{task['loss']}' does not fit a "
                               f"{kind} task; use one of {allowed}"))
    for j, metric in enumerate(task["metrics"]):
        if metric not in METRICS[kind]:
            diags.append(spec.diag(head_path(name, "metrics", j), f"metric '{metric}' does not "
                                   f"fit a {kind} task; use one of "
                                   f"{', '.join(sorted(METRICS[kind]))}"))
    if task.get("target_scaling", "none") != "none" and kind != "regression":
        diags.append(spec.diag(head_path(name, "target_scaling"), "target scaling applies to "
                               f"regression targets, not to a {kind} task"))
    if i < 0:
        hint = difflib.get_close_matches(task["layer"], [x.name for x in layers], n=1)
        diags.append(spec.diag(head_path(name, "layer"), f"unknown layer '{task['layer']}'"
                               + (f"; did you mean '{hint[0]}'?" if hint else "")))
    elif out is not None:
        diags += _check_output(spec, name, task, out, i)
    return diags + check_class_balance(spec, name, task, out)  # class_weights, data.sampling


def _check_monitor(spec, heads: dict[str, dict]) -> list[Diagnostic]:
    """train.early_stopping.monitor must name a column that training reports."""
    es = (spec.data.get("train") or {}).get("early_stopping") or {}
    name = es.get("monitor", "val_loss")
    known = ["val_loss"] + [column("val", h, m) for h, task in heads.items()
                            for m in [*(["loss"] if h else []), *task["metrics"]]]
    if name in known:
        return []
    hint = difflib.get_close_matches(name, known, n=1)
    return [spec.diag(("train", "early_stopping", "monitor"), f"'{name}' is not reported; "
                      f"training reports {', '.join(known)}"
                      + (f"; did you mean '{hint[0]}'?" if hint else ""))]


def _check_softmax(spec, layers: list[Layer], kinds: dict[int, str]) -> list[Diagnostic]:
    """Softmax only as the activation of a classification output's layer, which nothing else
    reads (training takes the loss from the logits before it)."""
    diags, many = [], bool(spec.data.get("outputs"))
    read = {src for layer in layers for src in layer.cfg.get("inputs") or []}
    read |= {layers[i - 1].name for i in range(1, len(layers)) if not layers[i].cfg.get("inputs")}
    for i, layer in enumerate(layers):
        cfg = layer.cfg
        fn = cfg["type"] if cfg["type"] in ("softmax", "sigmoid") else cfg.get("activation")
        kind = kinds.get(i)
        if fn == "softmax" and kind != "classification":
            if many:
                where = f"in the layer of a {kind} output" if kind else \
                    "outside a classification output's layer"
                why = "the losses expect unnormalised outputs"
            else:
                where = f"as the output of a {kind} task" if kind else "before the last layer"
                why = f"the loss '{spec.data['task']['loss']}' expects unnormalised outputs"
            diags.append(spec.diag(("layers", i), f"softmax {where}: {why}; remove it"))
        elif many and kind and fn == HEAD[kind] and layer.name in read:
            diags.append(spec.diag(("layers", i), f"'{layer.name}' is an output's layer and "
                                   f"ends in {fn}, which training strips; other layers cannot "
                                   "read it (move the activation into a separate layer)"))
    return diags


def _check_output(spec, name: str, task: dict, out: Shape, i: int) -> list[Diagnostic]:
    kind, labels, at = task["kind"], task.get("labels"), ("layers", i)
    per_token = kind == "classification" and len(out) == 2  # (steps, classes): y is [N, steps]
    of = f"output '{name}': " if name else ""
    if len(out) != 1 and not per_token:
        return [spec.diag(at, f"{of or 'the model output '}has shape {list(out)}; a {kind} "
                              "task needs a flat output (add flatten and dense layers)")]
    units = out[-1]
    if kind == "classification" and units < 2:
        return [spec.diag(at, f"{of}a classification task needs one output unit per class "
                              f"(at least 2), got {units}; use kind: binary for one unit")]
    if kind == "binary" and units != 1:
        return [spec.diag(at, f"{of}a binary task needs 1 output unit, got {units}")]
    if kind == "classification" and labels is not None and len(labels) != units:
        return [spec.diag(head_path(name, "labels"), f"{len(labels)} labels for {units} output "
                                                     "units")]
    return []


def check_class_balance(spec, name: str, task: dict, out) -> list:
    """Diagnostics for one output's class_weights, and for data.sampling (`name`: "" for
    `task:`; `out`: the output's shape, or None)."""
    kind, data, diags = task["kind"], spec.data.get("data") or {}, []
    weights, at = task.get("class_weights"), head_path(name, "class_weights")
    if weights is not None and kind == "regression":
        diags.append(spec.diag(at, "class weights need a classification or binary task"))
    elif isinstance(weights, list) and out is not None:
        classes = class_count(kind, out[-1])
        if len(weights) != classes:
            diags.append(spec.diag(at, f"{len(weights)} class weights for {classes} classes"
                                   + (" (binary: [negative, positive])" if kind == "binary"
                                      else "")))
    if data.get("sampling") == "balanced":
        if name:  # reported once, with the first output
            if name == next(iter(spec.data["outputs"])):
                diags.append(spec.diag(("data", "sampling"), "balanced sampling needs one "
                                       "class target; with several outputs weigh classes per "
                                       "output (class_weights)"))
        elif kind == "regression":
            diags.append(spec.diag(("data", "sampling"), "balanced sampling needs a "
                                                         "classification or binary task"))
        elif out is not None and len(out) == 2 and kind == "classification":
            diags.append(spec.diag(("data", "sampling"), "balanced sampling needs one class per "
                                   "sample; per-token outputs have many (use class_weights)"))
    return diags
