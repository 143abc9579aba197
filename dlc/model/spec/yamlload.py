"""Safe YAML loading that keeps the line and column of every key and value.

Built on `yaml.SafeLoader`'s composer: the node graph is turned into plain Python data
(dict/list/str/int/float/bool/None) by hand, so no constructor ever runs on a tagged node.
Explicit tags, anchors, aliases and duplicate keys are rejected with a position each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from dlc.errors import Diagnostic, SpecError
from dlc.model.spec.schema import one_line
from dlc.files.untrusted import MAX_NESTING

Path = tuple  # a path into the data: ("layers", 2, "units")
Pos = tuple[int, int]  # 1-based (line, col)

_NULL = "tag:yaml.org,2002:null"
_SCALAR_TAGS = {_NULL, "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
# YAML 1.2 floats such as 1e-3 (YAML 1.1, PyYAML's default, reads them as strings).
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@dataclass
class Loaded:
    """Plain data plus where each value (`positions`) and each mapping key (`key_positions`) is."""

    data: Any
    positions: dict[Path, Pos] = field(default_factory=dict)
    key_positions: dict[Path, Pos] = field(default_factory=dict)


class _Checks:
    """A composer that records tags, anchors and aliases as problems and bounds nesting."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.problems: list[tuple[Any, str]] = []  # (mark, message)
        self.depth = 0  # PyYAML's composer and our builder recurse once per level

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self.get_event()
            self.problems.append((event.start_mark, "anchors and aliases are not allowed"))
            return ScalarNode(_NULL, "", event.start_mark, event.end_mark)
        if event.anchor is not None:
            self.problems.append((event.start_mark, "anchors and aliases are not allowed"))
            event.anchor = None
        if getattr(event, "tag", None) is not None:
            self.problems.append((event.start_mark, "tags are not allowed"))
            event.tag = None
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_NESTING} "
                                              "levels", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Loader(_Checks, yaml.SafeLoader):
    """PyYAML's own reader, scanner and parser (Python): the diagnostics are written for its
    messages and positions."""


try:  # libyaml's scanner and parser (C) under the same composer: about 6x faster
    from yaml._yaml import CParser

    class _FastLoader(_Checks, Composer, CParser, SafeConstructor, Resolver):
        """Composer before CParser, so that PyYAML's composer (and _Checks) runs on libyaml's
        events; these classes do not chain __init__, hence each one called here."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            Composer.__init__(self)
            self.problems, self.depth = [], 0
except ImportError:  # PyYAML built without libyaml
    _FastLoader = None


def _compose(text: str) -> tuple:
    """(loader, root node or None). libyaml parses first; a document it rejects is parsed again
    by PyYAML's own parser, which raises the YAMLError the diagnostics are written for."""
    if _FastLoader is not None:
        try:
            loader = _FastLoader(text)
            return loader, loader.get_single_node()
        except (yaml.YAMLError, ValueError):  # ValueError: text libyaml cannot encode
            pass
    loader = _Loader(text)  # the reader rejects unprintable characters here already
    try:
        return loader, loader.get_single_node()
    finally:
        loader.dispose()


for _cls in (_Loader, _FastLoader):
    if _cls is not None:
        _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _pos(node: Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _diag(file: str, mark: Any, message: str) -> Diagnostic:
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    return Diagnostic(file, line, col, "", one_line(message))


class _Builder:
    """Turns a composed node graph into plain data, recording positions and duplicate keys."""

    def __init__(self, loader: _Loader, file: str):
        self.loader = loader
        self.file = file
        self.out = Loaded(None)
        self.diagnostics: list[Diagnostic] = []

    def build(self, node: Node, path: Path) -> Any:
        self.out.positions[path] = _pos(node)
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if node.tag in _SCALAR_TAGS:
            try:
                return self.loader.construct_object(node)
            except ValueError:  # PyYAML resolves 0x_, 0b_ and ._e5 as numbers, then fails
                return node.value
        return node.value  # strings, and timestamps kept as written

    def _mapping(self, node: MappingNode, path: Path) -> dict:
        result: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.diagnostics.append(_diag(self.file, key_node.start_mark,
                                              "mapping keys must be plain names"))
                continue
            key = key_node.value
            if key in result:
                first = self.out.key_positions[(*path, key)][0]
                self.diagnostics.append(_diag(self.file, key_node.start_mark,
                                              f"duplicate key '{key}' (first at line {first})"))
                continue
            self.out.key_positions[(*path, key)] = _pos(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result


def _syntax_diag(file: str, text: str, exc: yaml.YAMLError) -> Diagnostic:
    """A one-line diagnostic for a YAML syntax error."""
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        message = f"invalid YAML: unreadable character {exc.character!r}"
        return Diagnostic(file, line, col, "", one_line(message))
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "'\\t'" in problem:
        problem = "tab characters are not allowed for indentation; use spaces"
    elif getattr(exc, "context", None) and "expected a single document" in exc.context:
        problem = "a spec file holds one YAML document (found a second '---')"
    return _diag(file, mark, f"invalid YAML: {problem}")


def parse_yaml(text: str, file: str) -> Loaded:
    """Parse one YAML document into plain data with positions; raise SpecError on any problem.

    An empty document (or one holding only comments) gives `Loaded(None)`.
    """
    try:
        loader, node = _compose(text)
    except yaml.YAMLError as exc:
        raise SpecError([_syntax_diag(file, text, exc)]) from None
    diagnostics = [_diag(file, mark, msg) for mark, msg in loader.problems]
    if node is None:
        if diagnostics:
            raise SpecError(diagnostics)
        return Loaded(None)
    builder = _Builder(loader, file)
    builder.out.data = builder.build(node, ())
    diagnostics += builder.diagnostics
    if diagnostics:
        raise SpecError(diagnostics)
    return builder.out
