"""`dlc evaluate` and `dlc predict`: the exported model and its metadata, nothing else."""

from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc import metrics as M
from dlc.compile import OUTPUTS
from dlc.errors import DlcError
from dlc.fileio import write_bytes, write_text
from dlc.runtime.session import make_session


@dataclass
class Model:
    path: Path
    session: object
    spec: dict
    labels: list[str] | None
    features: list[str] | None
    text: dict | None = None  # text models: tokenizer settings and vocabulary (dlc.text)
    categories: dict | None = None  # several inputs: category table (dlc.categories)

    @property
    def kind(self) -> str:
        return self.spec["task"]["kind"]

    def run(self, x: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        feed = lambda xb: dict(xb) if isinstance(xb, dict) else {"input": xb}  # noqa: E731
        try:
            parts = [self.session.run(None, feed(x[i:i + batch_size]))
                     for i in range(0, len(x), batch_size)]
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors share no base class
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DlcError(f"onnxruntime cannot run {self.path}: {why}") from None
        return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def _one_line(fn):
    """Data errors quote CSV cells and column names, which may hold line breaks: escape them, so
    that the CLI's one-line error stays one line."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DlcError as e:
            from dlc.errors import SpecError
            from dlc.spec.schema import one_line

            if isinstance(e, SpecError) or one_line(str(e)) == str(e):
                raise
            raise type(e)(one_line(str(e))) from None
    return wrapper


@_one_line
def load_model(path: str | Path, device: str = "cpu") -> Model:
    import onnx
    from google.protobuf.message import DecodeError

    from dlc.runtime.session import choose_device

    path = Path(path)
    if not path.is_file():
        raise DlcError(f"model file not found: {path}")
    try:  # protobuf decodes string fields lazily: invalid UTF-8 fails at p.key, not at load
        proto = onnx.load_model_from_string(path.read_bytes())
        meta = {p.key: p.value for p in proto.metadata_props}
    except (DecodeError, ValueError, RuntimeError) as e:  # UnicodeDecodeError is a ValueError
        raise DlcError(f"{path} is not a valid ONNX model ({type(e).__name__})") from None
    if "dlc.spec_resolved" not in meta:
        raise DlcError(f"{path} is not a dlc model (no dlc metadata); train one with dlc train")
    try:
        spec = json.loads(meta["dlc.spec_resolved"])
        labels = json.loads(meta.get("dlc.labels", "null"))
        features = json.loads(meta.get("dlc.features", "null"))
        text = json.loads(meta.get("dlc.text", "null"))
        categories = json.loads(meta.get("dlc.categories", "null"))
    except (ValueError, TypeError):  # bad JSON, or bytes (protobuf gives invalid UTF-8 as bytes)
        raise DlcError(f"{path}: corrupt dlc metadata") from None
    _check_meta(path, spec, labels, features, text, categories)
    kind, index, _ = choose_device(device)
    session = make_session(proto.SerializeToString(), kind, index)
    try:
        _check_outputs(path, session, spec["task"]["kind"], labels)
    except UnicodeDecodeError:  # an output name or dimension that is not UTF-8
        raise DlcError(f"{path} is not a valid ONNX model (UnicodeDecodeError)") from None
    return Model(path, session, spec, labels, features, text, categories)


def _check_meta(path: Path, spec, labels, features, text, categories) -> None:
    """The metadata must be what dlc writes: a spec that passes the schema, string lists."""
    from dlc.errors import SpecError
    from dlc.network import build_network
    from dlc.spec import Spec
    from dlc.spec.schema import render_path, validate

    if not isinstance(spec, dict):
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved is not a mapping)")
    problems = validate(spec)
    if problems:
        where = render_path(problems[0].path) or "the spec"
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved: {where}: "
                       f"{problems[0].message})")
    names = [layer.get("name") for layer in spec["layers"]]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names) \
            or not {"loss", "metrics"} <= set(spec["task"]):
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved lacks what dlc fills "
                       "in: unique layer names, task.loss, task.metrics)")
    try:  # and describes a network dlc builds (shapes, features per input, task)
        build_network(Spec(spec, "", str(path)))
    except SpecError as e:
        d = e.diagnostics[0]
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved: "
                       f"{d.path + ': ' if d.path else ''}{d.message})") from None
    for key, value in (("labels", labels), ("features", features)):
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise DlcError(f"{path}: corrupt dlc metadata (dlc.{key} is not a list of names)")
    flat = spec.get("input", {}).get("shape")
    if features is not None and flat is not None and len(features) != int(np.prod(flat)):
        raise DlcError(f"{path}: corrupt dlc metadata ({len(features)} feature names for "
                       f"input shape {flat})")
    for key, value in (("text", text), ("categories", categories)):
        if value is not None and not isinstance(value, dict):
            raise DlcError(f"{path}: corrupt dlc metadata (dlc.{key} is not a mapping)")


def _check_outputs(path: Path, session, kind: str, labels) -> None:
    """The graph has the outputs its task kind promises, and a class name per class."""
    outputs = {o.name: o.shape for o in session.get_outputs()}
    missing = [n for n in OUTPUTS[kind] if n not in outputs]
    if missing:
        raise DlcError(f"{path}: the model has no output '{missing[0]}' (a {kind} model has "
                       f"{', '.join(OUTPUTS[kind])}); corrupt or not made by dlc")
    if labels is not None and kind != "regression":
        shape = outputs["probabilities"]
        units = 2 if kind == "binary" else (shape[-1] if shape else None)
        if isinstance(units, int) and len(labels) != units:
            raise DlcError(f"{path}: corrupt dlc metadata ({len(labels)} class names for "
                           f"{units} classes)")


@_one_line
def evaluate(model: Model, source: str, batch_size: int = 1024) -> dict:
    from dlc.data import load_arrays
    from dlc.data.multi import read_multi

    if model.spec.get("inputs"):
        x, y = read_multi(source, model.spec, model.categories or {}, model.labels, True)
    else:
        x, y, _, _ = load_arrays(source, model.spec, Path.cwd(), require_target=True,
                                 labels=model.labels, origin="--data", text=model.text)
    out = model.run(x, batch_size)
    result = M.compute(model.kind, y, out["prediction" if model.kind == "regression" else "logits"])
    result["samples"] = int(len(x))
    return result


@_one_line
def predict(model: Model, input_path: str, batch_size: int = 1024) -> dict[str, np.ndarray]:
    from dlc.data import model_inputs
    from dlc.data.multi import read_multi

    if model.spec.get("inputs"):
        x, _ = read_multi(input_path, model.spec, model.categories or {}, model.labels, False)
    else:
        x = model_inputs(Path(input_path), model.spec, model.features, model.text)
    return model.run(x, batch_size)


def _columns(model: Model, out: dict[str, np.ndarray]) -> dict[str, list]:
    """Prediction table: class index, class name and one probability column per class."""
    if model.kind == "regression":
        pred = out["prediction"]
        return {f"prediction_{j}" if pred.shape[1] > 1 else "prediction": pred[:, j].tolist()
                for j in range(pred.shape[1])}
    idx, probs = out["class_index"], out["probabilities"]
    names = model.labels or [str(i) for i in range(max(probs.shape[1], 2))]
    cols = {"class_index": idx.tolist(), "label": [names[i] for i in idx]}
    if model.kind == "binary":
        cols[f"p_{names[1]}"] = probs[:, 0].tolist()
    else:
        cols.update({f"p_{names[j]}": probs[:, j].tolist() for j in range(probs.shape[1])})
    return cols


def write_predictions(model: Model, out: dict[str, np.ndarray], path: str | None) -> str | None:
    """Write csv, npz or json by extension; with no path return the csv text."""
    cols = _columns(model, out)
    suffix = Path(path).suffix.lower() if path else ".csv"
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in cols.items()})
        write_bytes(path, buf.getvalue())
        return None
    if suffix == ".json":
        rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
        write_text(path, json.dumps(rows, indent=1) + "\n")
        return None
    if suffix != ".csv":
        raise DlcError(f"unknown output format '{suffix}'; use .csv, .npz or .json")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for vals in zip(*cols.values()):
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in vals])
    if path is None:
        return buf.getvalue()
    write_text(path, buf.getvalue())
    return None
