"""Data loading for training, evaluation and prediction.

Sources (`data.source`): `builtin:digits|iris|wine|breast_cancer|diabetes` (scikit-learn's bundled
copies), `csv:PATH`, `npz:PATH`, `folder:PATH` (one sub-folder of PNG/JPEG images per class; paths
relative to the spec file). Image arrays are channels-first; `data.layout: nhwc` reads
channels-last arrays. `data.augment` is checked here and applied per training batch by the trainer
(`dlc.data.augment.augment`). Every data problem raises a one-line DlcError. scikit-learn and
Pillow are imported lazily, only for builtin and folder sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc.data._common import fit_shape
from dlc.data._inputs import read_inputs
from dlc.data._sources import load_raw
from dlc.data._split import apply_norm, check_split_sizes, compute_norm, split_indices
from dlc.data.augment import check_augment
from dlc.errors import DlcError

__all__ = ["Dataset", "Split", "load_arrays", "load_dataset", "read_inputs"]

_SPLIT_DEFAULTS = {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0}


@dataclass
class Split:
    """x: float32 [n, *input_shape]; y: int64 [n] (classification), float32 [n, 1] (binary),
    float32 [n, k] (regression)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Dataset:
    train: Split
    val: Split | None
    test: Split | None
    labels: list[str] | None  # class names (classification/binary); None for regression
    features: list[str] | None  # per-feature names when known
    norm: dict | None  # {"kind", "offset", "scale"}: x_norm = (x_raw - offset) / scale

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Apply this data set's normalisation to raw x [n, *input_shape] -> float32."""
        return apply_norm(x, self.norm)

    @property
    def n_classes(self) -> int | None:
        return len(self.labels) if self.labels is not None else None


def load_arrays(
    source: str,
    spec: dict,
    spec_dir: Path,
    require_target: bool = True,
    labels: list[str] | None = None,
    origin: str = "data.source in spec",
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None]:
    """Raw (x, y, labels, features) from one source, x float32 [n, *input.shape] unnormalised.

    Column options (target, features, header, x_key, y_key) come from spec["data"] when present.
    `labels`: the model's class names; categorical targets must be among them (strict), integer
    targets must index them. Without it, task.labels is used when it covers the data. With
    require_target false, a missing target column/array gives y None. `origin` names where the
    source came from in the file-not-found message (e.g. "--data")."""
    task = spec.get("task") or {}
    known = list(labels) if labels else (list(task["labels"]) if task.get("labels") else None)
    x, y, found, features = load_raw(
        source, spec, Path(spec_dir), known, bool(labels), require_target, origin
    )
    shape = (spec.get("input") or {}).get("shape") or list(x.shape[1:])
    x = fit_shape(x, shape, str(source))
    return x, y, found, features


def _split_config(data: dict) -> dict:
    cfg = dict(_SPLIT_DEFAULTS)
    cfg.update({k: v for k, v in (data.get("split") or {}).items() if v is not None})
    for key in ("val", "test"):
        if not 0 <= float(cfg[key]) < 1:
            raise DlcError(f"data.split.{key}: expected a fraction in [0, 1), found {cfg[key]}")
    return cfg


def _subset(x: np.ndarray, y: np.ndarray, idx: np.ndarray, norm: dict | None) -> Split:
    return Split(apply_norm(x[idx], norm), np.ascontiguousarray(y[idx]))


def load_dataset(spec: dict, spec_dir: Path) -> Dataset:
    """Load spec's data.source, split it (test first, then val; fractions of the whole set) and
    normalise every split with statistics of the training split. data.augment is only checked
    against the input shape here; the trainer applies it per batch."""
    data = spec.get("data") or {}
    if not data.get("source"):
        raise DlcError("the spec has no data.source; add a data: section to train or evaluate")
    x, y, labels, features = load_arrays(data["source"], spec, spec_dir)
    assert y is not None
    check_augment(data.get("augment"), x.shape[1:])
    cfg = _split_config(data)
    kind = (spec.get("task") or {}).get("kind", "classification")
    classes = bool(cfg["stratify"]) and kind in ("classification", "binary")
    val, test = float(cfg["val"]), float(cfg["test"])
    tr, va, te = split_indices(y, len(x), val, test, classes, int(cfg["seed"]))
    check_split_sizes(len(x), val, test, (len(tr), len(va), len(te)))
    norm = compute_norm(x[tr], data.get("normalize") or "standard")
    return Dataset(
        train=_subset(x, y, tr, norm),
        val=_subset(x, y, va, norm) if len(va) else None,
        test=_subset(x, y, te, norm) if len(te) else None,
        labels=labels,
        features=features,
        norm=norm,
    )
