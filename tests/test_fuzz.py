"""Property fuzzing of everything that reads user input: specs (schema-valid, mutated, garbage),
`dlc predict` / `dlc evaluate` (corrupt and hostile models: external data, deep or unexpanded
metadata; corrupt inputs) and run folders (`dlc runs`, `dlc plot`, `dlc train --resume` on
damaged run.json, checkpoint.npz, metrics.csv, summary.json, spec.yaml, model.onnx).

The property, everywhere: dlc either succeeds or raises a DlcError whose every rendered line is
`file:line:col: ...` or `file: ...` (through the CLI: exit 1 or 2 with one line on stderr) --
never another exception, never exit 3, never a hang.

Knobs (environment):
  DLC_FUZZ_EXAMPLES  examples per property (default 200: this file stays well under a minute)
  DLC_FUZZ_RANDOM=1  fresh randomness (the full campaign); by default every run is derandomized,
                     so CI is reproducible

The full campaign (>= 10,000 generated specs over the three spec properties):
  DLC_FUZZ_EXAMPLES=4000 DLC_FUZZ_RANDOM=1 pytest tests/test_fuzz.py --hypothesis-show-statistics
Issue 15's campaign, in chunks with -k (10,250 cases, no exit 3): models 3,000 and inputs 3,500
(DLC_FUZZ_EXAMPLES=6000/7000, -k test_predict_corrupt_...), specs 3,250 (1000), run folders 500
(5000, -k test_damaged_run_folders: about half a second each, for matplotlib).

hypothesis-jsonschema's `from_schema` cannot generate this schema: with Hypothesis >= 6.1xx
every object schema fails inside it ('many' object has no attribute 'more'), and canonicalising
the `layer` definition (14+ if/then branches) alone takes minutes. `schema_values` below is a
small generator for exactly the JSON Schema keywords our schema uses, driven by the schema itself
(so new layers and fields are fuzzed without touching this file); `test_generator_knows_schema`
fails when the schema starts using a keyword it does not know, and `test_generated_specs_are_valid`
checks that what it generates validates.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import signal
import sys
import threading
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from dlc.errors import DlcError, SpecError
from dlc.model.spec import load_spec, load_spec_text, schema

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
FILE = "fuzz.yaml"

EXAMPLES = int(os.environ.get("DLC_FUZZ_EXAMPLES", "200"))
RANDOM = os.environ.get("DLC_FUZZ_RANDOM") == "1"
HANG_S = 60  # hard limit per example: longer counts as a hang (the example is reported)
COMPILE_BUDGET = 4_000_000  # parameters; bigger valid networks are built and checked, not compiled
RUN_BUDGET = 200_000  # per-sample values of every tensor, for a compiled model to run in ORT too


def fuzz_settings(factor: float = 1.0, **kw):
    return settings(
        max_examples=max(1, int(EXAMPLES * factor)),
        deadline=timedelta(seconds=10),
        derandomize=not RANDOM,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.large_base_example],
        **kw,
    )


def event(value: str) -> None:
    """hypothesis.event, for the statistics; a no-op in the example-based tests."""
    if currently_in_test_context():
        _event(value)


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in dlc swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """A hard per-example time limit (SIGALRM; a no-op off the main thread or without it)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not \
            threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- the property -----------------------------------------------------------------------------

_LINE = re.compile(rf"^{re.escape(FILE)}(?::(\d+):(\d+))?: \S")
_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as a line break


def check_spec_error(exc: BaseException, text: str, file: str = FILE) -> None:
    """A SpecError renders one line per diagnostic, each `file:line:col: ...` or `file: ...`,
    with a line number inside the text."""
    assert isinstance(exc, SpecError), f"{type(exc).__name__} instead of SpecError: {exc}"
    rendered = str(exc)
    lines = rendered.splitlines()  # \n, and \r, \x85, \u2028 ... too
    assert exc.diagnostics and len(lines) == len(exc.diagnostics), \
        f"{len(exc.diagnostics)} diagnostics render as {len(lines)} lines: {rendered!r}"
    last = len(_BREAKS.findall(text)) + 1
    pattern = _LINE if file == FILE else re.compile(rf"^{re.escape(file)}(?::(\d+):(\d+))?: \S")
    for line in lines:
        m = pattern.match(line)
        assert m, f"badly formed diagnostic line: {line!r}"
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", line), f"control character: {line!r}"
        if m.group(1):
            assert 1 <= int(m.group(1)) <= last and int(m.group(2)) >= 1, \
                f"position outside the text ({last} lines): {line!r}"


def _base_file_error(exc: BaseException) -> bool:
    """A `base:` model file that a mutant's path or cut makes unusable: a one-line file error
    (exit 1, like a missing data file), not a spec error."""
    return type(exc) is DlcError and str(exc).startswith("base.model: ") \
        and len(str(exc).splitlines()) == 1


def _params(net) -> int:
    return sum(math.prod(p.shape) for p in net.params)


def run_spec(text: str, overrides=()) -> str:
    """load -> build -> compile (-> check, -> run); any SpecError is checked. The outcome."""
    import onnx

    from dlc.model.compile import compile_spec
    from dlc.model.network import build_network

    with time_limit(HANG_S):
        try:
            spec = load_spec_text(text, FILE, list(overrides))
        except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
            check_spec_error(exc, text)
            return "load: SpecError"
        try:
            net = build_network(spec)
        except Exception as exc:  # noqa: BLE001
            if _base_file_error(exc):
                return "build: base file error"
            check_spec_error(exc, text)
            return "build: SpecError"
        n = _params(net)
        if n > COMPILE_BUDGET:
            return "built, too big to compile here"
        try:
            model = compile_spec(spec)
        except Exception as exc:  # noqa: BLE001
            if _base_file_error(exc):  # compile reads the base file again
                return "compile: base file error"
            check_spec_error(exc, text)
            return "compile: SpecError"
        onnx.checker.check_model(model, full_check=True)  # what `dlc compile` runs
        if _all_small(net):
            _run_model(model, net)
            return "compiled and ran"
        return "compiled"


def _all_small(net) -> bool:
    shapes = [n.out_shape for n in net.nodes] + [s for n in net.nodes for s in n.in_shapes]
    return all(math.prod(s) <= RUN_BUDGET for s in shapes)


