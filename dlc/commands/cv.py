"""`dlc cv`: K-fold cross-validation of a spec on its data source.

Every sample of `data.source` is held out exactly once (the spec's test fraction does not apply).
Each fold trains a fresh model in-process on the other K-1 folds, normalised with statistics of
its own training samples (for `inputs:` models also its category ids, from the CSV columns;
for column kinds, `input.columns`, every encoder: fills, vocabularies, scales, refitted per fold
and the network rebuilt for the fold's encoded width), then scores the held-out fold. A
validation split (data.split.val of the training folds, stratified) is carved only when
train.early_stopping needs one; otherwise every training-fold sample trains.

Fold assignment reproduces scikit-learn's `StratifiedKFold(n_splits=K, shuffle=True,
random_state=seed)` for classification/binary targets (when data.split.stratify, the default) and
`KFold(n_splits=K, shuffle=True, random_state=seed)` otherwise, with seed = data.split.seed. It is
implemented here in numpy (a legacy `RandomState(seed)`, as scikit-learn's `check_random_state`
makes); tests/test_crossval.py checks it against scikit-learn itself.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from dlc.data import (Dataset, Split, cache, column_rows, column_table, fit_columns, load_arrays,
                      stats)
from dlc.data.columns import column_config, entries
from dlc.data._table import Table, read_table
from dlc.data._split import split_indices
from dlc.data.multi import _inputs, _targets
from dlc.data.text import text_config
from dlc.data.windows import window_config
from dlc.errors import DlcError, UsageError
from dlc.files.atomic import write_json
from dlc.model import metrics as M
from dlc.model.spec import load_spec
from dlc.runtime.session import choose_device
from dlc.train.features import registry as features
from dlc.train.features.checks import checked_network
from dlc.train.report import Plain
from dlc.train.run import check_labels
from dlc.train.trainer import Trainer


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..K-1) holding each sample out, as StratifiedKFold(shuffle=True) assigns it:
    classes in order of first appearance, each class's per-fold counts dealt round-robin over
    the sorted labels, then each class's fold labels shuffled by one RandomState(seed)."""
    rng = np.random.RandomState(seed)
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, order = np.unique(first, return_inverse=True)
    encoded = order[inverse.reshape(-1)]
    n_classes = len(first)
    counts = np.bincount(encoded, minlength=n_classes)
    if np.all(folds > counts):
        raise DlcError(f"--folds {folds} is more than the samples of every class "
                       f"(largest class: {counts.max()})")
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::folds], minlength=n_classes)
                             for i in range(folds)])
    fold_of = np.empty(len(encoded), dtype=np.int64)
    for k in range(n_classes):
        labels = np.arange(folds).repeat(allocation[:, k])
        rng.shuffle(labels)
        fold_of[encoded == k] = labels
    return fold_of


def plain_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """The fold of each sample as KFold(shuffle=True) assigns it: one RandomState(seed) shuffle,
    then consecutive blocks, the first n % K one sample larger."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, n // folds, dtype=np.int64)
    sizes[: n % folds] += 1
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[order] = np.repeat(np.arange(folds), sizes)
    return fold_of


def fold_indices(y: np.ndarray | None, n: int, folds: int, seed: int,
                 stratify: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train indices, held-out indices)] per fold, both sorted (scikit-learn's split order)."""
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    if folds > n:
        raise DlcError(f"--folds {folds} is more than the {n} samples")
    if stratify and y is not None:
        keys = np.asarray(y).reshape(n, -1)[:, 0].astype(np.int64)
        fold_of = stratified_folds(keys, folds, seed)
    else:
        fold_of = plain_folds(n, folds, seed)
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(folds)]


