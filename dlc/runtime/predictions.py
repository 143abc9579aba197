"""The prediction table of `dlc predict` (and `dlc serve`): class index, class name and
probabilities, or regression values, per output; written as CSV (streamed, CSV_ROWS rows of
text at a time, part after part of a streamed table), npz or JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from dlc.errors import DlcError
from dlc.files.atomic import atomic_open, write_bytes, write_text
from dlc.model.compile import output_name


def concat_rows(parts):
    """Arrays, or mappings of arrays (Columns, outputs by name), joined along rows."""
    first = parts[0]
    if isinstance(first, dict):
        return type(first)({k: np.concatenate([p[k] for p in parts]) for k in first})
    return np.concatenate(parts)


# CSV and JSON predictions turn every value into a Python object and then text (about 100 bytes
# a value): a small compressed npz input could otherwise ask for gigabytes. npz output is arrays.
MAX_TEXT_ROWS = 1_000_000


def _format(path: str | None) -> str:
    suffix = Path(path).suffix.lower() if path else ".csv"
    if suffix not in (".csv", ".npz", ".json"):
        raise DlcError(f"unknown output format '{suffix}'; use .csv, .npz or .json")
    return suffix


def check_rows(n: int, path: str | None) -> None:
    if n > MAX_TEXT_ROWS and _format(path) != ".npz":
        raise DlcError(f"{n:,} samples: CSV and JSON predictions hold at most {MAX_TEXT_ROWS:,} "
                       "rows (MAX_TEXT_ROWS); write them with -o predictions.npz")


def _columns(model, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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


def prediction_rows(model, out: dict[str, np.ndarray]) -> list[dict]:
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


def write_predictions(model, out, path: str | None, inputs: list[str] | None = None):
    """Write csv, npz or json by extension; with no path return the csv text as an iterator of
    chunks (for stdout). `out`: the outputs, or an iterator of them (predict_parts), written
    as they come to a CSV, gathered for npz and json (a few numbers a row). `inputs` (the
    image files predicted) become a first column `path`."""
    parts = iter([out] if isinstance(out, dict) else out)
    suffix = _format(path)
    if suffix != ".csv":
        out = concat_rows(list(parts))
        cols = {**({"path": np.asarray(inputs)} if inputs else {}), **_columns(model, out)}
        check_rows(len(next(iter(cols.values()))), path)
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, **cols)
        write_bytes(path, buf.getvalue())
        return None
    if suffix == ".json":
        write_text(path, json.dumps(_records({k: v.tolist() for k, v in cols.items()}),
                                    indent=1) + "\n")
        return None
    tables = ({**({"path": np.asarray(inputs)} if inputs else {}), **_columns(model, o)}
              for o in parts)  # image paths: images are never streamed, one part
    if path is None:
        return _csv_chunks(tables)
    with atomic_open(path, "wb") as f:
        for chunk in _csv_chunks(tables):
            f.write(chunk.encode())
    return None


CSV_ROWS = 8192  # rows turned into text at a time: the whole table never is


def _csv_chunks(tables):
    """The prediction tables (one a streamed part) as CSV text, the header first, then CSV_ROWS
    rows at a time."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for k, cols in enumerate(tables):
        if any(v.ndim > 1 for v in cols.values()):
            raise DlcError("this model predicts a class per token: write the predictions with "
                           "-o predictions.json or -o predictions.npz")
        if k == 0:
            writer.writerow([_cell(c) for c in cols])
        n = len(next(iter(cols.values())))
        for lo in range(0, max(n, 1), CSV_ROWS):
            part = [v[lo:lo + CSV_ROWS].tolist() for v in cols.values()]
            writer.writerows([_cell(v) for v in row] for row in zip(*part))
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