def _run_model(model, net) -> None:
    """The compiled model loads in onnxruntime and gives outputs of the promised shapes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dtypes = {"tensor(int64)": np.int64, "tensor(string)": object}  # raw text or columns: ""
    feed = {i.name: np.full([2 if isinstance(d, str) else d for d in i.shape], "" if
                            i.type == "tensor(string)" else 0, dtypes.get(i.type, np.float32))
            for i in sess.get_inputs()}
    outs = {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feed))}
    shapes = {o.name: o.shape for o in sess.get_outputs()}
    for head in net.heads:  # per output: logits / prediction, class_index of the promised shapes
        name = lambda n: f"{head.name}.{n}" if head.name else n  # noqa: E731
        first = name("prediction" if head.kind == "regression" else "logits")
        # per-sample outputs (units,); per-token classification (T, classes), T as fed (2 when
        # the token input's length is symbolic)
        out = [2 if isinstance(d, str) else d for d in shapes[first][1:]]
        assert out[-1] == head.shape[-1] and len(out) == len(head.shape)
        assert outs[first].shape == (2, *out)
        if head.kind != "regression":
            assert outs[name("class_index")].shape == (2, *out[:-1])


# ---- 1. schema-valid specs ------------------------------------------------------------------

SCHEMA = schema()
DEFS = SCHEMA["$defs"]
ANNOTATIONS = {"description", "default", "examples", "x-message", "x-refused", "title", "$schema",
               "$id", "$comment", "$defs"}
KNOWN = ANNOTATIONS | {"$ref", "type", "enum", "const", "properties", "required",
                       "additionalProperties", "items", "minItems", "maxItems", "uniqueItems",
                       "contains", "minContains", "maxContains", "minimum", "maximum",
                       "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength", "maxLength",
                       "oneOf", "anyOf", "allOf", "if", "then", "not", "minProperties",
                       "maxProperties", "propertyNames"}
UNSUPPORTED: set[str] = set()  # what schema_values met and could not honour


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target = SCHEMA  # a JSON pointer: "#/$defs/ints", "#/$defs/layerCommon/properties/name"
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        node = {**target, **extra}
    return node


def _weighted(pairs):
    """One of several strategies, picked with the given integer weights."""
    pool = [s for w, s in pairs for _ in range(w)]

    @st.composite
    def pick(draw):
        return draw(pool[draw(st.integers(0, len(pool) - 1))])
    return pick()


def sized_ints(lo=None, hi=None):
    """Integers in [lo, hi], mostly small (so specs fit together), now and then enormous."""
    if lo is None and hi is None:
        lo = -8
    base = lo if lo is not None else hi - 8
    tiers = [(12, 7), (4, 100), (2, 2 ** 16), (1, 2 ** 40), (1, 2 ** 80)]
    out = []
    for w, span in tiers:
        a, b = base, base + span
        if hi is not None:
            b = min(b, hi)
        if lo is None:
            a = base - span
        out.append((w, st.integers(a, b)))
    return _weighted(out)


def _numbers(node: dict):
    lo, hi = node.get("minimum"), node.get("maximum")
    xlo, xhi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    fmin = xlo if xlo is not None else lo
    fmax = xhi if xhi is not None else hi
    floats = st.floats(min_value=fmin, max_value=fmax, exclude_min=xlo is not None,
                       exclude_max=xhi is not None, allow_nan=False)
    ilo = None if fmin is None else (math.floor(fmin) + 1 if xlo is not None or fmin != int(fmin)
                                     else int(fmin))
    ihi = None if fmax is None else (math.ceil(fmax) - 1 if xhi is not None or fmax != int(fmax)
                                     else int(fmax))
    if ilo is not None and ihi is not None and ilo > ihi:
        return floats
    return st.one_of(floats, sized_ints(ilo, ihi))


def _integers(node: dict):
    lo = node.get("minimum")
    if node.get("exclusiveMinimum") is not None:
        lo = math.floor(node["exclusiveMinimum"]) + 1
    hi = node.get("maximum")
    if node.get("exclusiveMaximum") is not None:
        hi = math.ceil(node["exclusiveMaximum"]) - 1
    return sized_ints(lo, hi)


def _strings(node: dict):
    lo, hi = node.get("minLength", 0), node.get("maxLength")
    if "pattern" in node:
        s = st.from_regex(node["pattern"], fullmatch=True)
        return s.filter(lambda v: len(v) >= lo and (hi is None or len(v) <= hi))
    short, long = (lo + 12, lo + 200) if hi is None else (min(hi, lo + 12), hi)
    return _weighted([(3, st.text(min_size=lo, max_size=short)),
                      (1, st.text(min_size=lo, max_size=long))])


def _check_const(sub: dict, value) -> bool:
    """Whether `value` matches a `contains`/`not` subschema (const / enum only)."""
    if set(sub) - ANNOTATIONS - {"const", "enum"}:
        UNSUPPORTED.add(f"subschema {sub}")
    if "const" in sub and value != sub["const"]:
        return False
    return "enum" not in sub or value in sub["enum"]


def _arrays(node: dict, path: tuple):
    items = schema_values(node.get("items", {}), (*path, "*"))
    lo = node.get("minItems", 0)
    hi = node.get("maxItems", lo + 5)
    hi = min(hi, lo + 5)
    unique = node.get("uniqueItems", False)
    s = st.lists(items, min_size=lo, max_size=hi,
                 unique_by=(lambda v: json.dumps(v, sort_keys=True)) if unique else None)
    if "contains" in node:
        sub = node["contains"]
        cmin, cmax = node.get("minContains", 1), node.get("maxContains")
        s = s.filter(lambda v: cmin <= sum(_check_const(sub, x) for x in v)
                     and (cmax is None or sum(_check_const(sub, x) for x in v) <= cmax))
    return s


def _objects(node: dict, path: tuple):
    props = node.get("properties", {})
    required = [k for k in node.get("required", []) if k in props]
    must = {k: schema_values(props[k], (*path, k)) for k in required}
    may = {k: schema_values(v, (*path, k)) for k, v in props.items() if k not in required}
    s = st.fixed_dictionaries(must, optional=may)
    extra = node.get("additionalProperties", True)
    if extra is False:
        return s
    names = node.get("propertyNames", {})
    if set(names) - ANNOTATIONS - {"pattern"}:
        UNSUPPORTED.add(f"propertyNames {sorted(names)} at {path}")
    keys = st.from_regex(names.get("pattern", r"^[A-Za-z_][A-Za-z0-9_]{0,8}$"), fullmatch=True)
    keys = keys.filter(lambda k: k not in props and len(k) <= 12)
    values = json_values if extra is True else schema_values(extra, (*path, "*"))
    lo = node.get("minProperties", 0)
    more = st.dictionaries(keys, values, min_size=lo,
                           max_size=node.get("maxProperties", lo + (2 if extra is True else 3)))
    return st.tuples(s, more).map(lambda t: {**t[1], **t[0]})


def _conditional(node: dict, path: tuple):
    """`properties.type.enum` + `allOf: [{if: {type: X}, then: {$ref: X's def}}, ...]`: one of
    the branches, plus the bare node for values no branch covers."""
    branches, covered = [], set()
    rest = {k: v for k, v in node.items() if k != "allOf"}
    for branch in node["allOf"]:
        if set(branch) - {"if", "then"}:
            UNSUPPORTED.add(f"allOf item {sorted(branch)}")
            continue
        cond = branch["if"].get("properties", {})
        for key, sub in cond.items():
            covered.update(sub.get("enum", [sub.get("const")]))
        then = _resolve(branch["then"])
        props = dict(rest.get("properties", {}))
        refined = [*cond.items(), *then.get("properties", {}).items()]
        for key, sub in refined:  # the branch's `if` and `then` refine a property...
            props[key] = {**props.get(key, {}), **sub}
            if sub.get("not") == {}:  # ...or refuses it (optimizer fields of another type)
                del props[key]
        required = sorted({*rest.get("required", []), *then.get("required", []),
                           *branch["if"].get("required", [])})  # the branch's `if` holds too
        branches.append(schema_values({**rest, **then, "properties": props,
                                       "required": required}, path))
    disc = rest.get("properties", {}).get("type", {})
    uncovered = [v for v in disc.get("enum", []) if v not in covered]
    if uncovered:
        bare = {**rest, "properties": {**rest["properties"], "type": {"enum": uncovered}}}
        branches.append(schema_values(bare, path))
    return st.one_of(branches)


OVERRIDES: dict[tuple, object] = {}  # schema path -> strategy (filled below)


def schema_values(node: dict, path: tuple = ()):
    """A strategy for values valid against `node` (the keywords this schema uses)."""
    if path in OVERRIDES:
        return OVERRIDES[path]
    node = _resolve(node)
    unknown = set(node) - KNOWN
    if unknown:  # generated anyway, maybe invalid; test_generator_knows_schema reports it
        UNSUPPORTED.add(f"{sorted(unknown)} at {path}")
    if "not" in node:
        sub, rest = node["not"], {k: v for k, v in node.items() if k != "not"}
        return schema_values(rest, path).filter(lambda v: not _check_const(sub, v))
    if "allOf" in node:
        return _conditional(node, path)
    for key in ("oneOf", "anyOf"):
        if key in node:
            rest = {k: v for k, v in node.items() if k != key}
            return st.one_of([schema_values({**rest, **_resolve(alt)}, path) for alt in node[key]])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    types = node.get("type")
    if isinstance(types, list):
        return st.one_of([schema_values({**node, "type": t}, path) for t in types])
    if types == "object" or (types is None and "properties" in node):
        return _objects(node, path)
    if types == "array":
        return _arrays(node, path)
    if types == "integer":
        return _integers(node)
    if types == "number":
        return _numbers(node)
    if types == "string":
        return _strings(node)
    if types == "boolean":
        return st.booleans()
    if types == "null":
        return st.none()
    if types is None:
        return json_values
    UNSUPPORTED.add(f"type {types!r} at {path}")
    return json_values


def _schema_words(node, out: set) -> set:
    """Every enum/const string and property name of the schema: the fuzzer's vocabulary."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("properties", "$defs"):
                out.update(value)
                for sub in value.values():
                    _schema_words(sub, out)
            elif key == "enum":
                out.update(v for v in value if isinstance(v, str))
            elif key == "const" and isinstance(value, str):
                out.add(value)
            elif key not in ANNOTATIONS:
                _schema_words(value, out)
    elif isinstance(node, list):
        for item in node:
            _schema_words(item, out)
    return out


