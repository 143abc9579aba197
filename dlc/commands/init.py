"""`dlc init DATA --target COLUMN [-o spec.yaml]`: a commented starting spec inferred from a
table, the way a new user starts: numeric feature columns (text columns are listed and left
out: a single `input:` takes numbers), missing-value handling when any feature cell is missing,
and the task from the target column. The spec is checked like any other before it is written."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from dlc.data._common import suggest
from dlc.data._table import TABLE_SUFFIXES, Table, read_table
from dlc.errors import DlcError
from dlc.files.atomic import write_text
from dlc.model.spec import load_spec_text, schema_path

MAX_CLASSES = 20  # an integer target with more distinct values than this is a regression


def _columns(table: Table, target: int) -> tuple[list[str], list[str], int]:
    """(numeric feature columns, text columns left out, rows with a missing feature)."""
    numeric, text, cols = [], [], []
    for c, name in enumerate(table.columns):
        if c == target:
            continue
        try:
            cols.append(table.numbers([c], missing=True)[:, 0])
            numeric.append(name)
        except DlcError:
            text.append(name)
    missing = int(np.isnan(np.stack(cols, axis=1)).any(axis=1).sum()) if cols else 0
    return numeric, text, missing


def _task(values: list[str]) -> tuple[str, int]:
    """(task kind, output units) from the target cells."""
    distinct = {v.strip() for v in values}
    try:
        numbers = [float(v) for v in distinct]
    except ValueError:
        numbers = None
    if numbers is not None and (len(distinct) > MAX_CLASSES
                                or any(n != int(n) for n in numbers)):
        return "regression", 1
    return ("binary", 1) if len(distinct) == 2 else ("classification", len(distinct))


def _flow(value) -> str:
    return json.dumps(value)


def spec_text(table: Table, data_ref: str, target: str, schema: str) -> str:
    """The commented spec for a table (see the module docstring)."""
    t = table.columns.index(target)
    numeric, text, missing = _columns(table, t)
    if not numeric:
        raise DlcError(f"{table.display}: no numeric feature columns; dlc init starts from a "
                       "table with at least one")
    kind, units = _task(table.strings(t))
    lines = [f"# yaml-language-server: $schema={schema}",
             f"# Made by dlc init from {table.display} ({len(table):,} rows): the task from "
             f"column '{target}', every numeric column as a feature.",
             "dlc: 1", f"name: {_flow(Path(table.display).stem or 'model')}",
             f"input: {{shape: [{len(numeric)}], features: {_flow(numeric)}}}"]
    if text:
        lines.append(f"# left out (text): {', '.join(text)}; categories go through a named "
                     "input with dtype: int64 (docs/your-own-data.md)")
    lines += ["layers:", "  - {type: dense, name: hidden, units: 64, activation: relu}",
              f"  - {{type: dense, name: out, units: {units}}}",
              f"task: {{kind: {kind}}}  # from the target's values: {kind}",
              "data:", f"  source: {_flow(data_ref)}", f"  target: {_flow(target)}",
              f"  split: {{val: 0.15, test: 0.15, stratify: {_flow(kind != 'regression')}, "
              "seed: 0}", "  normalize: standard"]
    if missing:
        lines.append(f"  missing: {{strategy: median}}  # {missing:,} rows miss a feature; "
                     "the fill is in the exported model")
    lines += ["train:", "  epochs: 100", "  batch_size: 32",
              "  optimizer: {type: adam, lr: 0.001}",
              "  early_stopping: {patience: 10}", "  seed: 0", ""]
    return "\n".join(lines)


def command(data: str, target: str, output: str | None, force: bool) -> None:
    path = Path(data)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DlcError(f"{data}: dlc init reads a .csv, .parquet or .feather table")
    table = read_table(path, path.name, True)
    if target not in table.columns:
        raise DlcError(f"--target: column '{target}' not in {path.name}; "
                       f"{suggest(target, table.columns)}")
    out = Path(output) if output else None
    base = out.parent if out else Path.cwd()
    rel = lambda p: Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix()  # noqa: E731
    scheme = TABLE_SUFFIXES[path.suffix.lower()]
    text = spec_text(table, f"{scheme}:{rel(path)}", target, rel(schema_path()))
    load_spec_text(text, str(out or "<dlc init>"))  # what dlc validate would say, before writing
    if out is None:
        sys.stdout.write(text)
        return
    if out.exists() and not force:
        raise DlcError(f"{out} exists; use --force to replace it")
    if not out.parent.is_dir():
        raise DlcError(f"output folder {out.parent} does not exist")
    write_text(out, text)
    print(f"wrote {out}", file=sys.stderr)
