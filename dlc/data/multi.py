"""Several named inputs (`inputs:`) and/or several outputs (`outputs:`) from one CSV file.

Each input takes the columns named in its `features` (a single `input:` without them: every
column that is no output's target). A float32 input parses them as numbers and is normalised with
training-split statistics; an int64 input treats them as categories: per column, each value seen
in the training split gets an id (1, 2, ... in sorted order, offset so that the columns of one
input share one id space) and anything else gets 0. The category table travels in the exported
model so `dlc predict` takes raw values. Each output takes its `target` column, encoded for its
task kind; the split is stratified on the first classification or binary output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlc.data.arrays import Dataset, Split, load_arrays
from dlc.data._common import suggest
from dlc.data._table import Table, read_table
from dlc.data._split import apply_norm, check_split_sizes, compute_norm, split_indices
from dlc.data._targets import encode_cells
from dlc.data.augment import check_augment
from dlc.errors import DlcError
from dlc.files.untrusted import check_file
from dlc.model.names import spec_heads, spec_inputs


class Columns(dict):
    """name -> array (inputs by input name, targets by output name), indexed by rows like one
    array: `x[idx]`, `x[a:b]`, `len(x)`."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return Columns({k: v[key] for k, v in self.items()})

    def __len__(self) -> int:
        return len(next(iter(self.values()))) if dict.__len__(self) else 0


def _columns(table: Table, names: list[str], what: str) -> list[int]:
    out = []
    for name in names:
        if name not in table.columns:
            raise DlcError(f"{what}: column '{name}' not in {table.display}; "
                           f"{suggest(name, table.columns)}")
        out.append(table.columns.index(name))
    return out


def _floats(table: Table, cols: list[int]) -> np.ndarray:
    return table.numbers(cols).astype(np.float32)


def categories_of(table: Table, cols: list[int], rows: np.ndarray) -> dict[str, list[str]]:
    """Per column, the sorted values seen in `rows` (the training split)."""
    return {table.columns[c]: sorted({table.rows[r][c].strip() for r in rows}) for c in cols}


def encode_categories(cells: list[list[str]], columns: list[str],
                      cats: dict[str, list[str]]) -> np.ndarray:
    """Raw category cells [n, k] -> int64 ids; column j's values follow columns before it."""
    ids, offset = np.zeros((len(cells), len(columns)), np.int64), 0
    for j, name in enumerate(columns):
        index = {v: offset + 1 + i for i, v in enumerate(cats[name])}
        ids[:, j] = [index.get(row[j].strip(), 0) for row in cells]
        offset += len(cats[name])
    return ids


def _embedding_vocab(spec: dict, name: str) -> tuple[str, int] | None:
    """(layer name, vocab_size) of the smallest embedding that reads int64 input `name`."""
    def reads(i: int, layer: dict) -> bool:
        srcs = layer.get("inputs")
        return name in (srcs or []) or (i == 0 and not srcs and not spec.get("inputs"))

    found = [(layer.get("name", f"layers[{i}]"), int(layer["vocab_size"]))
             for i, layer in enumerate(spec.get("layers") or [])
             if layer.get("type") == "embedding" and reads(i, layer)]
    return min(found, key=lambda f: f[1], default=None)


def check_ids(spec: dict, name: str, ids: np.ndarray, cell) -> None:
    """Ids must lie in the vocabulary of the embedding reading them (onnxruntime's Gather
    would fail mid-training); `cell(flat index)` names the value that does not."""
    vocab = _embedding_vocab(spec, name)
    flat = ids.reshape(-1)
    if vocab is None or not flat.size:
        return
    bad = (flat < 0) | (flat >= vocab[1])
    if bad.any():
        at = int(np.argmax(bad))
        raise DlcError(f"{cell(at)} gets id {flat[at]}, outside the vocabulary of embedding "
                       f"'{vocab[0]}' (vocab_size {vocab[1]}); the data needs a vocab_size of "
                       f"at least {max(int(flat.max()) + 1, 1)}")


