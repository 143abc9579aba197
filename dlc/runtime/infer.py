"""`dlc evaluate` and `dlc predict`: the exported model and its metadata, nothing else."""

from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc.data import _random_split, _split_config, model_inputs, read_columns, table_arrays
from dlc.data.columns import entries
from dlc.data.multi import Columns, read_multi, read_npz_outputs
from dlc.errors import DlcError, SpecError, UsageError
from dlc.files.atomic import atomic_open, write_bytes, write_text
from dlc.files.untrusted import load_json, read_model
from dlc.model import metrics as M
from dlc.model.compile import OUTPUTS, output_name
from dlc.model.names import class_count, spec_heads
from dlc.model.network import build_network
from dlc.model.spec import Spec
from dlc.model.spec.schema import one_line, render_path, validate, without_filled_optimizer_fields
from dlc.runtime.session import choose_device, make_session


@dataclass
class Model:
    path: Path
    session: object
    spec: dict
    labels: list[str] | dict | None  # class names; by output name for `outputs:` models
    features: list[str] | None
    categories: dict | None = None  # several inputs: category table (dlc.categories)

    @property
    def heads(self) -> dict[str, dict]:
        """Output name ("" for a `task:` model) -> its task."""
        return spec_heads(self.spec)

    @property
    def kind(self) -> str:
        """The task kind of a one-output model; one line for code that handles only those."""
        if "task" not in self.spec:
            raise DlcError(f"{self.path}: this works on models with one output (`task:`); "
                           f"this one has outputs: {', '.join(self.heads)}")
        return self.spec["task"]["kind"]

    def labels_of(self, head: str) -> list[str] | None:
        return (self.labels or {}).get(head) if head else self.labels

    def run(self, x: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
        """The outputs by name. onnxruntime's own log of a failed run (a coloured line on
        stderr) is silenced, as for the CUDA probe: dlc's one-line error says it."""
        import onnxruntime as ort

        names = [o.name for o in self.session.get_outputs()]
        feed = lambda xb: dict(xb) if isinstance(xb, dict) else {"input": xb}  # noqa: E731
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # fatal only
        try:
            parts = [self.session.run(None, feed(x[i:i + batch_size]), quiet)
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
            if isinstance(e, SpecError) or one_line(str(e)) == str(e):
                raise
            raise type(e)(one_line(str(e))) from None
    return wrapper


@_one_line
def load_model(path: str | Path, device: str = "cpu") -> Model:
    path = Path(path)
    proto = read_model(path)
    try:  # protobuf decodes string fields lazily: invalid UTF-8 fails at p.key, not at load
        meta = {p.key: p.value for p in proto.metadata_props}
    except ValueError as e:  # UnicodeDecodeError is a ValueError
        raise DlcError(f"{path} is not a valid ONNX model ({type(e).__name__})") from None
    if "dlc.spec_resolved" not in meta:
        raise DlcError(f"{path} is not a dlc model (no dlc metadata); train one with dlc train")
    # bad JSON, too deep, or bytes (protobuf gives invalid UTF-8 as bytes): one line each
    spec, labels, features, text, categories = (
        load_json(meta.get(f"dlc.{key}", "null"), f"{path}: corrupt dlc metadata: dlc.{key}")
        for key in ("spec_resolved", "labels", "features", "text", "categories"))
    _check_meta(path, spec, labels, features, text, categories)
    kind, index, _ = choose_device(device)
    session = make_session(proto.SerializeToString(), kind, index)
    _check_text_input(path, session, spec)
    try:
        for head, task in spec_heads(spec).items():
            _check_outputs(path, session, head, task["kind"],
                           labels.get(head) if head and labels else labels)
    except UnicodeDecodeError:  # an output name or dimension that is not UTF-8
        raise DlcError(f"{path} is not a valid ONNX model (UnicodeDecodeError)") from None
    return Model(path, session, spec, labels, features, categories)


def _check_meta(path: Path, spec, labels, features, text, categories) -> None:
    """The metadata must be what dlc writes: a spec that builds, string lists, mappings."""
    _check_spec(path, spec)
    names_ok = lambda v: v is None or isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
    if "outputs" in spec and labels is not None:  # {output: class names or None}
        if not isinstance(labels, dict) or not all(names_ok(v) for v in labels.values()):
            raise DlcError(f"{path}: corrupt dlc metadata (dlc.labels is not a mapping of "
                           "outputs to class names)")
    elif not names_ok(labels):
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.labels is not a list of names)")
    if not names_ok(features):
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.features is not a list of names)")
    flat = spec.get("input", {}).get("shape")
    if features is not None and flat is not None and len(features) != int(np.prod(flat)):
        raise DlcError(f"{path}: corrupt dlc metadata ({len(features)} feature names for "
                       f"input shape {flat})")
    for key, value in (("text", text), ("categories", categories)):
        if value is not None and not isinstance(value, dict):
            raise DlcError(f"{path}: corrupt dlc metadata (dlc.{key} is not a mapping)")