def _raw_data(spec) -> tuple:
    """(x, y, labels, features) of the whole source, raw; for `inputs:` models x is the CSV
    table itself (each fold encodes and normalises it from its own training rows);
    unsupported data kinds refused."""
    data = spec.data.get("data") or {}
    if window_config(data) is not None or text_config(spec.data) is not None:
        raise DlcError("dlc cv handles table data (one input or named inputs:) and images; "
                       "not data.window (time order) or data.text")
    if not data.get("source"):
        raise DlcError(f"{spec.file}: the spec has no data.source to cross-validate on")
    if entries(spec.data):  # column kinds: raw columns, encoded per fold
        raw, y, labels, kinds = column_table(spec.data, Path(spec.file).resolve().parent)
        for entry in entries(spec.data).values():
            entry["columns"] = {n: {**column_config(c), "kind": kinds[n]}
                                for n, c in entry["columns"].items()}
        return raw, y, labels, None
    if spec.data.get("inputs"):
        return _table_data(spec, str(data["source"]))
    table = cache.table_source(spec.data, Path(spec.file).resolve().parent)
    if table is not None:  # memory-mapped; each fold's statistics gathered in chunks
        return cache.open_table(*table, spec.data)
    return load_arrays(data["source"], spec.data, Path(spec.file).resolve().parent)


def _table_data(spec, source: str) -> tuple:
    """(table, y, labels, None) of an `inputs:` model's CSV source."""
    if not source.startswith("csv:"):
        raise DlcError("several named inputs (`inputs:`) read their columns from a csv: source")
    path = Path(source[4:])
    path = path if path.is_absolute() else Path(spec.file).resolve().parent / path
    if not path.is_file():
        raise DlcError(f"data file not found: {source[4:]} (from data.source in spec)")
    table = read_table(path, source[4:], bool(spec.data["data"].get("header", True)))
    y, labels = _targets(spec.data, table, None, False, True)
    return table, y, labels, None


def fold_dataset(raw: tuple, train: np.ndarray, held: np.ndarray, spec: dict, classes: bool):
    """Dataset of one fold: its training folds (minus a validation part when early stopping
    needs one), the held-out fold as test; normalised with the training samples' statistics
    (named inputs: their category tables too, as dlc.data.multi builds them for training)."""
    x, y, labels, features = raw
    data, val = spec.get("data") or {}, None
    split = data.get("split") or {}
    frac = float(split.get("val", 0.1) or 0.0)
    if (spec.get("train") or {}).get("early_stopping") and frac > 0:
        tr, va, _ = split_indices(y[train], len(train), frac, 0.0, classes,
                                  int(split.get("seed", 0)))
        train, val = train[tr], train[va]
    states, take = None, None
    if isinstance(x, dict):  # column kinds: every encoder from the training rows
        (inputs, states), norm, cats = fit_columns(spec, x, train), None, None
        take = lambda idx: column_rows(spec, inputs, states, idx)  # noqa: E731
    elif isinstance(x, Table):  # named inputs: categories and statistics of the training rows
        xs, norm, cats = _inputs(spec, data, x, train)
    else:  # one table's features: data.missing's fills and the statistics of these rows,
        norm, cats = stats.fit(x, train, data), None  # computed as training computes them
        if isinstance(x, np.memmap):  # the data cache's table: raw until a batch is gathered
            shape = list((spec.get("input") or {}).get("shape") or x.shape[1:])
            take = lambda idx: stats.Rows(x, idx, norm, shape)  # noqa: E731
        else:
            xs = stats.transform(x, norm)

    def part(idx):
        return Split(take(idx) if take else xs[idx], np.ascontiguousarray(y[idx]))

    return Dataset(part(train), part(val) if val is not None and len(val) else None,
                   part(held), labels, features, norm, categories=cats, columns=states)