def _targets(spec: dict, table: Table, labels, strict: bool, require: bool):
    """(y, labels): one array and its class names for `task:`, or for `outputs:` a Columns
    mapping output -> array and a mapping output -> class names. None for y when a target
    column is absent and not required."""
    data, ys, found = spec.get("data") or {}, Columns(), {}
    for name, task in spec_heads(spec).items():
        ref = task["target"] if name else data.get("target", table.columns[-1])
        key = f"outputs.{name}.target" if name else "data.target"
        if isinstance(ref, int):
            if not 0 <= ref < len(table.columns):
                raise DlcError(f"{key}: column index {ref} out of range; {table.display} has "
                               f"{len(table.columns)} columns")
            col = ref
        elif ref in table.columns:
            col = table.columns.index(ref)
        elif require:
            raise DlcError(f"{key}: column '{ref}' not in {table.display}; "
                           f"{suggest(ref, table.columns)}")
        else:
            return None, labels
        known = (labels.get(name) if isinstance(labels, dict) else labels) or task.get("labels")
        ys[name], found[name] = encode_cells(
            [row[col] for row in table.rows], task["kind"], known, strict,
            lambda i: f"{table.display}:{table.lines[i]}", table.columns[col])
    if "" in ys:
        return ys[""], found[""]
    return ys, found


def _strata(spec: dict, y) -> np.ndarray | None:
    """The class targets to stratify the split on: the task's, or the first classification or
    binary output's (None: no class target)."""
    for name, task in spec_heads(spec).items():
        if task["kind"] != "regression":
            return y[name] if name else y
    return None


def load_multi(spec: dict, spec_dir: Path):
    """Dataset whose x are `Columns` by input (one array for a single `input:`) and y `Columns`
    by output (one array for `task:`); norm and categories likewise by input."""
    data = spec.get("data") or {}
    source = str(data.get("source", ""))
    if source.startswith("npz:") and not spec.get("inputs"):
        return _npz_dataset(spec, spec_dir)
    if not source.startswith("csv:"):
        raise DlcError("several named inputs (`inputs:`) read their columns from a csv: source; "
                       "several outputs (`outputs:`) from a csv: or npz: source")
    if data.get("augment"):
        raise DlcError("data.augment applies to image inputs, not to the CSV columns of "
                       "`inputs:` or `outputs:`; remove it")
    path = Path(source[4:])
    path = path if path.is_absolute() else spec_dir / path
    check_file(path, "data file")
    table = read_table(path, source[4:], bool(data.get("header", True)))
    y, labels = _targets(spec, table, None, False, True)
    tr, va, te = _split(spec, y, len(table.rows))
    xs, norms, cats = _inputs(spec, data, table, tr)
    features = None
    if not spec.get("inputs"):  # one `input:`: plain arrays, as every single-input model has
        xs, norms, cats = xs["input"], norms["input"], None
        features = _feature_names(spec, "input", spec["input"], table)  # stored in the model
    subset = lambda idx: Split(xs[idx], y[idx]) if len(idx) else None  # noqa: E731
    return Dataset(subset(tr), subset(va), subset(te), labels, features, norms,
                   categories=cats or None)


def _split(spec: dict, y, n: int):
    """(train, val, test) indices, stratified on the first class output when asked."""
    split = {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0,
             **((spec.get("data") or {}).get("split") or {})}
    strata = _strata(spec, y) if split["stratify"] else None
    parts = split_indices(strata, n, split["val"], split["test"], strata is not None,
                          split["seed"])
    check_split_sizes(n, split["val"], split["test"], tuple(len(p) for p in parts))
    return parts


def read_npz_outputs(source: str, spec: dict, spec_dir: Path, labels: dict | None = None,
                     require_target: bool = True):
    """(x, y, labels) of an `input:` + `outputs:` model from an npz archive: x from
    data.x_key (image layouts as for one output), each output's targets from the array its
    `target` names; y None when an output's array is absent and not required. `labels`: a
    trained model's class names per output (targets must fit them)."""
    ys, found, x = Columns(), {}, None
    for name, task in spec["outputs"].items():
        view = {**spec, "task": task, "data": {**(spec.get("data") or {}),
                                               "y_key": str(task["target"])}}
        try:
            x, y, found[name], _ = load_arrays(source, view, spec_dir, require_target,
                                               (labels or {}).get(name))
        except DlcError as e:  # the array name comes from the output's `target`, not y_key
            raise DlcError(str(e).replace("(data.y_key)", f"(outputs.{name}.target)")) from None
        if y is None:
            return x, None, labels
        ys[name] = y
    return x, ys, found