WORDS = sorted(_schema_words(SCHEMA, set()))
SCALARS = st.one_of(
    st.none(), st.booleans(), sized_ints(),
    st.floats(), st.text(max_size=10), st.sampled_from(WORDS),
)
json_values = st.recursive(
    SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.one_of(st.sampled_from(WORDS),
                                                               st.text(max_size=6)),
                                                     inner, max_size=4)),
    max_leaves=10)

_DIM = _weighted([(14, st.integers(1, 8)), (4, st.integers(1, 64)), (1, st.integers(1, 4096)),
                  (1, st.integers(1, 2 ** 40)), (1, st.integers(2 ** 62, 2 ** 70))])
OVERRIDES[("input", "shape")] = OVERRIDES[("inputs", "*", "shape")] = \
    st.lists(_DIM, min_size=1, max_size=4)
OVERRIDES[("layers",)] = st.lists(schema_values(DEFS["layer"], ("layers", "*")),
                                  min_size=1, max_size=7)
_PLACEHOLDER = st.from_regex(r"\$\{[a-z]{1,3}\}", fullmatch=True)
OVERRIDES[("blocks", "*", "layers")] = st.lists(
    schema_values(DEFS["layer"], ("blocks", "*", "layers", "*")), min_size=1, max_size=4)


SPEC_DOCS = schema_values(SCHEMA)


def _names(layers: list) -> list[str]:
    return [layer.get("name", f"{layer.get('type')}_{i}") for i, layer in enumerate(layers)]


def _likely(draw, percent: int) -> bool:
    """True with about `percent`% chance; Hypothesis' favourite draw (0) gives True."""
    return draw(st.integers(0, 99)) < percent


MULTI = {"add", "multiply", "average", "concat"}  # layers whose `inputs` are required


def _plausible(draw, doc) -> None:
    """Nudge a random document towards a spec that builds: one input, float features, a loss
    and metrics that fit the task, few cross-references, and often a flat head of the right
    width, so that the compiler and onnxruntime see many valid networks too."""
    if doc.get("input") and doc.get("inputs"):
        del doc[draw(st.sampled_from(["input", "inputs"]))]
    if not doc.get("input") and not doc.get("inputs"):
        doc["input"] = {"shape": draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))}
    for cfg in [doc.get("input")] + list((doc.get("inputs") or {}).values()):
        if cfg and _likely(draw, 75):
            cfg.pop("dtype", None)
            cfg.pop("features", None)
    if doc.get("task") and doc.get("outputs"):
        del doc[draw(st.sampled_from(["task", "outputs"]))]
    if not doc.get("task") and not doc.get("outputs"):
        doc["task"] = {"kind": draw(st.sampled_from(["classification", "binary", "regression"]))}
    heads = {"": doc["task"]} if doc.get("task") else doc["outputs"]
    for task in heads.values():
        for key in sorted(set(task) - {"kind", "layer"}):
            if _likely(draw, 80):
                task.pop(key, None)
    for layer in doc["layers"]:
        if _likely(draw, 50):
            layer.pop("name", None)
        if layer.get("type") not in MULTI and _likely(draw, 75):
            layer.pop("inputs", None)
        if _likely(draw, 75):
            layer.pop("share", None)
    if _likely(draw, 65):  # a flat head of the right width per output
        doc["layers"].append({"type": "flatten", "name": "trunk_flat"})
        for i, (name, task) in enumerate(heads.items()):
            kind = task["kind"]
            units = 1 if kind == "binary" else len(task["labels"]) if task.get("labels") else \
                draw(st.integers(2 if kind == "classification" else 1, 5))
            doc["layers"].append({"type": "dense", "units": units} if not name else
                                 {"type": "dense", "name": f"head_{i}", "units": units,
                                  "inputs": ["trunk_flat"]})
            if name:
                task["layer"] = f"head_{i}"


@st.composite
def schema_specs(draw):
    """A schema-valid spec document, its layer references (`inputs`, `share`, `use`) pointed at
    real layers and blocks most of the time, and block parameters used as `${...}`."""
    doc = draw(SPEC_DOCS)
    if _likely(draw, 75):
        _plausible(draw, doc)
    layers = doc["layers"]
    names = _names(layers)
    blocks = sorted(doc.get("blocks") or {})
    sources = sorted(doc["inputs"]) if doc.get("inputs") else ["input"]
    for i, layer in enumerate(layers):
        earlier = [*sources, *names[:i]]
        if "inputs" in layer and not set(layer["inputs"]) <= set(earlier) and _likely(draw, 80):
            layer["inputs"] = [draw(st.sampled_from(earlier)) for _ in layer["inputs"]]
        if "share" in layer and _likely(draw, 75):
            layer["share"] = draw(st.sampled_from(names))
        if layer.get("type") == "block" and blocks and _likely(draw, 80):
            layer["use"] = draw(st.sampled_from(blocks))
    for task in (doc.get("outputs") or {}).values():
        if task.get("layer") not in names and names and _likely(draw, 80):
            task["layer"] = draw(st.sampled_from(names))
    for block in (doc.get("blocks") or {}).values():
        params = block.get("params") or {}
        if params and block["layers"] and _likely(draw, 50):  # one value becomes a placeholder
            target = draw(st.sampled_from(block["layers"]))
            key = draw(st.sampled_from(sorted(target)))
            if key != "type":
                target[key] = "${" + draw(st.sampled_from(sorted(params))) + "}"
    return doc


