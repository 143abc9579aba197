"""The JSON Schema: locating it, validating against it, and turning its errors into diagnostics."""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import dlc

_WHEEL_SCHEMA = Path(dlc.__file__).parent / "_schema" / "dlc.schema.json"
_REPO_SCHEMA = Path(dlc.__file__).resolve().parent.parent / "schemas" / "dlc.schema.json"

_TYPE_NAMES = {
    "integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
    "array": "a list", "object": "a mapping of keys", "null": "nothing",
}
# Paths whose enum is worth a noun: (last-but-one key, last key) -> noun.
_ENUM_NOUNS = {("optimizer", "type"): "optimizer", ("schedule", "type"): "schedule",
               ("task", "kind"): "task kind", ("task", "loss"): "loss"}


def schema_path() -> Path:
    """The schema file: inside the package for wheel installs, else `<repo>/schemas/`."""
    return _WHEEL_SCHEMA if _WHEEL_SCHEMA.is_file() else _REPO_SCHEMA


@lru_cache(maxsize=1)
def schema() -> dict:
    """The parsed spec schema (cached; do not mutate)."""
    return json.loads(schema_path().read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def validator() -> Any:
    """A compiled Draft 2020-12 validator in which 256.0 is not an integer (cached)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    cls = jsonschema.validators.extend(base, {"pattern": _ecma_pattern}, type_checker=checker)
    return cls(schema())


def _ecma_pattern(validator, pattern: str, instance, schema_: dict):
    """`pattern` as JSON Schema means it (ECMA-262, which editors use): `$` matches only at the
    very end. Python's `$` also matches before a final newline, which let "name\n" pass."""
    import jsonschema

    if validator.is_type(instance, "string") and not re.search(_strict_end(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=None)
def _strict_end(pattern: str) -> str:
    """Every unescaped `$` outside a character class becomes `\\Z`."""
    out, escaped, in_class = [], False, False
    for ch in pattern:
        if escaped:
            out.append(ch)
            escaped = False
            continue
        if ch == "\\":
            escaped = True
        elif ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        out.append(r"\Z" if ch == "$" and not in_class else ch)
    return "".join(out)


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped (\\n, \\r, \\x1b): one
    diagnostic stays one line, and a spec cannot send escape sequences to the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def render_path(path: tuple) -> str:
    """("layers", 2, "units") -> "layers[2].units"."""
    out = ""
    for part in path:
        part = part if isinstance(part, int) else one_line(str(part))
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def show(value: Any, limit: int = 40) -> str:
    """A value as the user wrote it, JSON-like, cut to about `limit` characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else show(value)


def _did_you_mean(word: Any, choices: list) -> str:
    if not isinstance(word, str):
        return ""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    close = close or [n for n in names if len(word) >= 2 and n.startswith(word)][:1]
    return f"; did you mean '{close[0]}'?" if close else ""


class Problem:
    """One schema error reduced to (path, message, at_key): at_key positions it at a mapping key."""

    def __init__(self, path: tuple, message: str, at_key: bool = False, kind: str = ""):
        self.path, self.message, self.at_key, self.kind = path, message, at_key, kind


def _range_message(error: Any) -> str:
    schema_ = error.schema
    types = schema_.get("type", "number")
    types = [types] if isinstance(types, str) else types
    what = "an integer" if "integer" in types else "a number"
    bounds = []
    if "minimum" in schema_:
        bounds.append(f"≥ {schema_['minimum']}")
    if "exclusiveMinimum" in schema_:
        bounds.append(f"> {schema_['exclusiveMinimum']}")
    if "maximum" in schema_:
        bounds.append(f"≤ {schema_['maximum']}")
    if "exclusiveMaximum" in schema_:
        bounds.append(f"< {schema_['exclusiveMaximum']}")
    return f"expected {what} {' and '.join(bounds)}, got {show(error.instance)}"


def _type_message(error: Any) -> str:
    types = error.validator_value
    types = [types] if isinstance(types, str) else types
    names = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    return f"expected {names}, got {show(error.instance)}"


def _enum_message(error: Any, path: tuple) -> str:
    value, choices = error.instance, error.validator_value
    hint = _did_you_mean(value, choices)
    if len(path) >= 3 and path[-3] == "layers" and path[-1] == "type":
        return f"unknown layer type {_quote(value)}{hint}" + ("" if hint else
                                                             f" (known: {', '.join(choices)})")
    noun = _ENUM_NOUNS.get(tuple(str(p) for p in path[-2:]))
    listed = ", ".join(str(c) for c in choices)
    if noun:
        return f"unknown {noun} {_quote(value)}; expected one of {listed}{hint}"
    return f"expected one of {listed}; got {_quote(value)}{hint}"


def _required(error: Any, path: tuple) -> Iterator[Problem]:
    for key in error.validator_value:
        if isinstance(error.instance, dict) and key not in error.instance:
            extra = ""
            if key == "type" and len(path) == 2 and path[0] == "layers":
                extra = " (the layer type: " + ", ".join(schema()["$defs"]["layer"]["properties"]
                                                         ["type"]["enum"]) + ")"
            yield Problem(path, f"missing required key '{key}'{extra}", kind="required:" + key)


def _additional(error: Any, path: tuple) -> Iterator[Problem]:
    allowed = list(error.schema.get("properties", {}))
    for key in error.instance:
        if key not in allowed:
            hint = _did_you_mean(key, allowed)
            yield Problem((*path, key), f"unknown key '{key}'{hint}", at_key=True,
                          kind="unknown:" + (hint.split("'")[1] if hint else ""))


def _simple_message(error: Any, path: tuple) -> str:
    """The message of an error that maps to exactly one problem."""
    kind, schema_ = error.validator, error.schema
    if kind == "type":
        return _type_message(error)
    if kind == "not" and "x-refused" in schema_:  # a field refused here: the message says why
        return schema_["x-refused"]
    if "x-message" in schema_:
        hint = _did_you_mean(error.instance, schema_.get("examples", []))
        sep = "; " if "," in schema_["x-message"] else ", "
        return f"{schema_['x-message']}{sep}got {show(error.instance)}{hint}"
    if kind == "enum":
        return _enum_message(error, path)
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return _range_message(error)
    if kind == "const":
        return f"expected {show(error.validator_value)}, got {show(error.instance)}"
    if kind == "minItems":
        return f"expected at least {error.validator_value} item(s), got {show(error.instance)}"
    if kind == "uniqueItems":
        return f"items must be unique, got {show(error.instance)}"
    return error.message.splitlines()[0]


def _chosen_branch(error: Any) -> list | None:
    """The errors of the one anyOf branch whose type the value has (`kind` or a mapping), when
    every other branch failed on its type: that branch's own messages (did you mean)."""
    branches: dict[int, list] = {}
    for sub in error.context or ():
        branches.setdefault(sub.schema_path[0], []).append(sub)
    fitting = [errs for errs in branches.values()
               if not any(e.validator == "type" and not e.relative_path for e in errs)]
    return fitting[0] if error.validator == "anyOf" and len(fitting) == 1 else None


def _problems(error: Any) -> Iterator[Problem]:
    path = tuple(error.absolute_path)
    chosen = _chosen_branch(error)
    if chosen:
        for sub in chosen:
            yield from _problems(sub)
    elif error.validator == "required":
        yield from _required(error, path)
    elif error.validator == "additionalProperties":
        yield from _additional(error, path)
    else:
        yield Problem(path, _simple_message(error, path), kind=error.validator)


def _prune(problems: list[Problem]) -> list[Problem]:
    """One mistake, one line: drop duplicates, and a missing key whose misspelling is reported."""
    misspelt = {(p.path[:-1], p.kind.split(":", 1)[1]) for p in problems
                if p.kind.startswith("unknown:")}
    typed = {p.path for p in problems if p.kind == "type"}
    seen, out = set(), []
    for p in problems:
        key = (p.path, p.message)
        if key in seen:
            continue
        if p.kind.startswith("required:") and (p.path, p.kind.split(":", 1)[1]) in misspelt:
            continue
        if p.kind not in ("type",) and not p.at_key and p.path in typed:
            continue
        seen.add(key)
        out.append(p)
    return out


def _validate_all(data: Any) -> list[Problem]:
    errors = validator().iter_errors(data)
    return _prune([p for e in errors for p in _problems(e)])


def without_filled_optimizer_fields(data: dict) -> dict:
    """`data` without the train.optimizer fields that a resolved spec may hold but need not:
    those its type does not use (the schema's `not` branches; dlc versions before they were
    refused filled them in for every type, and they never acted) and those at their type's
    default (filled in again on load). For specs dlc wrote: spec.yaml of a run folder, which
    `--resume --set train.optimizer.type=...` may switch, and dlc.spec_resolved of a model."""
    optimizer = (data.get("train") or {}).get("optimizer")
    if not isinstance(optimizer, dict):
        return data
    node = _resolve(schema()["properties"]["train"]["properties"]["optimizer"])
    evolve = validator().evolve
    branches = [b for b in node["allOf"] if evolve(schema=b["if"]).is_valid(optimizer)]
    rules = {key: rule for b in branches for key, rule in b["then"]["properties"].items()}
    kept = {k: v for k, v in optimizer.items() if k not in rules
            or not ("not" in rules[k] or rules[k].get("default") == v)}
    return {**data, "train": {**data["train"], "optimizer": kept}}


def validate(data: Any) -> list[Problem]:
    """Every schema problem in `data` (empty when it is valid), one per mistake. Layers that
    differ only in their names are checked once (see _layer_key); when a layer has a problem,
    every layer is checked, so that each mistake is reported where it is."""
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        return _validate_all(data)
    distinct = list({_layer_key(layer) or i: layer for i, layer in enumerate(layers)}.values())
    problems = _validate_all({**data, "layers": distinct})
    if len(distinct) < len(layers) and any(p.path[:1] == ("layers",) for p in problems):
        return _validate_all(data)
    return problems


def fill_defaults(data: Any) -> None:
    """Fill schema defaults in place, inside objects that are present (data must be valid).
    Layers are filled once per _layer_key and copied: a 10,000-layer spec is a few kinds."""
    evolve = validator().evolve
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        _fill(schema(), data, evolve)
        return
    data["layers"] = []
    _fill(schema(), data, evolve)
    item, filled = schema()["properties"]["layers"]["items"], {}
    for i, layer in enumerate(layers):
        key = _layer_key(layer)
        if key is None:
            _fill(item, layer, evolve)
            continue
        if key not in filled:
            filled[key] = json.loads(key)
            _fill(item, filled[key], evolve)
        layers[i] = {k: layer[k] if k in _NAMES else v
                     for k, v in json.loads(json.dumps(filled[key])).items()}
    data["layers"] = layers


_NAMES = ("name", "share", "inputs")  # what a layer's own names and its sources' are


def _layer_key(layer: Any) -> str | None:
    """The layer as JSON with its names replaced by placeholders the schema accepts alike, so
    that two layers with one key are both valid or both not (None: not a layer of that kind)."""
    if not isinstance(layer, dict) or not all(isinstance(k, str) for k in layer):
        return None  # (JSON would write the key 1 as "1")
    name = schema()["$defs"]["layerName"]["pattern"]
    canon = dict(layer)
    if "name" in canon:
        if not isinstance(canon["name"], str) or not re.search(_strict_end(name), canon["name"]):
            return None
        canon["name"] = "n"
    if "share" in canon:
        if not isinstance(canon["share"], str) or not canon["share"]:
            return None
        canon["share"] = "n"
    if "inputs" in canon:
        srcs = canon["inputs"]
        if not isinstance(srcs, list) or not all(isinstance(s, str) and s for s in srcs):
            return None
        canon["inputs"] = ["n"] * len(srcs)
    try:
        return json.dumps(canon)
    except (TypeError, ValueError):
        return None


def _resolve(node: dict) -> dict:
    """Follow local `$ref`s ("#/$defs/dense", "#/properties/task/properties/kind")."""
    while "$ref" in node:
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target: Any = schema()
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        node = {**target, **extra}
    return node


def _fill(node: dict, value: Any, evolve: Callable) -> None:
    node = _resolve(node)
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _fill(node["items"], item, evolve)
    if not isinstance(value, dict):
        return
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub)
        if key not in value and "default" in sub:
            value[key] = json.loads(json.dumps(sub["default"]))
        if key in value:
            _fill(sub, value[key], evolve)
    for branch in node.get("allOf", []):
        if "if" in branch and evolve(schema=branch["if"]).is_valid(value):
            _fill(branch.get("then", {}), value, evolve)
