"""Generates schemas/dlc.schema.json and the layer reference of docs/spec-language.md.

The layer parts come from the layer classes' field tables (dlc/layers, `LAYERS`); everything
else is hand-written in schema_base.json beside this file, with the keys every layer shares in
its `$defs/layerCommon`. `python -m dlc.model.spec.generate` rewrites both files; `--check` exits 1
when a committed file differs from what the declarations give (tests/test_generate.py runs it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlc.files.atomic import write_text
from dlc.model.layers import LAYERS
from dlc.model.layers.activations import ACTIVATIONS
from dlc.model.layers.fields import NO_DEFAULT

BASE = Path(__file__).with_name("schema_base.json")
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "schemas").is_dir())  # the repo
SCHEMA = ROOT / "schemas" / "dlc.schema.json"
DOCS = ROOT / "docs" / "spec-language.md"
BEGIN = "<!-- layer reference: generated from dlc/model/layers by python -m dlc.model.spec.generate -->"
END = "<!-- end of the generated layer reference -->"
HAND_WRITTEN = {"block": "block"}  # layer types whose schema entry is in schema_base.json


def families() -> dict[str, tuple[type, list[str]]]:
    """Schema entry name -> (its layer class, the types it serves), in `LAYERS` order."""
    out: dict[str, tuple[type, list[str]]] = {}
    for name, cls in LAYERS.items():
        out.setdefault(cls.schema_name, (cls, []))[1].append(name)
    return out


def _one_of(types: list[str]) -> dict:
    return {"const": types[0]} if len(types) == 1 else {"enum": list(types)}


def _entry(cls: type, types: list[str], common: list[str]) -> dict:
    """A layer's schema entry: closed, its own fields, the shared keys by reference."""
    props = {"type": {**_one_of(types), "description": cls.type_doc},
             "name": {"$ref": "#/$defs/layerCommon/properties/name"}}
    props.update({f.name: f.to_schema() for f in cls.fields})
    for key in common:
        props.setdefault(key, {"$ref": f"#/$defs/layerCommon/properties/{key}"})
    return {"type": "object", "description": cls.spec_doc, "additionalProperties": False,
            "required": ["type", *(f.name for f in cls.fields if f.required)],
            "properties": props}


def _dispatcher(entries: dict[str, list[str]]) -> dict:
    """`$defs/layer`: the type enum and one if/then branch per entry."""
    names = [*LAYERS, *HAND_WRITTEN]
    branches = [{"if": {"type": "object", "properties": {"type": _one_of(types)},
                        "required": ["type"]}, "then": {"$ref": f"#/$defs/{entry}"}}
                for entry, types in entries.items()]
    return {"type": "object",
            "description": "One layer. `type` selects the layer kind; each kind has its own keys.",
            "required": ["type"],
            "properties": {"type": {"enum": names,
                                    "description": f"The layer type: {', '.join(names)}."}},
            "allOf": branches}


def schema() -> dict:
    base = json.loads(BASE.read_text(encoding="utf-8"))
    common = list(base["$defs"]["layerCommon"]["properties"])
    generated = {key: _entry(cls, types, common) for key, (cls, types) in families().items()}
    entries = {key: types for key, (_, types) in families().items()}
    entries.update({entry: [name] for name, entry in HAND_WRITTEN.items()})
    acts = list(ACTIVATIONS)
    return {**base, "$defs": {
        "layer": _dispatcher(entries),
        "activationName": {"enum": acts, "description": f"An activation: {', '.join(acts)}."},
        **base["$defs"], **generated}}


def schema_text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


# ---- the layer reference ---------------------------------------------------------------------
_REFS = {"ints": "int or [int, ...]", "padding": "valid | same | [int, ...]",
         "activationName": "an activation"}
_BOUNDS = (("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"),
           ("exclusiveMaximum", "< {}"))


def _value(node: dict) -> str:
    """A field's schema in a few words: `integer ≥ 1`, `relu | gelu`, `int or [int, ...]`."""
    if "$ref" in node:
        return _REFS[node["$ref"].rsplit("/", 1)[1]]
    if "enum" in node:
        return " | ".join(str(v) for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_value(n) for n in node["oneOf"])
    kind = node.get("type", "value")
    bounds = [fmt.format(node[key]) for key, fmt in _BOUNDS if key in node]
    if kind == "array":
        return f"[{_value(node.get('items', {}))}, ...]"
    return " ".join([kind, " and ".join(bounds)]) if bounds else kind


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference() -> str:
    """The markdown between BEGIN and END: one section per schema entry, a row per field."""
    out = [BEGIN, ""]
    for cls, types in families().values():
        out += [f"### {', '.join(f'`{t}`' for t in types)}", "", cls.spec_doc, ""]
        if not cls.fields:
            out += ["No keys beyond name, inputs, share and trainable.", ""]
            continue
        out += ["| key | value | default | meaning |", "|---|---|---|---|"]
        for f in cls.fields:
            default = ("required" if f.required else "—" if f.default is NO_DEFAULT
                       else f"`{json.dumps(f.default)}`")
            out.append(f"| `{f.name}` | {_cell(_value(f.schema))} | {default} | "
                       f"{_cell(f.doc)} |")
        out.append("")
    return "\n".join([*out, END])


def docs_text(current: str) -> str:
    head, rest = current.split(BEGIN, 1)
    return head + reference() + rest.split(END, 1)[1]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in ((SCHEMA, schema_text()),
                       (DOCS, docs_text(DOCS.read_text(encoding="utf-8")))):
        if path.read_text(encoding="utf-8") != text:
            stale.append(str(path.relative_to(ROOT)))
            if not check:
                write_text(path, text)
    if stale:
        print(("out of date: " if check else "rewrote: ") + ", ".join(stale), file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
