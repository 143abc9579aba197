"""From a validated spec to a network: layers, per-sample shapes, parameters, semantic checks.

The semantic pass runs every layer's shape rule in order and checks the output against the task;
each problem becomes a Diagnostic at the spec position it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dlc.errors import Diagnostic, SpecError
from dlc.layers import Layer, Param, Shape, ShapeError, build_layer

# The output activation each task kind implies. A spec may write it as its last layer (or as the
# last dense layer's activation); training then takes the loss from the logits before it.
HEAD = {"classification": "softmax", "binary": "sigmoid", "regression": None}
LOSSES = {"classification": {"cross_entropy"}, "binary": {"binary_cross_entropy"},
          "regression": {"mse", "mae", "huber"}}
METRICS = {"classification": {"accuracy", "precision", "recall", "f1"},
           "binary": {"accuracy", "precision", "recall", "f1"},
           "regression": {"mse", "mae", "r2"}}


@dataclass
class Network:
    spec: dict
    layers: list[Layer]  # the body: everything up to the logits
    in_shapes: list[Shape]
    out_shapes: list[Shape]
    params: list[Param]

    @property
    def input_shape(self) -> Shape:
        return tuple(self.spec["input"]["shape"])

    @property
    def input_dtype(self) -> str:
        return self.spec["input"].get("dtype", "float32")

    @property
    def output_shape(self) -> Shape:
        return self.out_shapes[-1] if self.out_shapes else self.input_shape

    @property
    def kind(self) -> str:
        return self.spec["task"]["kind"]

    def init_params(self, seed: int) -> dict:
        """Seeded initial values: parameter i draws from its own stream (seed, i)."""
        import numpy as np

        return {p.name: p.init(np.random.default_rng([seed, i]), p.shape)
                for i, p in enumerate(self.params)}


def _strip_head(layers: list[Layer], kind: str) -> list[Layer]:
    head = HEAD[kind]
    if head is None or not layers:
        return layers
    last = layers[-1]
    if last.cfg["type"] == head:
        return layers[:-1]
    if last.cfg.get("activation") == head:
        return [*layers[:-1], replace(last, cfg={**last.cfg, "activation": "linear"})]
    return layers


def build_network(spec) -> Network:
    """Build and check the network of a loaded `Spec`; raise SpecError listing every problem."""
    data, diags = spec.data, []
    layers = [build_layer(cfg) for cfg in data["layers"]]
    shape: Shape = tuple(data["input"]["shape"])
    in_shapes, out_shapes, params = [], [], []
    for i, layer in enumerate(layers):
        try:
            out = layer.output_shape(shape)
        except ShapeError as e:
            diags.append(spec.diag(("layers", i), f"{layer.cfg['type']} '{layer.name}': {e}"))
            break
        in_shapes.append(shape)
        out_shapes.append(out)
        params += layer.params(shape)
        shape = out
    diags += _check_task(spec, layers, shape if not diags else None)
    if diags:
        raise SpecError(diags)
    body = _strip_head(layers, data["task"]["kind"])
    n = len(body)
    return Network(data, body, in_shapes[:n], out_shapes[:n], params)


def _check_task(spec, layers: list[Layer], out: Shape | None) -> list[Diagnostic]:
    task, diags = spec.data["task"], []
    kind = task["kind"]
    if task["loss"] not in LOSSES[kind]:
        allowed = ", ".join(sorted(LOSSES[kind]))
        diags.append(spec.diag(("task", "loss"), f"loss '{task['loss']}' does not fit a {kind} "
                                                 f"task; use one of {allowed}"))
    for j, metric in enumerate(task["metrics"]):
        if metric not in METRICS[kind]:
            diags.append(spec.diag(("task", "metrics", j), f"metric '{metric}' does not fit a "
                                   f"{kind} task; use one of {', '.join(sorted(METRICS[kind]))}"))
    for i, layer in enumerate(layers):
        fn = layer.cfg["type"] if layer.cfg["type"] in ("softmax", "sigmoid") else layer.cfg.get("activation")
        last = i == len(layers) - 1
        if fn == "softmax" and (kind != "classification" or not last):
            where = "as the output of a " + kind + " task" if last else "before the last layer"
            diags.append(spec.diag(("layers", i), f"softmax {where}: the loss '{task['loss']}' "
                                   "expects unnormalised outputs; remove it"))
    if out is not None:
        diags += _check_output(spec, kind, out, len(layers) - 1)
    feats = spec.data["input"].get("features")
    shape = spec.data["input"]["shape"]
    if feats is not None and (len(shape) != 1 or len(feats) != shape[0]):
        diags.append(spec.diag(("input", "features"), f"{len(feats)} feature names for input "
                               f"shape {shape}; give one name per feature of a flat input"))
    return diags


def _check_output(spec, kind: str, out: Shape, last: int) -> list[Diagnostic]:
    labels = spec.data["task"].get("labels")
    at = ("layers", last)
    if len(out) != 1:
        return [spec.diag(at, f"the model output has shape {list(out)}; a {kind} task needs a "
                              "flat output (add flatten and dense layers)")]
    units = out[0]
    if kind == "classification" and units < 2:
        return [spec.diag(at, f"a classification task needs one output unit per class "
                              f"(at least 2), got {units}; use kind: binary for one unit")]
    if kind == "binary" and units != 1:
        return [spec.diag(at, f"a binary task needs 1 output unit, got {units}")]
    if kind == "classification" and labels is not None and len(labels) != units:
        return [spec.diag(("task", "labels"), f"{len(labels)} labels for {units} output units")]
    return []