class _Dumper(yaml.SafeDumper):
    """Quotes strings that dlc's loader reads as YAML 1.2 floats (1e5), so the text holds the
    very document that was generated."""


_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def dump(doc, flow: bool | None = None, width: int = 80) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=flow,
                     allow_unicode=True, width=width)


def _valid(doc) -> bool:
    from dlc.model.spec.schema import validator

    return validator().is_valid(doc)


@fuzz_settings()
@given(doc=schema_specs(), flow=st.sampled_from([None, False, True]))
def test_schema_specs(doc, flow):
    text = dump(doc, flow)
    note(text)
    event("schema-valid" if _valid(doc) else "schema-invalid (expected only with blocks)")
    outcome = run_spec(text)
    event(outcome)


def test_generator_knows_schema():
    """Every keyword of the schema is one `schema_values` generates (or ignores on purpose)."""
    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("properties", "$defs"):
                    for sub in value.values():
                        walk(sub)
                else:
                    assert key in KNOWN, f"the fuzzer does not know schema keyword {key!r}"
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(SCHEMA)
    assert not UNSUPPORTED, sorted(UNSUPPORTED)


@settings(max_examples=100, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(doc=SPEC_DOCS)
def test_generated_specs_are_valid(doc):
    """The generator's raw output validates (blocks are validated after expansion, so a spec
    with blocks is checked without them)."""
    doc.pop("blocks", None)
    doc["layers"] = [layer for layer in doc["layers"] if layer["type"] != "block"] or \
        [{"type": "flatten"}]
    from dlc.model.spec.schema import validator

    errors = [e.message for e in validator().iter_errors(doc)]
    assert not errors, errors


# ---- 2. mutated example specs ---------------------------------------------------------------

# the examples; a `base:` model's path made absolute, so that the mutants find it from here
BASES = {p.name: p.read_text(encoding="utf-8").replace("model: data/", f"model: {SPECS}/data/")
         for p in sorted(SPECS.glob("*.yaml"))}
KEYS = WORDS
TOKENS = ["1e999", "-1e999", "-0", "0", "-1", ".nan", ".inf", "-.inf", ".NaN", "0x1F", "0o17",
          "0b101", "1_000", "99999999999999999999999", "9" * 400, "1.5", "1e-3", "true", "yes",
          "no", "on", "null", "~", "'7'", '"x"', "[]", "{}", "[1, 2", "{a: 1", "''", "2026-11-25",
          "12:30:00", "1:30", "0x_", "0b_", "._e5", "1_e5", "0o_", "+.5", "!!binary aGk=", "&x",
          "*x", "<<: *x", "? ", "|", ">-", "%", "@",
          "`", "#", "\\", "${width}", "${input}", "${}", "$", "²", "٣", "\u0660", "\t", "\x00",
          "\x85", "\u2028", "\ufeff", "\ud800", "\r", "\x1b[31m", "é", "∞"]
TAGS = ["!!python/object/apply:os.system ['echo hi']", "!!python/object:builtins.dict {}",
        "!!python/name:os.system", "!!str", "!!int", "!!float", "!!binary", "!!map", "!!seq",
        "!!set", "!!omap", "!custom", "!<tag:yaml.org,2002:str>", "!!timestamp", "!!null"]


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _at(draw, text: str) -> int:
    return draw(st.integers(0, len(text)))


def m_delete_line(draw, text):
    lines = _lines(text)
    del lines[draw(st.integers(0, len(lines) - 1))]
    return "\n".join(lines)


def m_duplicate_line(draw, text):
    lines = _lines(text)
    i = draw(st.integers(0, len(lines) - 1))
    lines.insert(draw(st.integers(0, len(lines))), lines[i])
    return "\n".join(lines)


def m_swap_lines(draw, text):
    lines = _lines(text)
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def m_indent(draw, text):
    lines = _lines(text)
    i = draw(st.integers(0, len(lines) - 1))
    lines[i] = draw(st.sampled_from(["", " ", "  ", "    ", "\t", " \t"])) + lines[i].lstrip(
        " " if draw(st.booleans()) else "")
    return "\n".join(lines)


def m_garbage(draw, text):
    i = _at(draw, text)
    junk = draw(st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(TOKENS),
                          st.sampled_from(list("[]{}:,-?|>'\"#&*!%@`\t\n"))))
    return text[:i] + junk + text[i:]


def m_truncate(draw, text):
    return text[:_at(draw, text)]


def m_tab(draw, text):
    if draw(st.booleans()):
        lines = _lines(text)
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = "\t" + lines[i]
        return "\n".join(lines)
    i = _at(draw, text)
    return text[:i] + "\t" + text[i:]


def _values(text: str) -> list[tuple[int, int]]:
    """(start, end) of each plain value after `key: ` or inside flow mappings."""
    return [m.span(1) for m in re.finditer(r"(?<=: )([^,\n{}\[\]#]+)", text)]


def m_tag(draw, text):
    spans = _values(text)
    tag = draw(st.sampled_from(TAGS))
    if not spans:
        return tag + " " + text
    a, _ = draw(st.sampled_from(spans))
    return text[:a] + tag + " " + text[a:]


def m_anchor_alias(draw, text):
    spans = _values(text)
    if not spans:
        return "&a " + text
    a, b = draw(st.sampled_from(spans))
    text = text[:a] + "&a " + text[a:]
    spans = _values(text)
    kind = draw(st.integers(0, 2))
    c, d = draw(st.sampled_from(spans))
    if kind == 0:
        return text[:c] + "*a" + text[d:]
    if kind == 1:
        return text + "\nextra: *a\n"
    return text + "\n<<: *a\n"


def m_replace_value(draw, text):
    spans = _values(text)
    if not spans:
        return text
    a, b = draw(st.sampled_from(spans))
    new = draw(st.one_of(st.sampled_from(TOKENS), st.sampled_from(WORDS),
                         json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
                         st.text(max_size=10)))
    return text[:a] + new + text[b:]


def m_document(draw, text):
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return "%YAML 1.1\n---\n" + text
    if kind == 1:
        return text + "\n---\nname: second\n"
    if kind == 2:
        return text + "\n...\n" + draw(st.text(max_size=10))
    if kind == 3:
        return "--- |\n" + text
    if kind == 4:
        return text.replace("\n", "\r\n")
    return "\ufeff" + text


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _structural(draw, text, change):
    try:
        doc = yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - PyYAML itself fails on some scalars (0x_, ._e5)
        return text
    if not isinstance(doc, dict):
        return text
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return text
    path = draw(st.sampled_from(paths))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    change(draw, parent, path[-1])
    return dump(doc, draw(st.sampled_from([None, False, True])))


def _delete(draw, parent, key):
    del parent[key]


def _replace(draw, parent, key):
    parent[key] = draw(json_values)


def _swap_type(draw, parent, key):
    v = parent[key]
    if isinstance(v, dict):
        parent[key] = draw(st.sampled_from([list(v), list(v.values()), str(v), None]))
    elif isinstance(v, list):
        parent[key] = draw(st.sampled_from([v[0] if v else None, {str(i): x for i, x in
                                                                  enumerate(v)}, str(v), len(v)]))
    elif isinstance(v, bool):
        parent[key] = draw(st.sampled_from([str(v).lower(), int(v), [v]]))
    elif isinstance(v, (int, float)):
        parent[key] = draw(st.sampled_from([str(v), float(v), [v], {"value": v}, -v, v * 10 ** 9,
                                            True, None]))
    else:
        parent[key] = draw(st.sampled_from([[v], {str(v): v}, 1, 0.5, True, None, ""]))


