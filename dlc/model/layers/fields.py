"""A layer's spec fields, declared once beside its shape rule and lowering.

Each layer class lists its `fields`; `dlc.model.spec.generate` turns them into the layer's JSON Schema
entry and its row of the layer reference, and `Layer` fills their defaults, so a default is
written in exactly one place. The keys every layer shares (name, inputs, share, trainable) are
one hand-written schema entry, `$defs/layerCommon` in dlc/spec/schema_base.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NO_DEFAULT: Any = object()  # the field has no default: absent stays absent
INITIALIZERS = ("auto", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                "lecun_normal", "zeros")
AUTO_INIT_DOC = ("Weight initializer. auto picks one from the activation (he_* for relu-like, "
                 "lecun for selu, glorot otherwise).")


@dataclass(frozen=True)
class Field:
    """One spec key of a layer: its JSON Schema (type, bounds, enum or a $ref), its default and
    the sentence that documents it (the schema's description and the reference's row)."""

    name: str
    doc: str
    schema: dict
    default: Any = NO_DEFAULT
    required: bool = False

    def to_schema(self) -> dict:
        extra = {} if self.default is NO_DEFAULT else {"default": self.default}
        return {**self.schema, **extra, "description": self.doc}


def ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def enum(*values) -> dict:
    return {"enum": list(values)}


def _typed(kind: str):
    return lambda **bounds: {"type": kind, **bounds}


integer, number, boolean, string = (_typed(k) for k in ("integer", "number", "boolean", "string"))


def defaults(fields: tuple[Field, ...]) -> dict:
    return {f.name: f.default for f in fields if f.default is not NO_DEFAULT}