def _check_spec(path: Path, spec) -> None:
    """dlc.spec_resolved passes the schema, holds what dlc fills in, and builds a network."""
    if not isinstance(spec, dict):
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved is not a mapping)")
    problems = validate(without_filled_optimizer_fields(spec))  # models of older dlc versions
    if problems:
        where = render_path(problems[0].path) or "the spec"
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved: {where}: "
                       f"{problems[0].message})")
    if "blocks" in spec or any(layer.get("type") == "block" for layer in spec["layers"]):
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved holds blocks, which dlc "
                       "expands before it writes a model)")
    names = [layer.get("name") for layer in spec["layers"]]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names) \
            or ("task" in spec) == ("outputs" in spec) \
            or not all({"loss", "metrics"} <= set(t) for t in spec_heads(spec).values()) \
            or not all({"layer", "target"} <= set(t) for t in spec.get("outputs", {}).values()):
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved lacks what dlc fills "
                       "in: unique layer names, task.loss, task.metrics)")
    if "base" in spec:  # its network needs the base file, which the model no longer does
        return
    try:  # and describes a network dlc builds (shapes, features per input, task)
        build_network(Spec(spec, "", str(path)))
    except SpecError as e:
        d = e.diagnostics[0]
        raise DlcError(f"{path}: corrupt dlc metadata (dlc.spec_resolved: "
                       f"{d.path + ': ' if d.path else ''}{d.message})") from None


def _check_text_input(path: Path, session, spec: dict) -> None:
    """A text model (data.text) takes the raw text: its graph tokenises it (text_front)."""
    if (spec.get("data") or {}).get("text") is None:
        return
    if [i.type for i in session.get_inputs()] != ["tensor(string)"]:
        raise DlcError(f"{path}: this text model takes token ids, not raw text (made by a dlc "
                       "before the tokenizer moved into the graph); train it again")


def _check_outputs(path: Path, session, head: str, kind: str, labels) -> None:
    """The graph has the outputs its task kind promises, and a class name per class."""
    outputs = {o.name: o.shape for o in session.get_outputs()}
    promised = [output_name(head, n) for n in OUTPUTS[kind]]
    missing = [n for n in promised if n not in outputs]
    if missing:
        raise DlcError(f"{path}: the model has no output '{missing[0]}' (a {kind} "
                       f"{'output' if head else 'model'} has {', '.join(promised)}); corrupt or "
                       "not made by dlc")
    if labels is not None and kind != "regression":
        shape = outputs[output_name(head, "probabilities")]
        units = class_count(kind, shape[-1] if shape else None)
        if isinstance(units, int) and len(labels) != units:
            raise DlcError(f"{path}: corrupt dlc metadata ({len(labels)} class names for "
                           f"{units} classes)")


def _reads_columns(spec: dict, source) -> bool:
    """Models whose inputs and targets are named CSV columns (data/multi.py); an npz file for
    an `input:` + `outputs:` model holds arrays instead. `source`: a path or `npz:PATH`."""
    npz = str(source).startswith("npz:") or Path(source).suffix.lower() == ".npz"
    return bool(spec.get("inputs") or (spec.get("outputs") and not npz))


