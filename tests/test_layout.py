"""The package's layout, read from the source (ast, nothing imported): no import circle between
dlc's modules (module-level and function-level imports both count), only the allowed files at the
top of dlc/, and no function-level import but the lazy ones listed in LAZY, each with its reason."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dlc"
TOP_LEVEL_FILES = {"__init__.py", "__main__.py", "cli.py", "errors.py"}

# (importing module, imported module) glob patterns -> why that import waits for its function.
LAZY = {
    ("dlc.cli", "dlc.commands.*"): "each command's module loads when it runs: `dlc --help` "
                                   "loads none, `dlc validate` only its own (no numpy)",
    ("dlc.train.features.checks", "dlc.train.features.*"): "a feature's module (numpy) loads only "
                                                           "when the spec uses it: a plain "
                                                           "`dlc validate` stays numpy-free",
    ("dlc.commands.train", "dlc.distributed.*"): "data-parallel training's modules (Ray Train, "
                                                 "torch's collective) load only for --workers "
                                                 "or under a launcher",
    ("dlc.commands.serve", "dlc.commands.serve.app"): "the app imports Starlette: it loads once "
                                                      "the serve extra is known installed",
    ("dlc.model.network", "dlc.model.base"): "a `base:` model's loading (onnx, numpy) only for "
                                             "specs with one: a plain `dlc validate` stays "
                                             "numpy-free",
    ("*", "numpy"): "start-up: `dlc validate` and the spec/layer modules it loads stay numpy-free",
    ("*", "onnx"): "start-up: onnx loads only where a model is built or read",
    ("*", "onnxruntime"): "start-up: onnxruntime loads only where a session runs",
    ("*", "google.protobuf"): "onnx's protobuf: loads only where a model file is read",
    ("*", "jsonschema"): "start-up: the schema validator loads on first use",
    ("*", "yaml._yaml"): "the C YAML parser, when libyaml is present",
    ("*", "rich"): "start-up: tables and progress bars load when printed",
    ("*", "optuna"): "optional extra (dlc[tune])",
    ("*", "ray"): "optional extra (dlc[ray])",
    ("*", "mlflow"): "optional extra (dlc[mlflow])",
    ("*", "sqlalchemy"): "MLflow's database layer: optional extra (dlc[mlflow])",
    ("*", "tensorboardX"): "optional extra (dlc[tensorboard])",
    ("*", "uvicorn"): "optional extra (dlc[serve])",
    ("*", "starlette"): "optional extra (dlc[serve])",
    ("*", "matplotlib"): "optional extra (dlc[plot])",
    ("*", "PIL"): "optional extra (dlc[images])",
    ("*", "torch"): "optional extra (dlc[torch], dlc[distributed]): cross-checks and the "
                    "all-reduce of data-parallel training",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(name: str) -> str:
    """The dlc module `name` denotes: itself when it is a module or package, else its parent
    (`from dlc.x import y` where y is a name inside dlc.x)."""
    path = ROOT / name.replace(".", "/")
    return name if path.with_suffix(".py").exists() or path.is_dir() else name.rpartition(".")[0]


def _imports(tree: ast.AST, scope: str = "module"):
    """(imported module, "module" | "function") for every import statement, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        inner = "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                ast.Lambda)) else scope
        if isinstance(node, ast.Import):
            yield from ((a.name, scope) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] == "dlc":
                yield from ((_target(f"{node.module}.{a.name}"), scope) for a in node.names)
            else:
                yield node.module, scope
        yield from _imports(node, inner)


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """(module -> the dlc modules it imports, [(module, what it imports inside a function)])."""
    edges, lazy = {}, []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        edges[name] = set()
        for imported, scope in _imports(ast.parse(path.read_text(), str(path))):
            if imported.split(".")[0] == "dlc":
                edges[name].add(_target(imported))
            if scope == "function" and imported != "__future__":
                lazy.append((name, imported))
    return edges, lazy


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1 or v in edges.get(v, ()):
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _lazy_reason(importer: str, imported: str) -> str | None:
    for (who, what), reason in LAZY.items():
        if fnmatch.fnmatchcase(importer, who) and (
                fnmatch.fnmatchcase(imported, what) or imported.startswith(what + ".")):
            return reason
    return None


def test_no_import_circle():
    assert _circles(_graph()[0]) == []


def test_only_the_command_line_and_errors_sit_at_the_top_of_the_package():
    assert {p.name for p in PACKAGE.glob("*.py")} <= TOP_LEVEL_FILES


def test_function_level_imports_are_the_listed_lazy_ones():
    unlisted = [f"{who} imports {what}" for who, what in _graph()[1]
                if _lazy_reason(who, what) is None]
    assert unlisted == []


def test_the_layout_checks_can_fail():
    """The checks see a circle, an unlisted lazy import and an allowed one."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"a"}}) == [["a"]]
    tree = ast.parse("import os\ndef f():\n    from dlc.model import network\n    import numpy\n")
    assert [s for _, s in _imports(tree)] == ["module", "function", "function"]
    assert _lazy_reason("dlc.train.run", "dlc.model.network") is None
    assert _lazy_reason("dlc.cli", "dlc.commands.train") is not None
    assert _lazy_reason("dlc.model.network", "numpy") is not None
