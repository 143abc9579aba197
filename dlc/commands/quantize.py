"""`dlc quantize`: an int8 copy of a trained model through onnxruntime.quantization.

dynamic: weights int8, activations quantized at run time (no data needed). static: weights and
activations int8 (QDQ format) with activation ranges calibrated (MinMax) on raw samples: `--data`,
or the training split of the model's own data source (its stored resolved spec,
`dlc.spec_resolved`). Only Gemm/MatMul/Conv are quantized statically, so probabilities and class
indices stay float/exact. Models with named `inputs:` are calibrated, timed and compared on all
of their inputs together (categorical ids pass through as ids); models with column kinds
(`input.columns`) on the raw columns of the table, which their own graph fills and encodes. The
model is pre-processed first (`quant_pre_process`: shape inference and graph optimisation; onnx
shape inference alone if that fails). Every `dlc.*` metadata entry is
copied over, plus `dlc.quantized`, so `dlc predict`/`dlc evaluate` work on the result.

The report compares the float and int8 models in one process: file size, inference samples/s on
the same batch (best of alternating rounds), and the metrics on the spec's test split, recreated
with `load_dataset` and de-normalised back to raw inputs (x * scale + offset), since the models
take raw inputs and normalise in-graph.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from dlc.data import _random_split, _split_config, load_arrays, load_dataset, read_columns
from dlc.data.columns import entries
from dlc.data.multi import Columns, read_multi
from dlc.data.text import text_config
from dlc.errors import DlcError, UsageError
from dlc.files.atomic import write_bytes
from dlc.files.untrusted import read_model
from dlc.model import metrics as M
from dlc.runtime.infer import column_feeds, load_model
from dlc.runtime.session import choose_device, make_session

MODES = ("dynamic", "static")
STATIC_OPS = ["Gemm", "MatMul", "Conv"]
CALIB_BATCH = 64


def denormalize(x: np.ndarray, norm: dict | None) -> np.ndarray:
    """Undo `apply_norm`: raw = x * scale + offset per flattened feature (float32)."""
    x = np.asarray(x)  # a split kept raw (dlc.data.stats.Rows) gives its normalised rows
    if norm is None:
        return x
    offset = np.asarray(norm["offset"], np.float64)
    scale = np.asarray(norm["scale"], np.float64)
    flat = x.reshape(len(x), -1).astype(np.float64)
    return (flat * scale + offset).astype(np.float32).reshape(x.shape)


def raw_inputs(x, norm):
    """`denormalize` of one input, or of each input of a `Columns` mapping (norm by input
    name; categorical ids have none and stay ids)."""
    if isinstance(x, Columns):
        return Columns({k: denormalize(v, (norm or {}).get(k)) for k, v in x.items()})
    return denormalize(x, norm)


def spec_splits(model) -> tuple:
    """(raw training inputs, (raw test inputs, test targets) or None) of the model's own data
    (inputs: one array, or `Columns` by input name for `inputs:` models; the raw texts of a
    text model, split as in training)."""
    data = model.spec["data"]
    if entries(model.spec):  # column kinds: the raw columns the graph takes, split as trained
        x, y = column_rows(model, data["source"], model.data_dir, True)
        train, _, test = _random_split(model.spec, y, len(y), _split_config(data))
        return x[train], ((x[test], y[test]) if len(test) else None)
    if text_config(model.spec) is not None:
        x, y, _, _ = load_arrays(data["source"], model.spec, model.data_dir,
                                 labels=model.labels)
        train, _, test = _random_split(model.spec, y, len(x), _split_config(data))
        return x[train], ((x[test], y[test]) if len(test) else None)
    ds = load_dataset(model.spec, model.data_dir)
    test = (raw_inputs(ds.test.x, ds.norm), ds.test.y) if ds.test is not None else None
    return raw_inputs(ds.train.x, ds.norm), test


def read_source(model, source: str) -> tuple:
    """(raw inputs, targets or None) of a --data source, read for the model as dlc evaluate
    reads one (named CSV columns for `inputs:` models, raw columns for column kinds)."""
    if entries(model.spec):
        return column_rows(model, source, Path.cwd(), False)
    if model.spec.get("inputs"):
        return read_multi(source, model.spec, model.categories or {}, model.labels, False)
    x, y, _, _ = load_arrays(source, model.spec, Path.cwd(), require_target=False,
                             labels=model.labels, origin="--data")
    return x, y


def column_rows(model, source: str, folder: Path, need_target: bool) -> tuple:
    """(raw columns as the graph takes them, targets or None) of a column-kinds model's table:
    calibration then sees the raw cells, and the graph's own encoding of them."""
    raw, y, _, _ = read_columns(source, model.spec, folder, model.labels, need_target,
                                "--data" if folder == Path.cwd() else "data.source in spec")
    return column_feeds(raw), y


