"""The schema and the layer reference are generated from the layers' field tables: the committed
files must be what `python -m dlc.model.spec.generate` writes, and the type enum is `LAYERS`."""

from __future__ import annotations

import dataclasses

from dlc.model.layers import LAYERS
from dlc.model.layers.core import Dense
from dlc.model.layers.fields import Field, integer
from dlc.model.spec import generate, schema


def test_committed_schema_is_generated():
    assert generate.SCHEMA.read_text(encoding="utf-8") == generate.schema_text(), \
        "schemas/dlc.schema.json is stale: run python -m dlc.model.spec.generate"


def test_committed_layer_reference_is_generated():
    docs = generate.DOCS.read_text(encoding="utf-8")
    assert docs == generate.docs_text(docs), \
        "docs/spec-language.md's layer reference is stale: run python -m dlc.model.spec.generate"
    assert "| `units` | integer ≥ 1 | required |" in docs


def test_type_enum_is_the_registry():
    enum = schema()["$defs"]["layer"]["properties"]["type"]["enum"]
    assert enum == [*LAYERS, *generate.HAND_WRITTEN]


def test_shared_keys_are_one_entry():
    defs = schema()["$defs"]
    for key, (cls, _) in generate.families().items():
        props = defs[key]["properties"]
        assert props["share"] == {"$ref": "#/$defs/layerCommon/properties/share"}, key
        assert props["trainable"] == {"$ref": "#/$defs/layerCommon/properties/trainable"}, key


def test_a_new_field_reaches_schema_and_docs_and_the_check_fails(monkeypatch, capsys):
    extra = Field("widen", "A test field.", integer(minimum=2), default=4)
    monkeypatch.setattr(Dense, "fields", (*Dense.fields, extra))
    made = generate.schema()["$defs"]["dense"]["properties"]["widen"]
    assert made == {"type": "integer", "minimum": 2, "default": 4, "description": "A test field."}
    assert "| `widen` | integer ≥ 2 | `4` | A test field. |" in generate.reference()
    assert generate.main(["--check"]) == 1
    assert "out of date: schemas/dlc.schema.json, docs/spec-language.md" in capsys.readouterr().err


def test_layers_fill_their_own_defaults():
    """A layer built without the schema (a transformer's dense parts) reads cfg[k] safely."""
    layer = Dense("d", {"type": "dense", "units": 3})
    assert layer.cfg == {"type": "dense", "units": 3, "activation": "linear", "use_bias": True,
                         "initializer": "auto"}
    assert dataclasses.replace(layer, cfg={"units": 3, "use_bias": False}).cfg["use_bias"] is False
