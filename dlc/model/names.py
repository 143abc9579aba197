"""The one owner of each name derived from a spec: its model inputs and heads (outputs), their
spec paths, graph names and metrics.csv columns, and the train/eval graphs' input names. Below
the network and its semantic checks, so that every module naming a head or an input (network,
semantics, the training features, data) imports it from here without a circle."""

from __future__ import annotations

import fnmatch

# The output activation each task kind implies. A spec may write it as its last layer (or as the
# last dense layer's activation); training then takes the loss from the logits before it.
HEAD = {"classification": "softmax", "binary": "sigmoid", "regression": None}


def spec_inputs(data: dict) -> dict[str, dict]:
    """The model's named inputs: `inputs:` as written, or the one `input:` under the name input.
    An input of table columns by kind without a shape (its encoded width is learnt from the
    data) counts one feature per column until training resolves it."""
    found = dict(data["inputs"]) if data.get("inputs") else {"input": data["input"]}
    return {name: {**cfg, "shape": [len(cfg["columns"])]}
            if isinstance(cfg, dict) and cfg.get("columns") and not cfg.get("shape") else cfg
            for name, cfg in found.items()}


def spec_heads(data: dict) -> dict[str, dict]:
    """The model's outputs, each a task (kind, loss, metrics, ...): `outputs:` as written, or
    the one `task:` under the empty name (its graph names then carry no output name)."""
    return dict(data["outputs"]) if data.get("outputs") else {"": data["task"]}


def head_path(name: str, *keys) -> tuple:
    """The spec path of a head's key: ("task", key) or ("outputs", name, key)."""
    return ("outputs", name, *keys) if name else ("task", *keys)


def suffixed(base: str, head: str) -> str:
    """A train/eval graph name of one head: `y`, `logits` for `task:`, `y.<head>` for outputs."""
    return f"{base}.{head}" if head else base


def column(split: str, head: str, metric: str) -> str:
    """A metrics.csv column: `val_accuracy`, or `val_<output>.accuracy` for `outputs:`."""
    return f"{split}_{head}.{metric}" if head else f"{split}_{metric}"


def x_names(net: Network) -> dict[str, str]:
    """Model input -> train/eval graph input: `x` for one input, `x.<name>` for several."""
    if len(net.inputs) == 1:
        return {next(iter(net.inputs)): "x"}
    return {name: f"x.{name}" for name in net.inputs}


def x_feeds(names: dict[str, str], xb) -> dict:
    """Feeds for a batch: an array for one input, a mapping name -> array for several."""
    if isinstance(xb, dict):
        return {names[k]: v for k, v in xb.items()}
    (name,) = names.values()  # x_names owns the graph input's name
    return {name: xb}


def class_count(kind: str, last_axis):
    """Classes of a classification output (its logits' last axis) or a binary one (2: negative,
    positive): the one rule for class weights, labels, metrics and the teacher's check."""
    return 2 if kind == "binary" else last_axis


def matches(key: str, name: str) -> bool:
    """Whether a key selects parameter `name`: the exact name, a dotted prefix (`res1` for
    `res1.a.weight`) or a shell-style pattern (`res*`, `*.bias`); lr_scale keys and the
    base's trainable patterns."""
    return name == key or name.startswith(key + ".") or fnmatch.fnmatchcase(name, key)
