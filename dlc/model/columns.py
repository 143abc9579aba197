"""The in-graph front of a table input with column kinds (`input.columns`): the exported model
takes the raw columns (one input per column: float32 [N] with NaN for a missing number, a string
tensor [N] for a categorical, binary or text column) and encodes them exactly as
dlc.data.columns.encode does for training, in standard ONNX plus ai.onnx.ml's LabelEncoder, so a
plain onnxruntime session fed the raw CSV values answers what `dlc predict` does.

Its only input is the encoder state (JSON, stored in the model as dlc.columns); the category
tables come from dlc.data.columns.category_table, the one definition both sides use.
"""

from __future__ import annotations

import numpy as np
import onnx

from dlc.data.columns import category_table
from dlc.graph import Builder
from dlc.graph.builder import ML_DOMAIN
from dlc.model.text_front import text_front


def _numeric(b: Builder, x: str, c: dict) -> tuple[list[str], str]:
    """[N, 1]: filled, then normalised; and where the cell was missing (for the indicator)."""
    value = b.Unsqueeze(x, b.const([1]))
    absent = b.IsNaN(value)
    if c["fill"] is not None:
        value = b.Where(absent, b.const(np.float32(c["fill"])), value)
    scaled = b.Div(b.Sub(value, b.const(np.float32(c["offset"]))), b.const(np.float32(c["scale"])))
    return [scaled], absent


def _categories(b: Builder, x: str, c: dict, markers: list[str]) -> tuple[list[str], str]:
    """One-hot [N, values + 1], a 0/1 [N, 1] (binary) or an id [N, 1] (embedding), as float;
    and where the cell was missing. Unused tensors are pruned by the builder."""
    keys, ids, default = category_table(c, markers)
    found = b.op("LabelEncoder", x, domain=ML_DOMAIN, keys_strings=keys, values_int64s=ids,
                 default_int64=default)
    found = b.Unsqueeze(found, b.const([1]))
    if c["kind"] == "binary":
        out = b.Cast(found, to=b.float_code)
    elif c.get("embedding"):  # the id, after the ids of the columns before it
        out = b.Cast(b.Add(found, b.const(np.int64(c["offset"]))), to=b.float_code)
    else:
        slots = b.const(np.arange(len(c["values"]) + 1, dtype=np.int64)[None])
        out = b.Cast(b.Equal(found, slots), to=b.float_code)
    known = c["values"] if c["kind"] == "binary" else None
    return [out], b.Unsqueeze(_missing(b, x, markers, known), b.const([1]))


def _missing(b: Builder, x: str, markers: list[str], known: list[str] | None = None) -> str:
    """bool [N]: the cells holding a missing marker; with `known` (a binary column's values),
    every cell but those (dlc.data.columns.absent_cells)."""
    keys, flags, default = markers, [1] * len(markers), 0
    if known is not None:
        keys, flags, default = known + markers, [0] * len(known) + flags, 1
    absent = b.op("LabelEncoder", x, domain=ML_DOMAIN, keys_strings=keys,
                  values_int64s=flags, default_int64=default)
    return b.Cast(absent, to=onnx.TensorProto.BOOL)


def _text(b: Builder, x: str, c: dict, markers: list[str]) -> tuple[list[str], str]:
    """Token ids [N, max_length] (after the ids of the columns before it), as float: the text
    front over the cells, a missing one replaced by the fill (an empty text by default)."""
    absent = _missing(b, x, markers)
    text = b.Where(absent, b.const(c["fill"]), x)
    ids = text_front(b, text, c["vocab"], int(c["max_length"]), bool(c["lowercase"]))
    ids = b.Add(ids, b.const(np.int64(c["offset"])))
    return [b.Cast(ids, to=b.float_code)], b.Unsqueeze(absent, b.const([1]))


def column_front(b: Builder, state: dict) -> str:
    """Declare one model input per column and return the encoded float32 [N, width] tensor."""
    parts = []
    for c in state["columns"]:
        numeric = c["kind"] == "numeric"
        x = b.input(c["name"], "float32" if numeric else "string", ["N"])
        with b.scope(f"columns/{c['name']}"):
            kind = _numeric if numeric else _text if c["kind"] == "text" else _categories
            out, absent = kind(b, x, c) if numeric else kind(b, x, c, state["markers"])
            if c["indicator"]:
                out.append(b.Cast(absent, to=b.float_code))
        parts += out
    return parts[0] if len(parts) == 1 else b.Concat(*parts, axis=1)
