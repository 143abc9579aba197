"""Spec loading: YAML with positions, `--set` overrides, JSON Schema validation, defaults.

    spec = load_spec("model.yaml", overrides=["train.epochs=5"])
    spec.data["layers"][0]["units"]; spec.diag(("layers", 0, "units"), "does not fit")

Must not import numpy or onnx: `dlc validate` starts fast.
"""

from __future__ import annotations

from dlc.model.spec.load import Spec, load_spec, load_spec_text
from dlc.model.spec.schema import render_path, schema, schema_path

__all__ = ["Spec", "load_spec", "load_spec_text", "render_path", "schema", "schema_path"]