def column_feeds(raw: dict[str, np.ndarray]) -> Columns:
    """The raw columns as the exported graph takes them: float32 numbers (NaN: missing), and
    the text of every other cell (dlc.model.columns)."""
    return Columns({k: v.astype(np.float32) if v.dtype != object else v for k, v in raw.items()})


SPLITS = ("test", "val", "train", "all")


def _own_split(model: Model, source, split: str | None) -> str:
    """The split to score: the model's own data source is split as in training (same seed, same
    stratification), so that by default its test split is scored, not rows the model was trained
    on; any other source is scored whole."""
    data = model.spec.get("data") or {}
    own = str(source) == data.get("source") and not data.get("window") \
        and not (model.spec.get("inputs") or model.spec.get("outputs"))
    if split not in (None, "all") and not own:
        raise UsageError(f"--split {split} scores part of the model's own data source "
                         f"({data.get('source', 'none')}, a one-input, one-output model without "
                         f"data.window); use --split all with {source}")
    return split or ("test" if own and data.get("split", {}).get("test", 0) > 0 else "all")


def _rows(model: Model, source, split: str, y, n: int) -> tuple[np.ndarray | None, str]:
    """The row indices of `split` (None: all) and the words for them."""
    if split == "all":
        return None, f"all {n} rows of {source}"
    data = model.spec["data"]
    parts = dict(zip(("train", "val", "test"), _random_split(model.spec, y, n,
                                                             _split_config(data))))
    if not len(parts[split]):
        raise UsageError(f"the model's data has no {split} split (data.split)")
    tested = "; the split the model was tested on" if split == "test" else ""
    return parts[split], f"the {split} split of {source} ({len(parts[split])} of {n} rows{tested})"


@_one_line
def evaluate(model: Model, source: str, batch_size: int = 1024, split: str | None = None) -> dict:
    """Metrics of each output (a `task:` model: one flat mapping; `outputs:`: one mapping per
    output name), the sample count and which rows were scored (`scored`; see _rows)."""
    split = _own_split(model, source, split)
    if entries(model.spec):  # table columns by kind: raw columns in
        raw, y, _, _ = read_columns(source, model.spec, Path.cwd(), model.labels, True, "--data")
        x = column_feeds(raw)
    elif _reads_columns(model.spec, source):
        x, y = read_multi(source, model.spec, model.categories or {}, model.labels, True,
                          model.features)
    elif model.spec.get("outputs"):  # one input, several outputs, an npz archive
        x, y, _ = read_npz_outputs(source, model.spec, Path.cwd(), model.labels)
    else:
        x, y, _, _ = table_arrays(source, model.spec, Path.cwd(), model.labels, "--data")
    rows, scored = _rows(model, source, split, y, len(x))
    if rows is not None:
        x, y = x[rows], y[rows]
    out = model.run(x, batch_size)
    result = {}
    for head, task in model.heads.items():
        kind = task["kind"]
        values = out[output_name(head, "prediction" if kind == "regression" else "logits")]
        result[head] = M.compute(kind, y[head] if head else y, values)
    flat = result.pop("") if "" in result else result
    return {**flat, "samples": int(len(x)), "scored": scored}


@_one_line
def predict_inputs(model: Model, input_path: str):
    """The model's raw inputs from a file, as `dlc predict` reads them: one array, or
    `Columns` by input name for `inputs:`/`outputs:` models and by column for `input.columns`
    models (`dlc serve` reads CSV uploads through this too)."""
    if entries(model.spec):  # table columns by kind: raw columns in
        raw, _, _, _ = read_columns(input_path, model.spec, Path.cwd(), model.labels, False,
                                    "input file")
        return column_feeds(raw)
    if _reads_columns(model.spec, input_path):
        x, _ = read_multi(input_path, model.spec, model.categories or {}, model.labels, False,
                          model.features)
        return x
    return model_inputs(Path(input_path), model.spec, model.features)


def predict(model: Model, input_path: str, batch_size: int = 1024,
            output: str | None = None) -> dict[str, np.ndarray]:
    """The model's outputs on the raw inputs in `input_path`; `output` (the path they will be
    written to) bounds the row count before the model runs (see _check_rows)."""
    x = predict_inputs(model, input_path)
    _check_rows(len(x), output)
    return model.run(x, batch_size)