def _npz_dataset(spec: dict, spec_dir: Path):
    """`input:` with `outputs:` from an npz archive, split like any array data and normalised
    with the training split's statistics (int64 ids stay ids)."""
    data = spec["data"]
    x, y, labels = read_npz_outputs(data["source"], spec, spec_dir)
    check_augment(data.get("augment"), x.shape[1:])
    tr, va, te = _split(spec, y, len(x))
    ids = spec["input"].get("dtype") == "int64"
    norm = None if ids else compute_norm(x[tr], data.get("normalize") or "standard")
    x = x.astype(np.int64) if ids else apply_norm(x, norm)
    if ids:
        per = int(np.prod(x.shape[1:]))
        check_ids(spec, "input", x, lambda at: f"{data['source']}: {data.get('x_key') or 'x'} "
                  f"sample {at // per}")
    subset = lambda idx: Split(x[idx], y[idx]) if len(idx) else None  # noqa: E731
    return Dataset(subset(tr), subset(va), subset(te), labels, None, norm)


def _feature_names(spec: dict, name: str, cfg: dict, table: Table) -> list[str]:
    """The columns an input takes: its `features`; for a single `input:` without them
    data.features, else every column that is no output's target."""
    names = cfg.get("features")
    if names:
        return names
    if spec.get("inputs"):
        raise DlcError(f"inputs.{name}.features: name the CSV columns this input takes")
    data = spec.get("data") or {}
    if data.get("features"):
        return [table.columns[f] if isinstance(f, int) else f for f in data["features"]]
    targets = {t["target"] if isinstance(t["target"], str) else table.columns[t["target"]]
               for t in spec_heads(spec).values()}
    return [c for c in table.columns if c not in targets]


def _where(spec: dict, name: str) -> str:
    return f"inputs.{name}" if spec.get("inputs") else "input"


def _inputs(spec: dict, data: dict, table: Table, train_rows: np.ndarray):
    xs, norms, cats = Columns(), {}, {}
    for name, cfg in spec_inputs(spec).items():
        names = _feature_names(spec, name, cfg, table)
        if len(names) != int(np.prod(cfg["shape"])):
            raise DlcError(f"{_where(spec, name)}: {len(names)} columns "
                           f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) do "
                           f"not fill shape {list(cfg['shape'])}")
        cols = _columns(table, names, f"{_where(spec, name)}.features")
        if cfg.get("dtype", "float32") == "int64":
            cats[name] = categories_of(table, cols, train_rows)
            cells = [[row[c] for c in cols] for row in table.rows]
            xs[name] = encode_categories(cells, names, cats[name]).reshape(-1, *cfg["shape"])
            k = len(names)
            check_ids(spec, name, xs[name], lambda at: f"{table.display}:"
                      f"{table.lines[at // k]}: column '{names[at % k]}' value "
                      f"'{cells[at // k][at % k].strip()}'")
            norms[name] = None
            continue
        x = _floats(table, cols).reshape(-1, *cfg["shape"])
        norms[name] = compute_norm(x[train_rows], data.get("normalize") or "standard")
        xs[name] = apply_norm(x, norms[name])
    return xs, norms, cats


def read_multi(source: str, spec: dict, categories: dict, labels, require_target: bool,
               features: list[str] | None = None):
    """Raw inputs (and targets, when present or required) of a model with `inputs:` or
    `outputs:` from a CSV, encoded with the model's stored category table: for `dlc predict`
    and `dlc evaluate`. x is `Columns` by input name (the model's input names); a single
    `input:` takes the stored feature names `features`."""
    path = Path(source[4:] if source.startswith("csv:") else source)
    check_file(path, "input file")
    data = spec.get("data") or {}
    table = read_table(path, str(path), bool(data.get("header", True)))
    xs = Columns()
    for name, cfg in spec_inputs(spec).items():
        names = cfg.get("features") if spec.get("inputs") else \
            (features or _feature_names(spec, name, cfg, table))
        if not names:
            raise DlcError(f"inputs.{name}.features: the model names no CSV columns for input "
                           f"'{name}'")
        if len(names) != int(np.prod(cfg["shape"])):
            raise DlcError(f"{_where(spec, name)}: {len(names)} columns do not fill shape "
                           f"{list(cfg['shape'])}")
        cols = _columns(table, names, f"{_where(spec, name)}.features")
        if cfg.get("dtype", "float32") == "int64":
            stored = categories.get(name)
            if not isinstance(stored, dict) or not all(isinstance(stored.get(c), list)
                                                       for c in names):
                raise DlcError(f"this model stores no category ids for input '{name}' "
                               "(dlc.categories); only a model trained with dlc train can "
                               "encode categorical columns")
            cells = [[row[c] for c in cols] for row in table.rows]
            xs[name] = encode_categories(cells, names, stored)
        else:
            xs[name] = _floats(table, cols)
        xs[name] = xs[name].reshape(-1, *cfg["shape"])
    y, _ = _targets(spec, table, labels, True, require_target)
    return xs, y

