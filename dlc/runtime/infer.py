"""`dlc evaluate` and `dlc predict`: the exported model and its metadata, nothing else."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc import metrics as M
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
        parts = [self.session.run(None, feed(x[i:i + batch_size]))
                 for i in range(0, len(x), batch_size)]
        return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def load_model(path: str | Path, device: str = "cpu") -> Model:
    import onnx
    from google.protobuf.message import DecodeError

    from dlc.runtime.session import choose_device

    path = Path(path)
    if not path.is_file():
        raise DlcError(f"model file not found: {path}")
    try:
        proto = onnx.load_model_from_string(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as e:
        raise DlcError(f"{path} is not a valid ONNX model ({type(e).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if "dlc.spec_resolved" not in meta:
        raise DlcError(f"{path} is not a dlc model (no dlc metadata); train one with dlc train")
    try:
        spec = json.loads(meta["dlc.spec_resolved"])
        labels = json.loads(meta.get("dlc.labels", "null"))
        features = json.loads(meta.get("dlc.features", "null"))
        text = json.loads(meta.get("dlc.text", "null"))
        categories = json.loads(meta.get("dlc.categories", "null"))
    except json.JSONDecodeError:
        raise DlcError(f"{path}: corrupt dlc metadata") from None
    kind, index, _ = choose_device(device)
    return Model(path, make_session(proto.SerializeToString(), kind, index), spec, labels, features,
                 text, categories)


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
