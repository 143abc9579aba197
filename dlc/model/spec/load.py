"""Loading a spec: YAML with positions, `--set` overrides, schema validation, defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dlc.errors import Diagnostic, DlcError, SpecError
from dlc.model.spec.expand import expand
from dlc.model.spec.schema import fill_defaults, one_line, render_path, show, validate
from dlc.model.spec.yamlload import Loaded, parse_yaml
from dlc.files.untrusted import MAX_NESTING, MAX_SPEC_BYTES, read_bytes

_KIND_LOSS = {"classification": "cross_entropy", "binary": "binary_cross_entropy",
              "regression": "mse"}
_KIND_METRICS = {"classification": ["accuracy"], "binary": ["accuracy"],
                 "regression": ["mae", "r2"]}


@dataclass
class Spec:
    """A loaded, validated spec with every default filled, and where each value came from."""

    data: dict
    text: str
    file: str
    positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Sequence) -> tuple[int, int]:
        """(line, col) of `path`, or of its nearest ancestor written in the file; (0, 0) if none."""
        path = tuple(path)
        while path not in self.positions:
            if not path:
                return (0, 0)
            path = path[:-1]
        return self.positions[path]

    def diag(self, path: Sequence, message: str) -> Diagnostic:
        """A diagnostic at `path` (e.g. ("layers", 2, "units")), for checks after loading."""
        line, col = self.where(path)
        return Diagnostic(self.file, line, col, render_path(tuple(path)), one_line(message))


@dataclass
class _Override:
    raw: str
    path: tuple
    value: Any


def _parse_override(raw: str, file: str) -> _Override:
    """`layers.2.units=128` -> path ("layers", "2", "units") (numbers resolved when applied)."""
    key, sep, text = raw.partition("=")
    parts = tuple(key.strip().split("."))
    if len(parts) > MAX_NESTING:
        message = f"--set: a path of {len(parts)} keys is deeper than a spec nests (MAX_NESTING " \
                  f"{MAX_NESTING})"
        raise SpecError([Diagnostic(file, 0, 0, "", message)])
    if not sep or not all(parts):
        message = f"--set {raw}: expected KEY.PATH=VALUE, e.g. --set train.epochs=5"
        raise SpecError([Diagnostic(file, 0, 0, "", one_line(message))])
    try:
        loaded = parse_yaml(text, file) if text.strip() else Loaded(None)
    except SpecError as exc:
        message = f"--set {raw}: bad value: {exc.diagnostics[0].message}"
        raise SpecError([Diagnostic(file, 0, 0, "", one_line(message))]) from None
    return _Override(raw, parts, loaded.data)


_INDEX = re.compile(r"-?[0-9]+")  # a list index in a --set path (ASCII digits only)


def _step(container: Any, part: str, where: tuple) -> tuple[Any, str]:
    """The key or index `part` names in `container`; a Diagnostic-worthy message if none."""
    if isinstance(container, list):
        if not _INDEX.fullmatch(part):  # not str.isdigit(): '²' is a digit, int('²') fails
            return None, f"{render_path(where) or 'the spec'} is a list; use a number, not '{part}'"
        index = int(part)
        if not 0 <= index < len(container):
            noun = "layer" if where == ("layers",) else "item"
            has = f"the spec has {len(container)}" if noun == "layer" else \
                f"the list has {len(container)}"
            return None, f"no {noun} {index} ({has})"
        return index, ""
    if isinstance(container, dict):
        return part, ""
    return None, f"{render_path(where)} is {show(container)}, not a mapping"


def _apply(data: dict, ov: _Override, spec_pos: Spec) -> Diagnostic | None:
    """Apply one override in place, creating missing mappings; a Diagnostic if it cannot."""
    container: Any = data
    where: tuple = ()
    for i, part in enumerate(ov.path):
        key, problem = _step(container, part, where)
        if problem:
            return spec_pos.diag(where, f"--set {ov.raw}: {problem}")
        if i == len(ov.path) - 1:
            container[key] = ov.value
            return None
        if isinstance(container, dict) and key not in container:
            container[key] = {}
        container, where = container[key], (*where, key)
    return None


def _apply_overrides(loaded: Loaded, overrides: Sequence[str], file: str, text: str) -> list:
    """Apply `--set` strings to the loaded data; returns the applied paths (resolved)."""
    probe = Spec({}, text, file, loaded.positions)
    diagnostics, applied = [], []
    for raw in overrides:
        ov = _parse_override(raw, file)
        problem = _apply(loaded.data, ov, probe)
        if problem:
            diagnostics.append(problem)
        else:
            resolved = tuple(int(p) if _INDEX.fullmatch(p) else p for p in ov.path)
            applied.append((resolved, raw))
    if diagnostics:
        raise SpecError(diagnostics)
    return applied


def _check_top(loaded: Loaded, file: str) -> None:
    if loaded.data is None:
        message = "the file is empty; a spec starts with `dlc: 1`"
        raise SpecError([Diagnostic(file, 1, 1, "", message)])
    if not isinstance(loaded.data, dict):
        kind = "a list" if isinstance(loaded.data, list) else f"the value {loaded.data!r}"
        line, col = loaded.positions.get((), (1, 1))
        raise SpecError([Diagnostic(file, line, col, "", "a spec must be a mapping of keys "
                                    f"(`dlc: 1`, `name: ...`, ...), got {kind}")])


def _schema_diagnostics(spec: Spec, applied: list) -> list[Diagnostic]:
    out = []
    for problem in validate(spec.data):
        table = spec.key_positions if problem.at_key else spec.positions
        line, col = table.get(problem.path) or spec.where(problem.path)
        message = problem.message
        for path, raw in applied:
            if problem.path[: len(path)] == path:
                message += f" (from --set {raw})"
        out.append(Diagnostic(spec.file, line, col, render_path(problem.path),
                              one_line(message)))
    return out


def _fill_layer_names(spec: Spec) -> list[Diagnostic]:
    """Default names `<type>_<index>`; a diagnostic at each name already used above it."""
    first: dict[str, int] = {}
    out = []
    for index, layer in enumerate(spec.data["layers"]):
        explicit = "name" in layer
        name = layer.setdefault("name", f"{layer['type']}_{index}")
        if name in first:
            other = first[name]
            how = f"layer name '{name}'" if explicit else \
                f"the default name '{name}' of this layer (give it a `name:`)"
            line = spec.where(("layers", other, "name"))[0]
            message = f"duplicate {how}: already used by layers[{other}] (line {line})"
            path = ("layers", index, "name") if explicit else ("layers", index)
            out.append(spec.diag(path, message))
        else:
            first[name] = index
    return out


FLOAT32_MAX = 3.4028234663852886e38


def _check_floats(spec: Spec, value: Any = None, path: tuple = ()) -> list[Diagnostic]:
    """Every number becomes a float32 in the graph or feeds one: NaN, infinities and magnitudes
    beyond float32's range are refused where they stand (one rule for every field)."""
    if not path:
        value = spec.data
    if isinstance(value, dict):
        return [d for k, v in value.items() for d in _check_floats(spec, v, (*path, k))]
    if isinstance(value, list):
        return [d for i, v in enumerate(value) for d in _check_floats(spec, v, (*path, i))]
    if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:
        what = ("not a number" if value != value else "an infinity" if abs(value) == float("inf")
                else f"{value:g} is outside float32's range (|x| <= 3.4e38)")
        return [spec.diag(path, f"{what}; give a finite value")]
    return []


