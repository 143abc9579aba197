"""Knowledge distillation (`train.distill`): a trained dlc teacher inside the student's train step.

The teacher's model.onnx (raw input in, with its own normalisation baked in) is inlined into the
train-step graph: every node and tensor renamed under `teacher/`, its weights as constant
initializers, so one onnxruntime `run` still is one training step and no gradient reaches the
teacher (it lies on no path from the student's parameters). It sees the batch de-normalised with
the student's statistics, x * scale + offset, reshaped to its own input shape when the element
counts match (a [1, 8, 8] CNN teacher for a [64] MLP student). The loss becomes

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss

(Hinton et al., 2015; T^2 keeps the soft term's gradients on the scale of the hard term's).
Validation loss and metrics stay the task's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlc.errors import DlcError, SpecError
from dlc.files.untrusted import read_model
from dlc.graph import OPSET_IMPORTS
from dlc.model import losses
from dlc.model.layers.base import numel
from dlc.train.features.protocol import Feature

PREFIX = "teacher"


def config(spec_data: dict) -> dict | None:
    return (spec_data.get("train") or {}).get("distill")


def check(spec, base_dir: Path) -> None:
    """Semantic checks; the teacher path made absolute (relative paths: to the spec's folder), so
    the run's spec.yaml and a resume find it."""
    cfg = config(spec.data)
    if cfg is None:
        return
    where = ("train", "distill")
    if (spec.data.get("task") or {}).get("kind") != "classification":
        raise SpecError([spec.diag(where, "distillation needs task.kind classification (one "
                                          "output, `task:`)")])
    if spec.data.get("inputs"):
        raise SpecError([spec.diag(where, "distillation needs a single `input:`, not `inputs:`")])
    path = Path(cfg["teacher"]).expanduser()
    path = path if path.is_absolute() else (Path(base_dir) / path)
    if not path.is_file():
        raise SpecError([spec.diag((*where, "teacher"), f"teacher model not found: {path}")])
    cfg["teacher"] = str(path.resolve())


def load_teacher(path: str):
    """The teacher ModelProto and (input name, per-sample input shape, classes)."""
    import onnx

    try:
        model = read_model(path, "teacher model")
    except DlcError as e:
        raise DlcError(f"train.distill.teacher: {e}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if "dlc.spec_resolved" not in meta:
        raise DlcError(f"train.distill.teacher: {path} is not a dlc model (no dlc metadata)")
    opsets = {o.domain or "": o.version for o in model.opset_import}
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    outputs = {o.name: o for o in graph.output}
    if any(dict(OPSET_IMPORTS).get(domain) != v for domain, v in opsets.items()):
        raise DlcError(f"train.distill.teacher: {path} uses opsets {opsets}; dlc inlines "
                       f"models of its own opsets {dict(OPSET_IMPORTS)} only")
    if len(inputs) != 1 or "logits" not in outputs:
        raise DlcError(f"train.distill.teacher: {path} must be a classifier with one input "
                       "(outputs logits)")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in graph.node for a in n.attribute):
        raise DlcError(f"train.distill.teacher: {path} has sub-graphs; dlc cannot inline it")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][1:]
    classes = outputs["logits"].type.tensor_type.shape.dim[-1].dim_value
    return model, (inputs[0].name, tuple(dims), classes)


def inline(b, model, feeds: dict[str, str], prefix: str = PREFIX) -> dict[str, str]:
    """Copy `model`'s graph into builder `b` under `prefix/`; graph inputs wired to `feeds`
    (input name -> tensor in b). Returns its outputs: name -> tensor in b."""
    import onnx

    graph = model.graph
    rename = dict(feeds)

    def name(t: str) -> str:
        if not t:
            return t
        if t not in rename:
            new, k = f"{prefix}/{t}", 0
            while new in b._used:
                k += 1
                new = f"{prefix}/{t}_{k}"
            rename[t] = new
            b._used.add(new)
        return rename[t]

    for init in graph.initializer:
        if init.name not in feeds:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = name(init.name)
            b.initializers.append(copy)
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = name(node.name or f"{node.op_type}_{len(b.nodes)}")
        copy.input[:] = [name(i) for i in node.input]
        copy.output[:] = [name(o) for o in node.output]
        b.nodes.append(copy)
    return {o.name: rename[o.name] for o in graph.output}


def teacher_input(b, x: str, norm: dict | None, student: tuple, teacher: tuple) -> str:
    """The student's normalised batch back in raw units, in the teacher's input shape."""
    if numel(student) != numel(teacher):
        raise DlcError(f"train.distill: the teacher takes inputs of shape {list(teacher)} "
                       f"({numel(teacher)} values), the student {list(student)} "
                       f"({numel(student)}); they must hold the same number of values")
    with b.scope(PREFIX):
        if norm:
            scale = np.asarray(norm["scale"], np.float32).reshape(student)
            offset = np.asarray(norm["offset"], np.float32).reshape(student)
            x = b.Add(b.Mul(x, b.const(scale, name="scale")), b.const(offset, name="offset"))
        if tuple(student) != tuple(teacher):
            x = b.Reshape(x, b.const([-1, *teacher]))
    return x


def add_loss(b, net, x: str, logits: str, loss: str, norm: dict | None) -> str:
    """The train step's loss with the distillation term; `x`: the student's (normalised) input
    tensor in the train step, `logits`: its output's."""
    cfg = config(net.spec)
    model, (name, shape, classes) = load_teacher(cfg["teacher"])
    if classes != net.head.classes:
        raise DlcError(f"train.distill: the teacher has {classes} classes, the student "
                       f"{net.head.classes}")
    x = teacher_input(b, x, norm, net.input_shape, shape)
    teacher = inline(b, model, {name: x})["logits"]
    alpha = float(cfg["alpha"])
    with b.scope("distill"):
        soft = losses.distillation(b, logits, teacher, float(cfg["temperature"]))
        return b.Add(b.Mul(soft, b.const(alpha)), b.Mul(loss, b.const(1.0 - alpha)))


class Distill(Feature):
    """The teacher's soft-target term in the train step's loss."""

    name = "distill"

    def check(self, spec, net, base_dir) -> None:
        check(spec, base_dir)

    def loss(self, b, net, inputs: dict[str, str], logits: dict[str, str], loss: str,
             data_norm: dict | None) -> str:
        (x,) = inputs.values()  # check: one `input:`
        return add_loss(b, net, x, logits[net.head.name], loss, data_norm)


FEATURE = Distill()
