"""`dlc validate`: each spec through the one validation pipeline (schema, network, semantic
checks, the training options' data-free checks); `ok` per file or every error. Imports no numpy
or onnxruntime (tests/test_compile.py holds it to that)."""

from __future__ import annotations

import sys

from dlc.errors import DlcError, SpecError
from dlc.model.spec import load_spec
from dlc.train.features.checks import checked_network


def command(specs: list[str]) -> int:
    """The exit code: 0, or the highest of the failures' (2 for spec errors)."""
    failed = []
    for path in specs:
        try:
            checked_network(load_spec(path, []))
            print(f"{path}: ok")
        except DlcError as e:
            print(str(e) if isinstance(e, SpecError) else f"{path}: {e}", file=sys.stderr)
            failed.append(e.exit_code)
    return max(failed, default=0)
