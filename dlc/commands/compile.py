"""`dlc compile`: the inference model of a spec with seeded initial weights, checked by onnx."""

from __future__ import annotations

from pathlib import Path

import onnx

from dlc.errors import DlcError
from dlc.files.atomic import write_bytes
from dlc.model.compile import compile_spec
from dlc.model.spec import load_spec


def command(spec: str, output: str, seed: int | None, overrides: list) -> None:
    model = compile_spec(load_spec(spec, overrides), seed)
    onnx.checker.check_model(model, full_check=True)
    out = Path(output)
    if not out.parent.is_dir():
        raise DlcError(f"output folder {out.parent} does not exist")
    write_bytes(out, model.SerializeToString())
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
