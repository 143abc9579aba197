"""`dlc evaluate` and `dlc predict`: the exported model and its metadata, nothing else."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc.data import (_random_split, _split_config, graph_fills, model_inputs, parse_source,
                      read_columns, stream, table_arrays)
from dlc.data._common import fit_shape
from dlc.data.columns import entries
from dlc.data.multi import Columns, read_multi, read_npz_outputs
from dlc.data.text import text_config
from dlc.data.windows import window_config
from dlc.errors import DlcError, SpecError, UsageError
from dlc.files.untrusted import MAX_SPEC_BYTES, load_json, read_bytes, read_model
from dlc.model import metrics as M
from dlc.model.compile import OUTPUTS, output_name
from dlc.model.names import class_count, spec_heads
from dlc.model.network import build_network
from dlc.model.spec import Spec
from dlc.model.spec.schema import one_line, render_path, validate, without_filled_optimizer_fields
from dlc.runtime.predictions import check_rows, concat_rows
from dlc.runtime.predictions import prediction_rows, write_predictions  # noqa: F401 (their API)
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

    @property
    def data_dir(self) -> Path:
        """Where the spec's relative data paths point: the data folder in the run.json that
        dlc train wrote beside the model, else the working folder."""
        try:
            info = read_bytes(self.path.parent / "run.json", "run.json", MAX_SPEC_BYTES)
            return Path(load_json(info, "run.json")["data_dir"])
        except (DlcError, KeyError, TypeError):
            return Path.cwd()

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
            raise _escaped(e) from None
    return wrapper


def _escaped(e: DlcError) -> DlcError:
    if isinstance(e, SpecError) or one_line(str(e)) == str(e):
        return e
    return type(e)(one_line(str(e)))


def _one_line_parts(parts):
    """_one_line for a generator: its errors come while it is iterated."""
    try:
        yield from parts
    except DlcError as e:
        raise _escaped(e) from None


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
    own = _same_source(data.get("source"), model.data_dir, source) and not data.get("window") \
        and not (model.spec.get("inputs") or model.spec.get("outputs"))
    if split not in (None, "all") and not own:
        raise UsageError(f"--split {split} scores part of the model's own data source "
                         f"({data.get('source', 'none')}, a one-input, one-output model without "
                         f"data.window); use --split all with {source}")
    return split or ("test" if own and data.get("split", {}).get("test", 0) > 0 else "all")


def _same_source(own, data_dir: Path, given) -> bool:
    """Whether `given` (a --data source, paths from the working folder) is the model's own data
    source (`own`, paths from the spec's folder): the same builtin, or the same file or folder
    however either is written (csv:PATH or a bare path, relative or absolute)."""
    try:
        (kind, path), (given_kind, given_path) = parse_source(own), parse_source(str(given))
    except DlcError:
        return False
    if kind != given_kind or kind == "builtin":
        return (kind, path) == (given_kind, given_path)
    return (data_dir / Path(path).expanduser()).resolve() == Path(given_path).expanduser().resolve()


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
    output name), the sample count and which rows were scored (`scored`; see _rows). A table
    is streamed where _streamed can: only the outputs the metrics read and the targets are
    gathered, and the metrics computed from them as from a table read whole."""
    split = _own_split(model, source, split)
    parts = _streamed(model, source, True, "--data")
    if parts is not None:
        used = [output_name(h, "prediction" if t["kind"] == "regression" else "logits")
                for h, t in model.heads.items()]
        got = [(_pick(out, used), y) for out, y in _run_parts(model, parts, batch_size)]
        if not got:
            raise DlcError(f"{source}: no rows with a target")
        out, y = concat_rows([o for o, _ in got]), np.concatenate([y for _, y in got])
        n = len(y)
    else:
        x, y = _whole(model, source)
        out, n = None, len(x)
    rows, scored = _rows(model, source, split, y, n)
    if out is None:
        out = model.run(x if rows is None else x[rows], batch_size)
    elif rows is not None:
        out = {k: v[rows] for k, v in out.items()}
    y = y if rows is None else y[rows]
    result = {}
    for head, task in model.heads.items():
        kind = task["kind"]
        values = out[output_name(head, "prediction" if kind == "regression" else "logits")]
        result[head] = M.compute(kind, y[head] if head else y, values)
    flat = result.pop("") if "" in result else result
    return {**flat, "samples": int(len(y)), "scored": scored}


def _whole(model: Model, source: str):
    """(x, y) of a data source read whole (or memory-mapped through the data cache)."""
    if entries(model.spec):  # table columns by kind: raw columns in
        raw, y, _, _ = read_columns(source, model.spec, Path.cwd(), model.labels, True, "--data")
        return column_feeds(raw), y
    if _reads_columns(model.spec, source):
        return read_multi(source, model.spec, model.categories or {}, model.labels, True,
                          model.features)
    if model.spec.get("outputs"):  # one input, several outputs, an npz archive
        return read_npz_outputs(source, model.spec, Path.cwd(), model.labels)[:2]
    return table_arrays(source, model.spec, Path.cwd(), model.labels, "--data")[:2]


def _streamed(model: Model, source: str, require_target: bool, origin: str):
    """(inputs, targets or None) per record batch of a table the model reads streamed
    (dlc.data.stream): input.columns models, and numeric features of one float input; None for
    what is read whole (images, npz, windows, text, ids, named inputs)."""
    spec = model.spec
    if entries(spec):
        batches = stream.column_batches(str(source), spec, Path.cwd(), model.labels,
                                        require_target, origin)
        return None if batches is None else ((column_feeds(raw), y) for raw, y in batches)
    single = spec.get("input") or {}
    if _reads_columns(spec, source) or spec.get("outputs") or single.get("dtype") == "int64" \
            or text_config(spec) or window_config(spec.get("data") or {}) \
            or Path(source).is_dir():
        return None
    shape = [int(d) for d in single["shape"]]
    if require_target:
        batches = stream.feature_batches(str(source), spec, Path.cwd(), model.labels, origin)
    else:
        batches = stream.input_batches(Path(source), model.features, int(np.prod(shape)),
                                       graph_fills(spec))
        batches = None if batches is None else ((x, None) for x in batches)
    return None if batches is None else \
        ((fit_shape(x, shape, str(source)), y) for x, y in batches)


def _run_parts(model: Model, parts, batch_size: int):
    """(outputs, targets) per streamed part, the model run on the very row groups of batch_size
    a table read whole is run on (rows carried over from one part to the next), so that
    every output is the same bits."""
    held = None
    for x, y in parts:
        if held is not None:
            x = concat_rows([held[0], x])
            y = None if y is None else np.concatenate([held[1], y])
        whole = len(x) - len(x) % batch_size
        if whole:
            yield model.run(x[:whole], batch_size), None if y is None else y[:whole]
        held = (x[whole:], None if y is None else y[whole:])
    if held is not None and len(held[0]):
        yield model.run(held[0], batch_size), held[1]


def _pick(out: dict, names: list[str]) -> dict:
    return {k: out[k] for k in names}


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
    written to) bounds the row count before the model runs (see check_rows)."""
    x = predict_inputs(model, input_path)
    check_rows(len(x), output)
    return model.run(x, batch_size)


@_one_line
def predict_parts(model: Model, input_path: str, batch_size: int = 1024,
                  output: str | None = None):
    """predict's outputs, one mapping a streamed part of a table (dlc.data.stream; a CSV
    written as they come is bounded by nothing), else one mapping of every row."""
    parts = _streamed(model, input_path, False, "input file")
    if parts is None:
        return iter([predict(model, input_path, batch_size, output)])
    return _one_line_parts(out for out, _ in _run_parts(model, parts, batch_size))