def _fill_task_defaults(spec: Spec) -> list[Diagnostic]:
    """Loss and metrics by kind; for `outputs:` also each output's layer, target and weight
    (defaults: the layer and the column named like the output, weight 1)."""
    data = spec.data
    if ("task" in data) == ("outputs" in data):
        return [spec.diag((), "give exactly one of `task:` (one output: the last layer) and "
                              "`outputs:` (several named outputs)")]
    heads = {"": data["task"]} if "task" in data else data["outputs"]
    for name, task in heads.items():
        task.setdefault("loss", _KIND_LOSS[task["kind"]])
        task.setdefault("metrics", list(_KIND_METRICS[task["kind"]]))
        if name:
            task.setdefault("layer", name)
            task.setdefault("target", name)
            task.setdefault("weight", 1.0)
    return []


def load_spec_text(text: str, filename: str = "<string>", overrides: Sequence[str] = ()) -> Spec:
    """Parse, override, validate and default-fill a spec; raise SpecError with every problem."""
    text = text.lstrip("\ufeff")
    loaded = parse_yaml(text, filename)
    _check_top(loaded, filename)
    applied = _apply_overrides(loaded, overrides, filename, text) if overrides else []
    spec = Spec(loaded.data, text, filename, loaded.positions, loaded.key_positions)
    diagnostics = expand(spec.data, spec.positions, spec.key_positions, filename)
    if diagnostics:
        raise SpecError(diagnostics)
    diagnostics = _schema_diagnostics(spec, applied) or _check_floats(spec)
    if diagnostics:
        raise SpecError(diagnostics)
    fill_defaults(spec.data)
    diagnostics = _fill_task_defaults(spec) or _fill_layer_names(spec)
    if diagnostics:
        raise SpecError(diagnostics)
    return spec


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Load the spec file at `path` (named in diagnostics as given); DlcError if unreadable."""
    file = str(path)
    try:
        text = read_bytes(path, "spec file", MAX_SPEC_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DlcError(f"spec file is not UTF-8 text: {file} (byte {exc.start})") from None
    return load_spec_text(text, file, overrides)
