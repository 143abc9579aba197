"""`dlc serve` request bodies: the JSON Schema of a model's requests, built from its own inputs,
and the conversion of a checked body into the arrays the model takes.

A body is `{"rows": [...]}` (one record per sample: an object keyed by the model's column names
when every input has them, the text for a text model, else the sample as a nested array) or
`{"inputs": {name: [sample, ...]}}` (samples per model input). The schema served at /schema is
the one requests are checked against (jsonschema), so the two never disagree; what a schema
cannot say (finite numbers, equal sample counts, the row limit) is checked here after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlc.data.columns import entries
from dlc.data.multi import Columns, encode_categories
from dlc.data.text import text_config
from dlc.model.names import spec_inputs
from dlc.model.spec.schema import one_line, render_path, show

KINDS = {  # input kind -> the JSON Schema of one value
    "number": {"type": "number"},
    "category": {"type": ["string", "integer"]},
    "ids": {"type": "integer", "minimum": 0},
    "text": {"type": "string"},
    # raw table columns (input.columns): null or NaN for a missing cell, the graph fills it
    "column_number": {"type": ["number", "null"]},
    "column_cell": {"type": ["string", "integer", "null"]},
}


class RequestError(Exception):
    """A bad request: one line for the client, and its HTTP status."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Field:
    """One model input as requests give it."""

    name: str
    shape: list[int]
    kind: str  # a key of KINDS
    features: list[str] | None  # the column names that fill its shape, in order
    categories: dict | None = None  # category inputs: column -> known values (dlc.categories)


def fields_of(model) -> list[Field]:
    """The model's inputs, from its stored spec and metadata: for column kinds, the raw
    columns the exported graph takes (one scalar field per column)."""
    if entries(model.spec):
        return [Field(col, [], "column_number" if cfg["kind"] == "numeric" else "column_cell",
                      [col]) for e in entries(model.spec).values()
                for col, cfg in e["columns"].items()]
    out = []
    for name, cfg in spec_inputs(model.spec).items():
        features = cfg.get("features") if model.spec.get("inputs") else model.features
        if text_config(model.spec) is not None:
            kind = "text"
        elif cfg.get("dtype", "float32") != "int64":
            kind = "number"
        else:
            kind = "category" if features else "ids"
        cats = (model.categories or {}).get(name) if kind == "category" else None
        out.append(Field(name, [int(d) for d in cfg["shape"]], kind, features, cats))
    return out


def row_form(fields: list[Field]) -> str:
    """How `rows` gives a sample: object (by column name), text, or array (nested)."""
    if fields[0].kind == "text":
        return "text"
    return "object" if all(f.features for f in fields) else "array"


def _nested(shape: list[int], leaf: dict) -> dict:
    for size in reversed(shape):
        leaf = {"type": "array", "items": leaf, "minItems": size, "maxItems": size}
    return leaf


def _value(field: Field, column: str | None = None) -> dict:
    schema = dict(KINDS[field.kind])
    if field.categories and column in field.categories:
        schema["examples"] = field.categories[column]  # others are allowed: the unknown id
    return schema


def _sample(field: Field) -> dict:
    return KINDS["text"] if field.kind == "text" else _nested(field.shape, _value(field))


def request_schema(fields: list[Field], title: str, max_rows: int) -> dict:
    """The JSON Schema (draft 2020-12) of a request body to POST /predict."""
    form = row_form(fields)
    if form == "object":
        props = {c: _value(f, c) for f in fields for c in f.features}
        row = {"type": "object", "properties": props, "required": list(props),
               "additionalProperties": False}
    else:
        row = _sample(fields[0])
    many = {"type": "array", "minItems": 1, "maxItems": max_rows}
    inputs = {"type": "object", "properties": {f.name: {**many, "items": _sample(f)}
                                               for f in fields},
              "required": [f.name for f in fields], "additionalProperties": False}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{title}: POST /predict body",
            "description": "rows: one record per sample; inputs: the samples of each model "
                           "input. Give one of the two.",
            "type": "object", "properties": {"rows": {**many, "items": row}, "inputs": inputs},
            "minProperties": 1, "maxProperties": 1, "additionalProperties": False}


