"""The size budget of ../shared/STYLE.md: every module of the package at most 400 lines, every
function at most 40, the package at most 19,000 lines (12,000 for the first wave; the second wave
added serving, profiling, TensorBoard, run-folder locking, the optimised-graph cache, data-parallel
workers, `dlc inspect` with foreign-graph import, Arrow tables with `dlc init`, then column kinds
and text tokenised in the exported graph, the memory-mapped table cache and `base:` models; then
#14's train-graph lowerings of convolution and pooling).
Fails naming what is over."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dlc"
MODULE_LINES, FUNCTION_LINES, PACKAGE_LINES = 400, 40, 19_000


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_modules_and_package_within_budget():
    sizes = {p.relative_to(PACKAGE.parent): len(p.read_text().splitlines()) for p in _modules()}
    over = {str(p): n for p, n in sizes.items() if n > MODULE_LINES}
    assert not over, f"modules over {MODULE_LINES} lines: {over}"
    assert sum(sizes.values()) <= PACKAGE_LINES, sum(sizes.values())


def test_functions_within_budget():
    over = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    over.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} "
                                f"{node.name} ({lines} lines)")
    assert not over, f"functions over {FUNCTION_LINES} lines: {over}"