def _add_key(draw, parent, key):
    target = parent[key] if isinstance(parent[key], dict) else parent
    if isinstance(target, dict):
        target[draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)))] = draw(json_values)


def _duplicate_item(draw, parent, key):
    if isinstance(parent, list):
        parent.insert(draw(st.integers(0, len(parent))), json.loads(json.dumps(parent[key])))
    elif isinstance(parent[key], list) and parent[key]:
        parent[key] = parent[key] * draw(st.integers(2, 50))


STRUCTURAL = {"delete-key": _delete, "replace-value": _replace, "swap-type": _swap_type,
              "add-key": _add_key, "duplicate-item": _duplicate_item}
MUTATIONS = {
    "delete-line": m_delete_line, "duplicate-line": m_duplicate_line, "swap-lines": m_swap_lines,
    "indent": m_indent, "garbage": m_garbage, "truncate": m_truncate, "tab": m_tab, "tag": m_tag,
    "anchor-alias": m_anchor_alias, "replace-value-text": m_replace_value,
    "document": m_document,
    **{name: (lambda draw, text, f=f: _structural(draw, text, f))
       for name, f in STRUCTURAL.items()},
}

_PART = st.one_of(st.sampled_from(KEYS), st.integers(-3, 12).map(str),
                  st.sampled_from(["", " ", "-", "²", "٣", "0x1", "1e3", "١", "layers", "*"]),
                  st.text(max_size=5))
OVERRIDE_STRINGS = st.one_of(
    st.builds(lambda parts, sep, value: ".".join(parts) + sep + value,
              st.lists(_PART, min_size=1, max_size=4), st.sampled_from(["=", "=", "=", "", "=="]),
              st.one_of(st.sampled_from(TOKENS), st.sampled_from(WORDS), st.text(max_size=8),
                        json_values.map(lambda v: json.dumps(v, ensure_ascii=False)))),
    st.text(max_size=20),
)


@st.composite
def mutated_specs(draw):
    name = draw(st.sampled_from(sorted(BASES)))
    text = BASES[name]
    ops = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=4))
    for op in ops:
        text = MUTATIONS[op](draw, text)
    overrides = draw(st.one_of(st.just([]), st.just([]), st.lists(OVERRIDE_STRINGS, min_size=1,
                                                                   max_size=3)))
    return name, ops, text, overrides


@fuzz_settings()
@given(case=mutated_specs())
def test_mutated_specs(case):
    name, ops, text, overrides = case
    note(f"{name} {ops} --set {overrides}\n{text}")
    for op in ops:
        event(f"mutation: {op}")
    event(run_spec(text, overrides))


# ---- 3. garbage text ------------------------------------------------------------------------

YAML_SOUP = st.lists(st.one_of(
    st.sampled_from(TOKENS), st.sampled_from(WORDS), st.sampled_from(TAGS),
    st.sampled_from(["\n", "\n  ", "\n- ", ": ", ", ", "[", "]", "{", "}", "- ", "? ", "---\n",
                     "...\n", "%YAML 1.2\n", "%TAG ! tag:x,2000:\n", "dlc: 1\n", "layers:\n",
                     "  - ", "!!", "&a ", "*a", "'", '"', "\\u00", "\\x", "#", "\t", "  "])),
    max_size=40).map("".join)