# CSV and JSON predictions turn every value into a Python object and then text (about 100 bytes
# a value): a small compressed npz input could otherwise ask for gigabytes. npz output is arrays.
MAX_TEXT_ROWS = 1_000_000


def _format(path: str | None) -> str:
    suffix = Path(path).suffix.lower() if path else ".csv"
    if suffix not in (".csv", ".npz", ".json"):
        raise DlcError(f"unknown output format '{suffix}'; use .csv, .npz or .json")
    return suffix


def _check_rows(n: int, path: str | None) -> None:
    if n > MAX_TEXT_ROWS and _format(path) != ".npz":
        raise DlcError(f"{n:,} samples: CSV and JSON predictions hold at most {MAX_TEXT_ROWS:,} "
                       "rows (MAX_TEXT_ROWS); write them with -o predictions.npz")


def _columns(model: Model, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Prediction table, per output: class index, class name and one probability column per
    class, or the regression values. Columns of `outputs:` models start with `<output>.`."""
    cols = {}
    for head, task in model.heads.items():
        name = lambda c: output_name(head, c)  # noqa: E731
        if task["kind"] == "regression":
            pred = out[name("prediction")]
            cols.update({name(f"prediction_{j}" if pred.shape[1] > 1 else "prediction"):
                         pred[:, j] for j in range(pred.shape[1])})
            continue
        idx, probs = out[name("class_index")], out[name("probabilities")]
        labels = model.labels_of(head) or [str(i) for i in range(max(probs.shape[-1], 2))]
        cols.update({name("class_index"): idx, name("label"): np.asarray(labels)[idx]})
        if idx.ndim > 1:  # a class per token: [n, T] indices, [n, T, classes] probabilities
            cols[name("probabilities")] = probs
        elif task["kind"] == "binary":
            cols[name(f"p_{labels[1]}")] = probs[:, 0]
        else:
            cols.update({name(f"p_{labels[j]}"): probs[:, j] for j in range(probs.shape[1])})
    return cols


def prediction_rows(model: Model, out: dict[str, np.ndarray]) -> list[dict]:
    """One mapping per sample, the prediction table's columns as keys (`dlc predict -o
    x.json`, and what `dlc serve` answers)."""
    return _records({k: v.tolist() for k, v in _columns(model, out).items()})


def _records(cols: dict[str, list]) -> list[dict]:
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


# Cells a spreadsheet would run as a formula (OWASP "CSV injection"): class names come from the
# training data, so a label `=HYPERLINK(...)` is prefixed with ' and shown as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_predictions(model: Model, out: dict[str, np.ndarray], path: str | None,
                      inputs: list[str] | None = None):
    """Write csv, npz or json by extension; with no path return the csv text as an iterator of
    chunks (for stdout). `inputs` (the image files predicted) become a first column `path`."""
    cols = {**({"path": np.asarray(inputs)} if inputs else {}), **_columns(model, out)}
    suffix = _format(path)
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, **cols)
        write_bytes(path, buf.getvalue())
        return None
    _check_rows(len(next(iter(cols.values()))), path)
    if suffix == ".json":
        write_text(path, json.dumps(_records({k: v.tolist() for k, v in cols.items()}),
                                    indent=1) + "\n")
        return None
    if any(v.ndim > 1 for v in cols.values()):
        raise DlcError("this model predicts a class per token: write the predictions with "
                       "-o predictions.json or -o predictions.npz")
    if path is None:
        return _csv_chunks(cols)
    with atomic_open(path, "wb") as f:
        for chunk in _csv_chunks(cols):
            f.write(chunk.encode())
    return None


CSV_ROWS = 8192  # rows turned into text at a time: the whole table never is


def _csv_chunks(cols: dict[str, np.ndarray]):
    """The prediction table as CSV text, the header first, then CSV_ROWS rows at a time."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([_cell(c) for c in cols])
    n = len(next(iter(cols.values())))
    for lo in range(0, max(n, 1), CSV_ROWS):
        part = [v[lo:lo + CSV_ROWS].tolist() for v in cols.values()]
        writer.writerows([_cell(v) for v in row] for row in zip(*part))
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
