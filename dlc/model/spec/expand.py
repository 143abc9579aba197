"""Reusable blocks: `blocks:` defines named sub-graphs with parameters, `{type: block, use: NAME,
repeat: N, PARAM: VALUE}` places copies of one.

Expansion runs before schema validation, so an expanded layer is checked like one written out,
and its diagnostics point at the block's layer in the file (positions are copied over).

- `${param}` as a whole value is replaced by the parameter's value (type kept: 64 stays an
  integer); inside a longer string it is substituted as text.
- `${input}` names the block copy's input: the layer before the block (or the block layer's own
  `inputs`), or the previous copy's output. A block's first layer takes it by default.
- Copy k of a block placed as `res` with repeat > 1 names its layers `res<k>.<layer>`; with
  repeat 1 they are `res.<layer>`. Names inside the block (in `inputs`, `share`) are renamed
  alike, so every copy has its own parameters.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from dlc.errors import Diagnostic
from dlc.model.spec.schema import one_line, render_path

MAX_COPIES = 1000  # repeat above this is refused: a spec cannot expand into a huge graph
MAX_LAYERS = 10000
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Fail(Exception):
    def __init__(self, path: tuple, message: str):
        self.path, self.message = path, message


def _substitute(value: Any, params: dict, path: tuple) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, params, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, (*path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    for name in _PLACEHOLDER.findall(value):
        if name not in params:
            hint = difflib.get_close_matches(name, list(params), n=1)
            raise _Fail(path, f"unknown block parameter '${{{name}}}'"
                              + (f"; did you mean '${{{hint[0]}}}'?" if hint else ""))
    if whole:
        return params[whole.group(1)]
    return _PLACEHOLDER.sub(lambda m: str(params[m.group(1)]), value)


def _block_params(block: dict, use: dict, path: tuple) -> dict:
    declared = block.get("params") or {}
    if not isinstance(declared, dict):
        raise _Fail(("blocks", use["use"], "params"), "expected a mapping of parameter names to "
                                                      "default values")
    declared = dict(declared)
    for key, value in use.items():
        if key in ("type", "use", "name", "repeat", "inputs"):
            continue
        if key not in declared:
            hint = difflib.get_close_matches(key, list(declared), n=1)
            raise _Fail((*path, key), f"block '{use['use']}' has no parameter '{key}'"
                        + (f"; did you mean '{hint[0]}'?" if hint else
                           f" (it declares: {', '.join(declared) or 'none'})"))
        declared[key] = value
    return declared


def _copy(block: dict, prefix: str, params: dict, source: str, src_path: tuple):
    """The layers of one copy, renamed, with their source paths (for positions)."""
    local = [layer.get("name", f"{layer.get('type')}_{j}")
             for j, layer in enumerate(block["layers"])]
    rename = {n: f"{prefix}.{n}" for n in local}
    out = []
    for j, layer in enumerate(block["layers"]):
        path = (*src_path, "layers", j)
        layer = _substitute(layer, {**params, "input": source}, path)
        layer["name"] = rename[local[j]]
        inputs = layer.get("inputs", [source] if j == 0 else None)
        if isinstance(inputs, list):
            layer["inputs"] = [rename.get(i, i) if isinstance(i, str) else i for i in inputs]
        if isinstance(layer.get("share"), str):
            layer["share"] = rename.get(layer["share"], layer["share"])
        out.append((layer, path))
    return out, rename[local[-1]]


def _block_of(data: dict, use: dict, path: tuple) -> tuple[str, dict]:
    """(name, block) that a `type: block` layer uses, its layers checked to be placeable."""
    blocks = data.get("blocks") or {}
    if not isinstance(blocks, dict):
        raise _Fail(("blocks",), "expected a mapping of block names to blocks")
    name = use.get("use")
    if not isinstance(name, str):
        raise _Fail((*path, "use"), f"expected the name of a block, got {name!r}")
    if name not in blocks:
        hint = difflib.get_close_matches(str(name), list(blocks), n=1)
        raise _Fail((*path, "use"), f"unknown block '{name}'" + (
            f"; did you mean '{hint[0]}'?" if hint else
            f" (blocks: {', '.join(blocks) or 'none defined'})"))
    block = blocks[name]
    if not isinstance(block, dict) or not isinstance(block.get("layers"), list) \
            or not block["layers"]:
        raise _Fail(("blocks", name), "a block needs a non-empty `layers:` list")
    for j, layer in enumerate(block["layers"]):
        if not isinstance(layer, dict):
            raise _Fail(("blocks", name, "layers", j), "expected a layer (a mapping with a type)")
        if layer.get("type") == "block":  # copies are not expanded again
            raise _Fail(("blocks", name, "layers", j, "type"), "a block cannot place a block; "
                                                               "list the layers, or repeat it")
        if not isinstance(layer.get("name", ""), str):
            raise _Fail(("blocks", name, "layers", j, "name"), "expected a layer name")
    return name, block


def _expand_use(data: dict, i: int, use: dict, previous: str) -> list:
    """The layers that `type: block` layer i stands for: `repeat` copies of the block."""
    path = ("layers", i)
    name, block = _block_of(data, use, path)
    repeat = use.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_COPIES:
        raise _Fail((*path, "repeat"), f"expected an integer from 1 to {MAX_COPIES}, got "
                                       f"{repeat!r}")
    params = _block_params(block, use, path)
    inputs = use.get("inputs")
    source = inputs[0] if isinstance(inputs, list) and inputs else previous
    base = use.get("name", f"{name}_{i}")
    layers = []
    for k in range(1, repeat + 1):
        copy, source = _copy(block, f"{base}{k}" if repeat > 1 else base, params, source,
                             ("blocks", name))
        layers += copy
        if len(layers) > MAX_LAYERS:
            raise _Fail((*path, "repeat"), f"expands to more than {MAX_LAYERS} layers")
    return layers


def expand(data: dict, positions: dict, key_positions: dict, file: str) -> list[Diagnostic]:
    """Replace block layers in `data["layers"]` by their copies, in place; copy positions."""
    layers = data.get("layers")
    if not isinstance(layers, list) or not any(
            isinstance(l, dict) and l.get("type") == "block" for l in layers):
        return []
    out, previous = [], "input"
    try:
        for i, layer in enumerate(layers):
            if isinstance(layer, dict) and layer.get("type") == "block":
                out += _expand_use(data, i, layer, previous)
            else:
                out.append((layer, ("layers", i)))
            last = out[-1][0]
            previous = last.get("name", f"{last.get('type')}_{len(out) - 1}") \
                if isinstance(last, dict) else previous
    except _Fail as e:
        line, col = _nearest(positions, e.path)

        return [Diagnostic(file, line, col, render_path(e.path), one_line(e.message))]
    if len(out) > MAX_LAYERS:
        return [Diagnostic(file, *_nearest(positions, ("layers",)), "layers",
                           f"the spec expands to {len(out)} layers; the limit is {MAX_LAYERS}")]
    _move_positions(out, positions, key_positions)
    data["layers"] = [layer for layer, _ in out]
    return []


def _nearest(positions: dict, path: tuple) -> tuple[int, int]:
    while path and path not in positions:
        path = path[:-1]
    return positions.get(path, (0, 0))


def _move_positions(out: list, positions: dict, key_positions: dict) -> None:
    """Expanded layer i takes the positions of the layer it came from (the paths under each
    source are found through one index by prefix: linear in layers + positions)."""
    lengths = {len(src) for _, src in out}
    for table in (positions, key_positions):
        under: dict[tuple, list] = {}
        for path, pos in table.items():
            for n in lengths:
                under.setdefault(path[:n], []).append((path, pos))
        moved = {}
        for i, (_, src) in enumerate(out):
            for path, pos in under.get(src, ()):
                moved[("layers", i, *path[len(src):])] = pos
        for path in [p for p in table if p[:1] == ("layers",)]:
            del table[path]
        table.update(moved)