@fuzz_settings()
@given(text=st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                      st.binary().map(lambda b: b.decode("utf-8", "replace")), YAML_SOUP,
                      st.tuples(st.sampled_from(sorted(BASES.values())), YAML_SOUP).map(
                          lambda t: t[0][:len(t[0]) // 2] + t[1])))
def test_garbage_text(text):
    event(run_spec(text))


@fuzz_settings(0.25)
@given(data=st.one_of(st.binary(), st.text().map(lambda t: t.encode("utf-16")),
                      st.sampled_from(sorted(BASES.values())).map(
                          lambda t: t.encode("utf-8")[: len(t) // 2] + b"\xff\xfe\x80")))
def test_garbage_spec_files(tmp_path_factory, data):
    """load_spec on raw bytes: undecodable files are a DlcError with one line, not a crash."""
    path = tmp_path_factory.getbasetemp() / FILE
    path.write_bytes(data)
    with time_limit(HANG_S):
        try:
            load_spec(path)
        except SpecError as exc:
            check_spec_error(exc, path.read_text("utf-8"), str(path))
        except DlcError as exc:
            assert "\n" not in str(exc) and str(exc), repr(str(exc))


# ---- 4. dlc predict / dlc evaluate ----------------------------------------------------------

BINARY = """dlc: 1
name: bin
input: {shape: [3], features: [a, b, c]}
layers:
  - {type: dense, units: 4, activation: relu}
  - {type: dense, units: 1}
task: {kind: binary, labels: [neg, pos]}
"""
MODEL_SPECS = {"iris": "iris.yaml", "diabetes": "diabetes.yaml", "binary": BINARY,
               "cnn": "digits_cnn.yaml", "multi": "penguins_wide_deep.yaml",
               "seq": "transformer_reverse.yaml", "text": "text_classifier.yaml",
               "window": "lstm_forecast.yaml", "outputs": "penguins_multitask.yaml"}
N_FEATURES = {"iris": 4, "diabetes": 10, "binary": 3, "cnn": 64, "multi": 6, "seq": 8, "text": 1,
              "window": 24, "outputs": 8}


class Blob(bytes):
    """Bytes that print short in Hypothesis' falsifying examples."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


class Models(dict):
    def __repr__(self) -> str:
        return f"<models {sorted(self)}>"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Compiled models (fresh weights; enough for predict and evaluate) as bytes, and a folder."""
    from dlc.model.compile import compile_spec

    out = Models()
    for name, spec in MODEL_SPECS.items():
        if spec in BASES or "\n" in spec:
            out[name] = Blob(compile_spec(load_spec_text(BASES.get(spec, spec)))
                             .SerializeToString())
    folder = tmp_path_factory.mktemp("fuzz_cli")
    (folder / "secret.bin").write_bytes(SECRET)  # what an external-data model might try to read
    return out, folder


def run_cli(*args) -> tuple[int, str, str]:
    """`dlc.cli.main` with argv, in process: (exit code, stdout, stderr)."""
    from dlc.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["dlc", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(), time_limit(HANG_S):
            warnings.simplefilter("error")  # a warning on stderr would break the one-line rule
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def check_cli(code: int, out: str, err: str) -> None:
    assert code in (0, 1, 2), f"exit {code}: {err}"
    assert "Traceback" not in err, err
    if code == 2 and err.count("\n") > 1:  # a spec's diagnostics: one `file:line:col:` each
        assert all(re.match(r"\S[^\n]*:\d+:\d+: \S", line) for line in err.splitlines()), err
    elif code:
        assert err.endswith("\n") and err.count("\n") == 1 and err.strip(), \
            f"exit {code} with stderr {err!r}"
    event(f"exit {code}" + (f": {err.split(':')[0][:40]}" if code else ""))


def _with_meta(raw: bytes, changes: dict) -> bytes:
    import onnx

    model = onnx.load_model_from_string(raw)
    meta = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


META_KEYS = ["dlc.spec_resolved", "dlc.labels", "dlc.features", "dlc.task", "dlc.input_shape",
             "dlc.normalize", "dlc.text", "dlc.version"]


def _damage_doc(draw, doc):
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    draw(st.sampled_from(list(STRUCTURAL.values())))(draw, parent, path[-1])
    return doc


@st.composite
def model_bytes(draw, models: dict) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(models)))
    raw = models[name]
    kind = draw(st.sampled_from(["intact", "random", "truncate", "flip", "no-meta", "bad-json",
                                 "meta-value", "spec-damage", "meta-delete", "external",
                                 "deep-meta", "blocks-meta"]))
    if kind in HOSTILE:
        raw = HOSTILE[kind](draw, raw)
    elif kind == "random":
        raw = draw(st.binary(max_size=2000))
    elif kind == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        raw = bytes(data)
    elif kind == "no-meta":
        raw = _with_meta(raw, {k: None for k in META_KEYS})
    elif kind == "bad-json":
        key = draw(st.sampled_from(META_KEYS))
        raw = _with_meta(raw, {key: draw(st.text(max_size=20))})
    elif kind == "meta-value":
        key = draw(st.sampled_from(META_KEYS))
        raw = _with_meta(raw, {key: json.dumps(draw(json_values))})
    elif kind == "spec-damage":
        doc = json.loads(_meta(raw)["dlc.spec_resolved"])
        raw = _with_meta(raw, {"dlc.spec_resolved": json.dumps(_damage_doc(draw, doc))})
    elif kind == "meta-delete":
        raw = _with_meta(raw, {draw(st.sampled_from(META_KEYS)): None})
    return f"{name}/{kind}", Blob(raw)


# ---- hostile models: external data, deep metadata, unexpanded blocks (issue 15) -------------

SECRET = b"FUZZ-SECRET-not-to-be-read " * 8
LOCATIONS = ["secret.bin", "../secret.bin", "/etc/passwd", "nope.bin", "", "secret.bin\x00"]


def _external(draw, raw: bytes) -> bytes:
    """One tensor (an initializer, or a Constant's value) moved to an external file."""
    import onnx

    model = onnx.load_model_from_string(raw)
    if not model.graph.initializer:
        return raw
    t = model.graph.initializer[draw(st.integers(0, len(model.graph.initializer) - 1))]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = draw(st.sampled_from([onnx.TensorProto.EXTERNAL, onnx.TensorProto.DEFAULT]))
    for key, value in (("location", draw(st.sampled_from(LOCATIONS))),
                       ("offset", draw(st.sampled_from(["0", "8", "-1", "x"]))),
                       ("length", draw(st.sampled_from(["16", "0", str(2 ** 40)])))):
        t.external_data.add(key=key, value=value)
    if draw(st.booleans()):  # as a Constant node instead of an initializer
        model.graph.initializer.remove(t)
        model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [t.name], value=t))
    return model.SerializeToString()


def _deep_meta(draw, raw: bytes) -> bytes:
    depth = draw(st.sampled_from([40, 65, 300, 1000, 5000]))
    value = draw(st.sampled_from(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]))
    key = draw(st.sampled_from(META_KEYS + ["dlc.categories", "dlc.target_norm"]))
    if key == "dlc.spec_resolved" and depth <= 300 and draw(st.booleans()):  # inside a spec
        doc = json.loads(_meta(raw)["dlc.spec_resolved"])
        doc[draw(st.sampled_from(["name", "description", "data", "layers"]))] = json.loads(value)
        value = json.dumps(doc)
    return _with_meta(raw, {key: value})


def _blocks_meta(draw, raw: bytes) -> bytes:
    doc = json.loads(_meta(raw)["dlc.spec_resolved"])
    doc["blocks"] = {"b": {"layers": [{"type": "relu"}]}}
    if draw(st.booleans()):
        doc["layers"].insert(draw(st.integers(0, len(doc["layers"]))),
                             {"type": "block", "use": "b", "name": "bb"})
    return _with_meta(raw, {"dlc.spec_resolved": json.dumps(doc)})


HOSTILE = {"external": _external, "deep-meta": _deep_meta, "blocks-meta": _blocks_meta}


def _meta(raw: bytes) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load_model_from_string(raw).metadata_props}


def _good_input(name: str) -> tuple[str, bytes]:
    if name in ("multi", "outputs"):
        return "in.csv", (SPECS / "data" / "penguins.csv").read_bytes()[:2000].rsplit(b"\n", 1)[0]
    if name == "text":
        return "in.txt", b"a small brown dog\nsomething you eat\n"
    if name == "window":
        return "in.csv", ("sunspots\n" + "".join(f"{i % 7}.5\n" for i in range(40))).encode()
    header = {"iris": "sepal_length,sepal_width,petal_length,petal_width\n",
              "binary": "a,b,c\n"}.get(name, "")
    n = N_FEATURES[name]
    body = "".join(",".join(str(0.1 * (i + j)) for j in range(n)) + "\n" for i in range(3))
    return "in.csv", (header + body).encode()


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@st.composite
def input_files(draw, n_features: int) -> tuple[str, bytes]:
    """(file name, bytes): CSV and NPZ/NPY inputs, well-formed or broken."""
    kind = draw(st.sampled_from(["csv-random", "csv-columns", "csv-nan", "csv-empty", "binary",
                                 "npz", "npz-truncated", "npz-junk", "npy", "csv-unicode",
                                 "csv-header-only", "csv-quoted"]))
    event(f"input: {kind}")
    if kind == "csv-random":
        return "in.csv", draw(st.text()).encode("utf-8", "surrogatepass")
    if kind == "csv-columns":
        width = draw(st.integers(0, n_features + 3))
        rows = draw(st.lists(st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=3),
                                                st.sampled_from(["", "nan", "inf", "1e999"])),
                                      min_size=max(width - 1, 0), max_size=width + 1),
                             min_size=0, max_size=5))
        header = draw(st.sampled_from(["", "a,b,c\n", "sepal_length,sepal_width,petal_length,"
                                                      "petal_width\n"]))
        return "in.csv", (header + "".join(",".join(map(str, r)) + "\n" for r in rows)).encode()
    if kind == "csv-nan":
        cells = ["nan"] + ["1"] * (n_features - 1)
        return "in.csv", (",".join(cells) + "\n").encode()
    if kind == "csv-empty":
        return "in.csv", draw(st.sampled_from([b"", b"\n", b"\n\n  \n", b"\xef\xbb\xbf"]))
    if kind == "csv-quoted":  # quoted cells may hold commas, quotes and line breaks
        buf = io.StringIO()
        cell = st.one_of(st.sampled_from(["1", "2.5", "nan", "", "a\nb", "x\r", "\x1b[2J", '"',
                                          "1,2", "\u2028"]), st.text(max_size=4))
        rows = draw(st.lists(st.lists(cell, min_size=n_features, max_size=n_features),
                             min_size=1, max_size=4))
        csv.writer(buf).writerows(rows)
        return "in.csv", buf.getvalue().encode("utf-8", "surrogatepass")
    if kind == "csv-header-only":
        return "in.csv", b"a,b,c,d\n"
    if kind == "csv-unicode":
        return "in.csv", draw(st.binary(max_size=60)) + b"\xff\xfe"
    if kind == "binary":
        return draw(st.sampled_from(["in.csv", "in.npz", "in.npy", "in.txt", "in"])), \
            draw(st.binary(max_size=300))
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool", "U3", "complex64"]))
    arr = np.ones(shape, dtype=dtype) if dtype != "U3" else np.full(shape, "a", dtype)
    if dtype.startswith("float") and arr.size and draw(st.booleans()):
        arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
    if kind == "npy":
        buf = io.BytesIO()
        np.save(buf, arr)
        return "in.npy", buf.getvalue()
    key = draw(st.sampled_from(["x", "y", "inputs", "x"]))
    arrays = {key: arr}
    if draw(st.booleans()):
        arrays["y"] = np.zeros(draw(st.integers(0, 6)), dtype=draw(st.sampled_from(
            ["int64", "float32", "U1"])))
    raw = _npz(arrays)
    if kind == "npz-truncated":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif kind == "npz-junk":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        raw = bytes(data)
    return "in.npz", raw