def _samples(model, data: str | None, need_calib: bool) -> tuple:
    """(calibration inputs or None, (x, y, description) for the comparison or None, notes)."""
    notes, calib, evaluation = [], None, None
    try:
        train_x, test = spec_splits(model)
        calib = train_x
        if test is not None:
            evaluation = (*test, "test split of the spec's data")
    except DlcError as e:
        if need_calib and data is None:
            raise DlcError(f"cannot load the model's data for calibration ({e}); pass --data")
        notes.append(f"the spec's data did not load ({e})")
    if data is not None:
        x, y = read_source(model, data)
        calib = x
        if evaluation is None and y is not None:
            evaluation = (x, y, f"{data} (all samples)")
    return calib, evaluation, notes


def feed_of(x) -> dict[str, np.ndarray]:
    """The session feed of model inputs: one array is the input `input`."""
    return dict(x) if isinstance(x, dict) else {"input": x}


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over fixed batches."""

    def __init__(self, x):
        self.batches = iter([feed_of(x[i:i + CALIB_BATCH]) for i in range(0, len(x), CALIB_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def calibration_set(x, count: int, seed: int = 0):
    """`count` samples of x (an array or `Columns`) in a seeded random order (all of them when
    fewer)."""
    idx = np.random.default_rng(seed).permutation(len(x))[:count]
    return x[np.sort(idx)]


def _preprocess(src: Path, dst: Path) -> str:
    """ORT's recommended pre-processing (onnx shape inference and basic graph optimisation);
    plain onnx shape inference when it fails. Symbolic shape inference is skipped: dlc graphs
    have static per-sample shapes, and importing it loads torch when torch is installed."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return "quant_pre_process"
    except Exception as e:  # noqa: BLE001 - symbolic shape inference fails on some graphs
        onnx.shape_inference.infer_shapes_path(str(src), str(dst))
        return f"onnx shape inference (quant_pre_process failed: {type(e).__name__})"


def _prune_opsets(model) -> None:
    """Drop opset imports of domains no node uses (pre-processing adds every ORT domain)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _run_ort(pre: Path, out: Path, mode: str, calib):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
    else:
        quantize_static(str(pre), str(out), _Reader(calib),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=STATIC_OPS,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def quantized_model(src: Path, mode: str, calib):
    """The int8 ModelProto with the source model's metadata; and how it was pre-processed."""
    import onnx

    source = read_model(src)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization warns through the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="dlc-quant-") as tmp:
            pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            how = _preprocess(src, pre)
            try:
                _run_ort(pre, out, mode, calib)
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors share no base class
                raise DlcError(f"onnxruntime cannot quantize {src}: {str(e).splitlines()[0]}")
            model = onnx.load(str(out))
    finally:
        root.setLevel(level)
    _prune_opsets(model)
    del model.metadata_props[:]
    for p in source.metadata_props:
        model.metadata_props.add(key=p.key, value=p.value)
    return model, how


def throughput(sessions: list, x, rounds: int = 5, seconds: float = 0.2) -> list[float]:
    """Samples/s of each session on the same batch x: alternating rounds, best of each."""
    best, feed = [0.0] * len(sessions), feed_of(x)
    for s in sessions:
        s.run(None, feed)  # warm-up
    for _ in range(rounds):
        for k, s in enumerate(sessions):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                s.run(None, feed)
                n += 1
            best[k] = max(best[k], n * len(x) / (time.perf_counter() - t0))
    return best


def _scores(model, x, y: np.ndarray) -> tuple[dict, np.ndarray]:
    out = model.run(x)
    values = out["prediction" if model.kind == "regression" else "logits"]
    result = M.compute(model.kind, y, values)
    result.pop("confusion_matrix", None)
    return result, out.get("class_index", values)


def compare(before, after, evaluation) -> dict:
    """Metrics of both models on the evaluation data, and how often they agree."""
    x, y, where = evaluation
    m0, p0 = _scores(before, x, y)
    m1, p1 = _scores(after, x, y)
    result = {"data": where, "samples": int(len(x)), "before": m0, "after": m1}
    if before.kind == "regression":
        result["max_abs_change"] = float(np.abs(p0 - p1).max())
    else:
        result["agreement"] = float((p0 == p1).mean())
    return result


def _bench_batch(evaluation, calib, size: int = 1024):
    """`size` samples (repeated as needed) of the evaluation or calibration inputs."""
    x = evaluation[0] if evaluation is not None else calib
    if x is None or not len(x):
        return None
    return x[np.arange(size) % len(x)]


def _source_model(src: Path, out: Path, device: str):
    """The float model, checked for what dlc quantize handles."""
    before = load_model(src, device)
    _ = before.kind  # a one-output model: Model.kind says so in one line otherwise
    if not out.parent.is_dir():
        raise DlcError(f"output folder {out.parent} does not exist")
    return before