def train_fold(net, dataset, device: tuple[str, int], seed: int) -> dict:
    """Train a fresh model on the fold (from train.init_from's parameters when the spec names
    a model); every metric on the held-out part (loss included)."""
    trainer = Trainer(net, dataset, device, seed=seed)
    features.begin(trainer, lambda _line: None)  # e.g. train.init_from's parameters
    trainer.fit(Plain(quiet=True))
    losses, logits = trainer.predict_split(dataset.test, trainer.final_params())
    result = M.compute(net.kind, dataset.test.y, logits[net.head.name])
    result.pop("confusion_matrix", None)
    return {"loss": losses["loss"], **result, "epochs_run": trainer.state.epoch}


def summarize(rows: list[dict], keys: list[str]) -> tuple[dict, dict]:
    """(mean, std) of each metric over folds; std is the population std (ddof=0), as
    scikit-learn's cross_val_score(...).std() users report it."""
    values = {k: np.array([r["metrics"][k] for r in rows], np.float64) for k in keys}
    return ({k: float(v.mean()) for k, v in values.items()},
            {k: float(v.std()) for k, v in values.items()})


def cross_validate(spec, folds: int, device: str = "cpu", note=None) -> dict:
    """Run K-fold cross-validation of `spec` (a loaded Spec); `note(line)` gets each fold."""
    net = checked_network(spec)
    task_kind = net.kind  # one output only (net.kind says so in one line otherwise)
    raw = _raw_data(spec)
    unresolved = copy.deepcopy(spec.data)  # column kinds: each fold resolves its own widths
    data, cfg = spec.data["data"], spec.data["train"]
    split = data.get("split") or {}
    classes = task_kind in ("classification", "binary") and bool(split.get("stratify", True))
    seed = int(split.get("seed", 0))
    kind, index, _ = choose_device(device)
    rows = []
    for k, (train, held) in enumerate(fold_indices(raw[1], len(raw[1]), folds, seed, classes)):
        if isinstance(raw[0], dict):
            spec.data.update(copy.deepcopy(unresolved))
        dataset = fold_dataset(raw, train, held, spec.data, classes)
        if dataset.columns:  # the fold's encoded width and vocabulary
            net = checked_network(spec)
        check_labels(net, dataset)
        result = train_fold(net, dataset, (kind, index), int(cfg["seed"]))
        rows.append({"fold": k, "train": len(dataset.train),
                     "val": len(dataset.val) if dataset.val is not None else 0,
                     "test": len(held), "epochs_run": result.pop("epochs_run"),
                     "metrics": result})
        if note:
            note(fold_line(rows[-1], shown(spec.data)))
    keys = list(rows[0]["metrics"])
    mean, std = summarize(rows, keys)
    return {"spec": str(spec.file), "folds": folds, "seed": seed,
            "stratified": classes, "shown": shown(spec.data),
            "per_fold": rows, "mean": mean, "std": std}


def shown(spec: dict) -> list[str]:
    return ["loss", *spec["task"]["metrics"]]


def fold_line(row: dict, keys: list[str]) -> str:
    values = "  ".join(f"{k} {row['metrics'][k]:.4f}" for k in keys)
    return (f"fold {row['fold'] + 1}: train {row['train']}, val {row['val']}, "
            f"held out {row['test']}, {row['epochs_run']} epochs: {values}")


def render(report: dict) -> list[str]:
    """Mean ± std of each shown metric (the fold lines come through `note` as they finish)."""
    how = "stratified" if report["stratified"] else "shuffled"
    lines = [f"{report['folds']}-fold cross-validation ({how}, seed {report['seed']}):"]
    lines += [f"  {k}: {report['mean'][k]:.4f} ± {report['std'][k]:.4f}"
              for k in report["shown"]]
    return lines


def command(spec: str, folds: int, overrides: list, output: str | None, device: str) -> None:
    """`dlc cv`: each fold's line, mean ± std, and the report as JSON in `output`."""
    report = cross_validate(load_spec(spec, overrides), folds, device, note=print)
    for line in render(report):
        print(line)
    if output:
        write_json(output, report, indent=1)  # standard JSON: null for a NaN fold metric
        print(f"wrote {output}")