def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    if path.is_dir():
        path = folder / ("f_" + name)
    path.write_bytes(data)
    return path


@fuzz_settings(0.5)
@given(data=st.data())
def test_predict_corrupt_models(models, data):
    built, folder = models
    label, raw = data.draw(model_bytes(built))
    event(f"model: {label.split('/')[1]}")
    model = _write(folder, "model.onnx", raw)
    name = label.split("/")[0]
    inp = _write(folder, *_good_input(name))
    kind = label.split("/")[1]
    for args in (["predict", model, inp],
                 ["evaluate", model, "--data", data.draw(st.sampled_from(
                     [f"csv:{inp}", "builtin:iris", "builtin:diabetes"]))]):
        code, out, err = run_cli(*args)
        check_cli(code, out, err)
        assert SECRET[:20].decode() not in out + err
        if kind == "external":  # refused before anything reads it
            assert code == 1 and "keeps its values in an external file" in err, err


@fuzz_settings(0.5)
@given(data=st.data())
def test_predict_corrupt_inputs(models, data):
    built, folder = models
    name = data.draw(st.sampled_from(sorted(built)))
    model = _write(folder, f"{name}.onnx", built[name])
    file, raw = data.draw(input_files(N_FEATURES[name]))
    inp = _write(folder, file, raw)
    out = data.draw(st.sampled_from([None, None, "out.csv", "out.json", "out.npz", "out.txt",
                                     "missing/out.csv", "."]))
    args = ["predict", model, inp] + (["-o", folder / out] if out else [])
    check_cli(*run_cli(*args))
    scheme = "npz" if file.endswith(".npz") else "csv"
    src = data.draw(st.sampled_from([f"{scheme}:{inp}", f"csv:{inp}", f"npz:{inp}", str(inp),
                                     "builtin:nothing", "csv:", "folder:" + str(folder),
                                     "nowhere:x", f"csv:{folder}/missing.csv"]))
    check_cli(*run_cli("evaluate", model, "--data", src))


# ---- what the campaign found: each a crash (or a broken message) before its fix ----------------

_MLP = "dlc: 1\nname: t\ninput: {shape: [4]}\nlayers:\n  - {type: dense, units: 3}\n" \
       "task: {kind: classification}\n"
FOUND_SPECS = [  # (id, text, overrides, part of the message)
    ("unprintable-char", "a\x08", [], "unreadable character"),
    ("yaml-hex-underscore", _MLP + "description: 0x_\n", [], None),
    ("yaml-bin-underscore", "dlc: 0b_\n", [], "dlc"),
    ("yaml-float-underscore", "name: ._e5\n", [], "name"),
    ("set-unicode-digit-key", _MLP, ["²=1"], "unknown key '²'"),
    ("set-unicode-digit-index", _MLP, ["layers.²=1"], "use a number, not '²'"),
    ("set-double-minus", _MLP, ["layers.--1.units=1"], "use a number"),
    ("set-newline", _MLP, ["\n"], "--set \\n: expected KEY.PATH=VALUE"),
    ("name-with-cr", _MLP.replace("units: 3}", "units: 3, inputs: [\"\\r\"]}"), [],
     "unknown layer '\\r'"),
    ("key-with-newline", _MLP + "\"a\\nb\": 1\n", [], "unknown key 'a\\nb'"),
    ("input-too-big", _MLP.replace("[4]", f"[{2 ** 70}]"), [], "values per sample; the limit"),
    ("output-too-big", _MLP.replace("units: 3", f"units: {2 ** 64}"), [], "the limit is"),
    ("params-too-many", _MLP.replace("[4]", "[20000]").replace("units: 3", "units: 30000"), [],
     "parameters; the limit is 500,000,000"),
    ("nested-block", _MLP.replace("layers:\n", "layers:\n  - {type: block, use: b}\n")
     + "blocks:\n  b: {layers: [{type: relu}, {type: block, use: b}]}\n", [],
     "a block cannot place a block"),
    ("blocks-a-list", _MLP.replace("layers:\n", "layers:\n  - {type: block, use: b}\n")
     + "blocks: [b]\n", [], "expected a mapping of block names"),
    ("block-params-a-list", _MLP.replace("layers:\n", "layers:\n  - {type: block, use: b}\n")
     + "blocks:\n  b: {params: [w], layers: [{type: relu}]}\n", [], "expected a mapping of "
     "parameter names"),
    ("block-use-a-list", _MLP.replace("layers:\n", "layers:\n  - {type: block, use: [b]}\n")
     + "blocks:\n  b: {layers: [{type: relu}]}\n", [], "expected the name of a block"),
    ("stride-int64", "dlc: 1\nname: t\ninput: {shape: [1, 4]}\nlayers:\n  - {type: maxpool1d, "
     f"pool: 2, stride: {2 ** 64}}}\n  - {{type: flatten}}\ntask: {{kind: regression}}\n", [],
     "must be at most 2,147,483,647"),
]


@pytest.mark.parametrize("case_id,text,overrides,part", FOUND_SPECS,
                         ids=[c[0] for c in FOUND_SPECS])
def test_found_specs(case_id, text, overrides, part):
    outcome = run_spec(text, overrides)
    if part is None:
        assert outcome.startswith("compiled"), outcome
        return
    with pytest.raises(SpecError) as info:
        from dlc.model.network import build_network

        build_network(load_spec_text(text, FILE, overrides))
    assert part in str(info.value)


def _compiled(name: str) -> bytes:
    from dlc.model.compile import compile_spec

    return compile_spec(load_spec_text(BASES.get(MODEL_SPECS[name], MODEL_SPECS[name])))\
        .SerializeToString()


def _encrypted_npz() -> bytes:
    data = bytearray(_npz({"x": np.ones((2, 3), np.float32)}))
    data[6] |= 1  # the local header's "encrypted" flag
    i = data.index(b"PK\x01\x02")
    data[i + 8] |= 1  # and the central directory's
    return bytes(data)


# found by the campaign: a zip64 npz whose y.npy ends inside its .npy header (zipfile raises an
# EOFError without a message)
SHORT_MEMBER_NPZ = bytes.fromhex(
    "504b03042d00000000000000210021fc5023ffffffffffffffff0a001400696e707574732e6e707901001000"
    "88000000000000008800000000000000934e554d5059010076007b276465736372273a20273c6638272c2027"
    "666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028292c207d20202020202020"
    "2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020"
    "20202020202020202020200a000000000000f03f504b03042d000000000000002100c09567c8ffffffffffff"
    "ffff05001401792e6e70790100100080000000000000008000000000000000934e554d5059010076007b2764"
    "65736372273a20273c6938272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065"
    "273a2028302c292c207d20202020202020202020202020202020202020202020202020202020202020202020"
    "20202020202020202020202020202020202020202020202020200a504b01022d032d00000000000000210021"
    "fc502388000000880000000a0000000000000000000000800100000000696e707574732e6e7079504b01022d"
    "032d000000000000002100c09567c880000000800000000500000000000000000000008001c4000000792e6e"
    "7079504b050600000000020002006b0000007b0100000000"
)