def _extra(e) -> str:
    names = sorted(set(e.instance) - set(e.schema.get("properties", {})))
    known = ", ".join(e.schema.get("properties", {}))
    return f"unknown field {', '.join(map(repr, names))} (expected: {known})"


MESSAGES = {  # jsonschema validator -> the one-line message (the path is put in front)
    "additionalProperties": _extra,
    "required": lambda e: f"missing field {e.message.split(' is a required')[0]}",
    "type": lambda e: f"expected {_types(e.validator_value)}, found {_show(e.instance)}",
    "minItems": lambda e: f"expected {_bound(e, 'at least')} values, found {len(e.instance)}",
    "maxItems": lambda e: f"expected {_bound(e, 'at most')} values, found {len(e.instance)}",
    "minProperties": lambda e: 'give "rows" or "inputs"',
    "maxProperties": lambda e: 'give "rows" or "inputs", not both',
}


def _bound(e, how: str) -> str:
    exact = e.schema.get("minItems") == e.schema.get("maxItems")
    return f"{'' if exact else how + ' '}{e.validator_value}"


def _types(value) -> str:
    return value if isinstance(value, str) else " or ".join(value)


def _show(value) -> str:
    return show(value)


def check(validator, body) -> None:
    """RequestError (422) naming the first problem of `body` against the request schema."""
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(body))
    if error is None:
        return
    where = render_path(tuple(error.absolute_path)) or "body"
    text = MESSAGES.get(error.validator, lambda e: e.message)(error)
    raise RequestError(one_line(f"{where}: {text}"))


def rows_in(body) -> int:
    """Samples in a body, counted before the schema check (a huge body is refused cheaply)."""
    if not isinstance(body, dict):
        return 0
    inputs = body.get("inputs")
    parts = [body.get("rows")] + (list(inputs.values()) if isinstance(inputs, dict) else [])
    return max((len(p) for p in parts if isinstance(p, list)), default=0)


def limit_rows(n: int, max_rows: int) -> None:
    if n > max_rows:
        raise RequestError(f"{n} rows in one request; the server takes at most {max_rows} "
                           "(dlc serve --max-rows)", 413)


def _array(field: Field, samples: list, where: str, columns: list[str] | None = None):
    """A checked field's samples -> the array the model takes (raw values, as dlc predict
    reads them). `columns`: the names of the samples' values (rows given as objects)."""
    if field.kind == "text":
        return np.array(samples, dtype=object)  # the model tokenises raw text itself
    if field.kind == "column_cell":  # null: the empty cell, a missing marker
        return np.array(["" if v is None else str(v) for v in np.ravel(np.asarray(samples,
                                                                                   object))],
                        dtype=object)
    if field.kind == "category":
        cells = [[str(v) for v in np.ravel(np.asarray(s, object))] for s in samples]
        return encode_categories(cells, field.features, field.categories).reshape(
            -1, *field.shape)
    try:
        x = np.asarray(samples, np.int64 if field.kind == "ids" else np.float64)
    except OverflowError:
        raise RequestError(f"{where}: an integer out of range") from None
    bad = np.argwhere(np.isinf(x) if field.kind == "column_number" else ~np.isfinite(x))
    if len(bad):
        at = tuple(bad[0])
        place = (f"[{at[0]}].{columns[at[1]]}" if columns
                 else "".join(f"[{k}]" for k in at))
        raise RequestError(f"{where}{place}: non-finite value {x[at]}")
    return x.astype(np.int64 if field.kind == "ids" else np.float32).reshape(-1, *field.shape)


def to_feed(fields: list[Field], body: dict) -> Columns:
    """A checked body -> the model's inputs by name."""
    if "inputs" in body:
        feed = Columns({f.name: _array(f, body["inputs"][f.name], f"inputs.{f.name}")
                        for f in fields})
        counts = {name: len(x) for name, x in feed.items()}
        if len(set(counts.values())) > 1:
            raise RequestError(f"inputs: every input needs the same number of samples "
                               f"({', '.join(f'{k}: {v}' for k, v in counts.items())})")
        return feed
    rows = body["rows"]
    if row_form(fields) != "object":
        return Columns({fields[0].name: _array(fields[0], rows, "rows")})
    return Columns({f.name: _array(f, [[r[c] for c in f.features] for r in rows], "rows",
                                   f.features) for f in fields})