def _pick(before, built: dict, batch, seconds: float, device: str) -> tuple[str, dict]:
    """(the fastest mode, samples/s by "float" and mode) on the comparison batch. Static
    quantization can be slower than float (QDQ around each Conv: 0.40x on a CNN), so with no
    --mode each candidate is measured. No batch: no data, so dynamic is the one candidate."""
    if batch is None:
        return next(iter(built)), {}
    where = choose_device(device)[:2]
    sessions = [make_session(m.SerializeToString(), *where) for m, _ in built.values()]
    speed = throughput([before.session, *sessions], batch, seconds=seconds)
    speeds = {"float": speed[0], **dict(zip(built, speed[1:]))}
    return max(built, key=speeds.get), speeds


def quantize(model_path: str, output: str, mode: str | None = None, data: str | None = None,
             calibration: int = 256, bench_seconds: float = 0.2, device: str = "cpu") -> dict:
    """Write the int8 model to `output`; return the before/after report (both models run on
    `device`). Without `mode`, the faster of dynamic and static (static when the inputs are
    floats and data loads)."""
    if mode is not None and mode not in MODES:
        raise UsageError(f"unknown --mode '{mode}'; use dynamic or static")
    if calibration < 1:
        raise UsageError("--calibration must be at least 1")
    src, out = Path(model_path), Path(output)
    before = _source_model(src, out, device)
    calib, evaluation, notes = _samples(before, data, mode == "static")
    calib = calibration_set(calib, calibration) if calib is not None else None
    floats = calib is not None and any(v.dtype == np.float32 for v in feed_of(calib).values())
    if mode == "static" and not floats:
        raise DlcError("--mode static needs float inputs; this model takes token ids")
    built = {m: quantized_model(src, m, calib if m == "static" else None)
             for m in ([mode] if mode else ["dynamic", "static"] if floats else ["dynamic"])}
    batch = _bench_batch(evaluation, calib)
    chosen, speeds = _pick(before, built, batch, bench_seconds, device)
    model, how = built[chosen]
    info = {"mode": chosen, "calibration": int(len(calib)) if chosen == "static" else 0}
    model.metadata_props.add(key="dlc.quantized", value=json.dumps(info, sort_keys=True))
    write_bytes(out, model.SerializeToString())
    after = load_model(out, device)
    report = {"model": str(src), "output": str(out), **info, "preprocess": how, "notes": notes,
              "shown": list(before.spec["task"]["metrics"]), "chosen_by": mode or "speed",
              "bytes_before": src.stat().st_size, "bytes_after": out.stat().st_size}
    if speeds:
        report.update(batch=int(len(batch)), samples_per_s_before=speeds["float"],
                      samples_per_s_after=speeds[chosen], samples_per_s=speeds)
    if evaluation is not None:
        report["metrics"] = compare(before, after, evaluation)
    return report


def _speed_notes(report: dict, ratio: float) -> list[str]:
    """Which mode was chosen and why; a warning when int8 runs slower than float."""
    lines = []
    speeds = {m: s for m, s in report["samples_per_s"].items() if m != "float"}
    if report["chosen_by"] == "speed" and len(speeds) > 1:
        shown = ", ".join(f"{m} {s:,.0f}" for m, s in speeds.items())
        lines.append(f"mode: {report['mode']}, the faster int8 model here ({shown} samples/s); "
                     "choose with --mode")
    if ratio < 1:
        lines.append(f"note: the int8 model runs at {ratio:.2f}x the float model's speed on this "
                     f"CPU; it is {report['bytes_after'] / report['bytes_before']:.2f}x the size")
    return lines


def render(report: dict) -> list[str]:
    """The report as printed lines (the spec's task metrics, as `dlc train` shows them)."""
    b0, b1 = report["bytes_before"], report["bytes_after"]
    lines = [f"wrote {report['output']} ({report['mode']}"
             + (f", {report['calibration']} calibration samples" if report["calibration"] else "")
             + ")", f"size: {b0:,} -> {b1:,} bytes ({b1 / b0:.2f}x)"]
    if "batch" in report:
        s0, s1 = report["samples_per_s_before"], report["samples_per_s_after"]
        lines.append(f"speed (batch {report['batch']}, CPU): {s0:,.0f} -> {s1:,.0f} samples/s "
                     f"({s1 / s0:.2f}x)")
        lines += _speed_notes(report, s1 / s0)
    m = report.get("metrics")
    if m:
        lines.append(f"metrics on {m['data']} ({m['samples']} samples):")
        for key in [k for k in report["shown"] if k in m["before"]]:
            v0, v1 = m["before"][key], m["after"][key]
            lines.append(f"  {key}: {v0:.4f} -> {v1:.4f} ({v1 - v0:+.4f})")
        if "agreement" in m:
            lines.append(f"  same predicted class: {m['agreement']:.4f}")
    lines += [f"note: {n}" for n in report["notes"]]
    if not m:
        lines.append("no metric comparison (no data with targets)")
    return lines


def command(model: str, output: str, mode: str | None, data: str | None, calibration: int,
            device: str) -> None:
    for line in render(quantize(model, output, mode, data, calibration, device=device)):
        print(line)