FOUND_CLI = [  # (id, model, metadata changes, input file name, input bytes, part of the message)
    ("spec-not-a-mapping", "binary", {"dlc.spec_resolved": "0"}, None, None, "not a mapping"),
    ("features-not-a-list", "binary", {"dlc.features": "true"}, None, None, "dlc.features"),
    ("features-count", "binary", {"dlc.features": '["a", "b"]'}, None, None, "feature names"),
    ("spec-shape-changed", "binary", {}, None, None, "corrupt"),
    ("layer-name-missing", "cnn", {}, None, None, "unique layer names"),
    ("labels-count", "iris", {"dlc.labels": '["a"]'}, None, None, "class names"),
    ("no-categories", "multi", {}, None, None, "category ids"),
    ("dim-not-utf8", "binary", {}, None, None, "not a valid ONNX model"),
    ("npz-truncated", "binary", {}, "in.npz", b"PK\x03\x04" + b"\x00" * 30, "cannot read"),
    ("npz-encrypted", "binary", {}, "in.npz", "encrypted", "cannot read"),
    ("npz-member-ends-early", "binary", {}, "in.npz", SHORT_MEMBER_NPZ, "(EOFError)"),
    ("npy-header-nul", "binary", {}, "in.npz",  # numpy's header parser: a TokenError
     _npz({"x": np.ones((500, 3))}).replace(b"), }", b"), \x00", 1), "not a valid .npy array"),
    ("csv-cell-newline", "diabetes", {}, "in.csv",
     b'"a\nb",1,1,1,1,1,1,1,1,1\nnan,1,1,1,1,1,1,1,1,1\n', "column 'a\\nb'"),
]


SPEC_DAMAGE = {"spec-shape-changed": lambda spec: spec["input"].update(shape=[3, 3, 3]),
               "layer-name-missing": lambda spec: spec["layers"][0].pop("name")}


@pytest.mark.parametrize("case_id,name,meta,file,data,part", FOUND_CLI,
                         ids=[c[0] for c in FOUND_CLI])
def test_found_cli(tmp_path, case_id, name, meta, file, data, part):
    raw = _compiled(name)
    if case_id in SPEC_DAMAGE:  # schema-valid, but not what dlc wrote
        spec = json.loads(_meta(raw)["dlc.spec_resolved"])
        SPEC_DAMAGE[case_id](spec)
        meta = {"dlc.spec_resolved": json.dumps(spec)}
    if case_id == "dim-not-utf8":  # the batch dimension's name "N" (b"\x12\x01N"), one bit off
        i = raw.rindex(b"\x12\x01N")
        raw = raw[:i + 2] + b"\xce" + raw[i + 3:]
    model = _write(tmp_path, "m.onnx", _with_meta(raw, meta) if meta else raw)
    if data == "encrypted":
        data = _encrypted_npz()
    file, data = (file, data) if file else _good_input(name)
    inp = _write(tmp_path, file, data)
    code, out, err = run_cli("predict", model, inp)
    check_cli(code, out, err)
    assert code == 1 and part in err, err


# ---- 5. run folders: dlc runs, dlc plot, dlc train --resume on damaged files (issue 15) ------

RUN_FILES = ["run.json", "checkpoint.npz", "metrics.csv", "summary.json", "spec.yaml",
             "model.onnx"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished two-epoch iris run: its files as bytes, and a scratch folder."""
    from dlc.train.run import train

    out = tmp_path_factory.mktemp("fuzz_run") / "run"
    spec = load_spec(SPECS / "iris.yaml", ["train.epochs=2"])
    train(spec, str(out), quiet=True)
    files = {name: Blob((out / name).read_bytes()) for name in RUN_FILES}
    return files, tmp_path_factory.mktemp("fuzz_runs")


def _damage_file(draw, name: str, raw: bytes):
    """(kind, new bytes, or None to delete, or "folder" to put a folder in its place)."""
    kind = draw(st.sampled_from(["delete", "folder", "truncate", "flip", "random", "json",
                                 "deep-json", "csv-rows", "npz-arrays"]))
    event(f"run file: {name} {kind}")
    if kind in ("delete", "folder"):
        return kind, None if kind == "delete" else "folder"
    if kind == "truncate":
        return kind, raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return kind, bytes(data)
    if kind == "random":
        return kind, draw(st.binary(max_size=400))
    if kind == "json":
        return kind, json.dumps(draw(json_values)).encode()
    if kind == "deep-json":
        depth = draw(st.sampled_from([65, 1000, 5000]))
        return kind, ("[" * depth + "]" * depth).encode()
    if kind == "csv-rows":
        lines = raw.decode("utf-8", "replace").splitlines()
        rows = draw(st.lists(st.text(alphabet="0123456789.,-eanif\"x \t", max_size=30),
                             max_size=4))
        return kind, "\n".join(lines[:draw(st.integers(0, len(lines)))] + rows).encode()
    arrays = draw(st.dictionaries(st.sampled_from(["meta", "params", "state", "rng", "x"]),
                                  st.sampled_from([np.zeros(3), np.array(["a"]), np.zeros((0,)),
                                                   np.frombuffer(b'{"epoch": "x"}', np.uint8)]),
                                  max_size=3))
    return kind, _npz(arrays)


_RUN_COUNTER = iter(range(10 ** 9))


@contextlib.contextmanager
def damaged_run(run_folder, data):
    """A fresh copy of the run folder with one or two of its files damaged."""
    import shutil

    files, scratch = run_folder
    run = scratch / f"r{next(_RUN_COUNTER)}"
    run.mkdir()
    names = data.draw(st.lists(st.sampled_from(RUN_FILES), min_size=1, max_size=2, unique=True))
    changed = {name: _damage_file(data.draw, name, files[name]) for name in names}
    for name, raw in files.items():
        _, new = changed.get(name, ("intact", raw))
        if new == "folder":
            (run / name).mkdir()
        elif new is not None:
            (run / name).write_bytes(new)
    try:
        yield run
    finally:
        shutil.rmtree(run, ignore_errors=True)


@fuzz_settings(0.1)  # matplotlib's savefig: about half a second an example
@given(data=st.data())
def test_damaged_run_folders(run_folder, data):
    """`dlc runs` and `dlc plot` on a run folder with damaged files: a result (a note for what
    was skipped) or one line (exit 1 or 2), never exit 3."""
    with damaged_run(run_folder, data) as run:
        check_cli(*run_cli("runs", run))
        check_cli(*run_cli("plot", run, "-o", run / "c.png"))


@fuzz_settings(0.1, phases=[Phase.explicit, Phase.generate])  # an epoch each: no shrinking
@given(data=st.data())
def test_resume_damaged_run_folders(run_folder, data):
    """`dlc train --resume` on a run folder with damaged files: one line, never exit 3."""
    with damaged_run(run_folder, data) as run:
        check_cli(*run_cli("train", "--resume", run, "--epochs", "3", "-q"))
