"""`dlc init DATA --target COLUMN [-o spec.yaml]`: a commented starting spec inferred from a
table, the way a new user starts: every feature column with its kind (`input.columns`: numeric,
categorical, binary, text, inferred from the cells; identifier-like columns are listed and left
out), a fill for each column with missing cells (median, most_frequent), and the task from the
target column. Free-text columns (a value per row, several words a cell) each get an int64
`inputs:` entry read by an embedding and a mean over the tokens, concatenated with the other
columns' entry. The spec is checked like any other before it is written."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from dlc.data import strings
from dlc.data._common import suggest
from dlc.data._table import MISSING, TABLE_SUFFIXES, Table, read_table
from dlc.data.columns import infer_kind, is_missing
from dlc.errors import DlcError
from dlc.files.atomic import write_text
from dlc.model.spec import load_spec_text, schema_path

MAX_CLASSES = 20  # an integer target with more distinct values than this is a regression


def _columns(table: Table, target: int) -> tuple[dict[str, tuple[str, int, str]], list[str]]:
    """(feature column -> (kind, missing cells, its other settings as YAML flow text), columns
    left out): kinds as infer_kind finds them, `auto`'s rule; free text gets max_length 1.5 x
    the 95th percentile of its words (4..64); identifiers (a value per row) are left out."""
    kinds, left = {}, []
    for c, name in enumerate(table.columns):
        if c == target:
            continue
        cells = strings.stripped_cells(table.text(c))  # as training reads the column
        absent = is_missing(cells)
        kind, settings = infer_kind(cells), ""
        if kind == "identifier":
            left.append(name)
            continue
        if kind == "text":
            words = [len(c.split()) for c in cells[~absent]]
            settings = f", max_length: {int(np.clip(np.percentile(words, 95) * 1.5, 4, 64))}"
        kinds[name] = (kind, int(absent.sum()), settings)
    return kinds, left


COMMENT = ["  # numeric: filled where missing, then standardised; categorical: one-hot (+1 column "
           "for values the", "  # training split never saw); binary: 0/1; text: token ids. "
           "Fills and encodings are learnt", "  # from the training split and run inside the "
           "exported model, which takes the raw columns."]


def _column_line(name: str, kind: str, absent: int, settings: str = "") -> str:
    """One `input.columns` entry, with the default fill of its kind where cells are missing."""
    key = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name) else _flow(name)
    if kind == "text":
        note = f"  # {absent:,} missing: an empty text" if absent else ""
        return f"    {key}: {{kind: text{settings}}}{note}"
    if not absent:
        return f"    {key}: {kind}"
    fill = "median" if kind == "numeric" else "most_frequent"
    return f"    {key}: {{kind: {kind}, missing: {fill}}}  # {absent:,} missing"


def _inputs(kinds: dict[str, tuple[str, int, str]]) -> tuple[list[str], list[str]]:
    """(input section, first layers) of a table: `input.columns` alone, or with text columns an
    `inputs:` entry `table` for the others and one int64 entry per text column, each read by an
    embedding and a mean over its tokens, all concatenated."""
    rows = [_column_line(n, *v) for n, v in kinds.items() if v[0] != "text"]
    texts = {n: v for n, v in kinds.items() if v[0] == "text"}
    if not texts:
        return ["input:", *COMMENT, "  columns:", *rows], []
    lines, layers, joined = ["inputs:"], [], []
    if rows:
        lines += ["  table:", *["  " + c for c in COMMENT], "    columns:",
                  *["  " + r for r in rows]]
        joined.append("table")
    for name, column in texts.items():
        entry = re.sub(r"\W", "_", name) + "_text"
        lines += [f"  {entry}:  # token ids of the text, read by an embedding", "    dtype: int64",
                  "    columns:", "  " + _column_line(name, *column)]
        layers += [f"  - {{type: embedding, name: {entry}_embed, inputs: [{entry}], dim: 16, "
                   "padding_index: 0}", f"  - {{type: sequence_pool, name: {entry}_mean, "
                   "mode: mean}"]
        joined.append(f"{entry}_mean")
    if len(joined) > 1:
        layers.append(f"  - {{type: concat, name: joined, inputs: [{', '.join(joined)}]}}")
    return lines, layers


def _task(values: list[str]) -> tuple[str, int]:
    """(task kind, output units) from the target cells (missing ones left out, as training
    leaves their rows out)."""
    distinct = {v.strip() for v in values} - MISSING
    try:
        numbers = [float(v) for v in distinct]
    except ValueError:
        numbers = None
    if numbers is not None and (len(distinct) > MAX_CLASSES
                                or any(n != int(n) for n in numbers)):
        return "regression", 1
    return ("binary", 1) if len(distinct) == 2 else ("classification", len(distinct))


START = ["  # a linear model over the encoded columns first (logistic regression for classes),",
         "  # regularised as scikit-learn's LogisticRegression(C=1): it reaches that baseline on",
         "  # small tables, where a hidden layer overfits. For more capacity on a large table, add",
         "  # - {type: dense, name: hidden, units: 64, activation: relu}",
         "  # with train.early_stopping: {patience: 20, restore_best: true}."]


def _l2(rows: int) -> float:
    """weight_decay (L2 added to the gradient of the mean loss) equal to scikit-learn's C=1
    penalty 0.5 |w|^2 on the summed loss: 1 / the training rows (70 % of the table)."""
    return float(f"{1 / max(1, round(0.7 * rows)):.2g}")


def _flow(value) -> str:
    return json.dumps(value)


def spec_text(table: Table, data_ref: str, target: str, schema: str) -> str:
    """The commented spec for a table (see the module docstring)."""
    t = table.columns.index(target)
    kinds, left = _columns(table, t)
    if not kinds:
        raise DlcError(f"{table.display}: no feature columns; dlc init starts from a table with "
                       "at least one besides the target")
    kind, units = _task(table.strings(t))
    absent = sum(v.strip() in MISSING for v in table.strings(t))
    unknown = f"; {absent:,} rows without one are left out" if absent else ""
    lines = [f"# yaml-language-server: $schema={schema}",
             f"# Made by dlc init from {table.display} ({len(table):,} rows): the task from "
             f"column '{target}', the kind of each feature column from its cells.",
             "dlc: 1", f"name: {_flow(Path(table.display).stem or 'model')}"]
    inputs, first = _inputs(kinds)
    lines += inputs
    if left:
        lines.append(f"# left out (identifiers: a value per row): {', '.join(left)}")
    lines += ["layers:", *first, *START, f"  - {{type: dense, name: out, units: {units}}}",
              f"task: {{kind: {kind}}}  # from the target's values: {kind}" + unknown,
              "data:", f"  source: {_flow(data_ref)}", f"  target: {_flow(target)}",
              f"  split: {{val: 0.15, test: 0.15, stratify: {_flow(kind != 'regression')}, "
              "seed: 0}", "  normalize: standard",
              "train:", "  epochs: 150", "  batch_size: 32",
              f"  optimizer: {{type: adam, lr: 0.01, weight_decay: {_l2(len(table))}}}"
              "  # L2 = 1 / training rows", "  seed: 0", ""]
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
