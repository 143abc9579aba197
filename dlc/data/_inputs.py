"""`dlc predict` inputs: a CSV or NPZ file of raw samples, or a folder of images -> float32
[n, *input_shape]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlc.data._common import NPZ_ERRORS, as_numeric, check_finite, name_list, suggest
from dlc.data._table import TABLE_SUFFIXES, Table, read_table
from dlc.data._images import IMAGE_SUFFIXES, read_image_inputs, to_nchw
from dlc.errors import DlcError
from dlc.files.untrusted import check_file, check_numpy_file


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _expects(n: int, features: list[str] | None) -> str:
    noun = "feature" if n == 1 else "features"
    return f"{n} {noun} ({name_list(features)})" if features else f"{n} {noun} per sample"


def _csv_table(path: Path) -> Table:
    """The CSV with a header when its first row is not all numbers (a Parquet or Feather file
    always names its columns)."""
    table = read_table(path, path.name, header=False)
    if all(is_number(str(table.data.column(c)[0].as_py())) for c in range(len(table.columns))):
        return table
    if len(table) == 1:
        raise DlcError(f"{path.name}: no data rows below the header")
    return read_table(path, path.name, header=True)


def input_columns(table: Table, features: list[str] | None, need: int) -> list[int]:
    """Indices of the model's feature columns (by name when both sides have names)."""
    if features and table.has_names:
        missing = [f for f in features if f not in table.columns]
        if not missing:
            return [table.columns.index(f) for f in features]
        if len(missing) < len(features) and len(table.columns) != need:
            f = missing[0]
            raise DlcError(
                f"{table.display}: no column '{f}', which the model expects "
                f"({len(missing)} of {len(features)} missing); {suggest(f, table.columns)}"
            )
    if len(table.columns) != need:
        raise DlcError(
            f"{table.display} has {len(table.columns)} columns; "
            f"the model expects {_expects(need, features)}"
        )
    return list(range(need))


def _read_table(path: Path, features: list[str] | None, need: int, missing: bool) -> np.ndarray:
    table = _csv_table(path)
    cols = input_columns(table, features, need)
    return table.numbers(cols, missing)


def _read_array(path: Path) -> np.ndarray:
    """Key "x" of an npz (or its only array), or a .npy array."""
    check_numpy_file(path, path.name)
    try:  # an npz reads its members lazily: a corrupt archive fails at z[key], not at np.load
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.ndarray):
            return z
        with z:
            if "x" in z.files:
                return z["x"]
            if len(z.files) == 1:
                return z[z.files[0]]
            names = sorted(z.files)
    except NPZ_ERRORS as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlcError(f"cannot read {path.name}: {why}") from None
    raise DlcError(
        f"{path.name}: no array 'x' and {len(names)} arrays to choose from "
        f"({name_list(names)}); save the inputs under the key 'x'"
    )


def _shape_samples(x: np.ndarray, shape: list[int], name: str, features: list[str] | None):
    need = int(np.prod(shape)) if shape else 1
    if list(x.shape) == shape:  # one sample without a batch dimension
        x = x[None]
    have = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    if x.ndim == 0 or have != need:
        got = list(x.shape[1:]) if x.ndim > 1 else []
        raise DlcError(
            f"{name}: samples have shape {got} ({have} values); the model expects "
            f"{_expects(need, features)}, input.shape {shape}"
        )
    return x.reshape((len(x), *shape))


def _read_npz(path: Path, shape: list[int], features: list[str] | None, layout: str):
    x = as_numeric(_read_array(path), path.name)
    if layout != "nchw":
        single = [shape[1], shape[2], shape[0]] if len(shape) == 3 else None
        if single and (list(x.shape) == single or (shape[0] == 1 and list(x.shape) == single[:2])):
            x = x[None]  # one image without a batch dimension
        x = to_nchw(x, shape, layout, path.name)
    x = _shape_samples(x, shape, path.name, features)
    check_finite(x, path.name)
    return x


def read_inputs(
    path: Path, features: list[str] | None, input_shape: Sequence[int], layout: str = "nchw",
    missing: bool = False,
) -> np.ndarray:
    """Raw model inputs from a CSV (header optional), Parquet, Feather or NPZ/NPY file, one
    PNG/JPEG image or every one directly in a folder (sorted by name; scaled to [0, 1]), float32
    [n, *input_shape].

    CSV: with a header and known feature names, the model's columns are picked by name (any
    order, extra columns ignored); otherwise every column, in order. NPZ/NPY image arrays are
    read in `layout` (the model's data.layout, nchw or nhwc) and returned channels-first.
    `missing`: a table's missing cells read NaN (the model fills them; data.missing)."""
    path = Path(path)
    shape = [int(d) for d in input_shape]
    suffix = path.suffix.lower()
    if not path.is_dir():
        check_file(path, "input file")
    if path.is_dir() or suffix in IMAGE_SUFFIXES:
        return read_image_inputs(path, shape)
    if suffix in TABLE_SUFFIXES:
        x = _read_table(path, features, int(np.prod(shape)) if shape else 1, missing)
    elif suffix in (".npz", ".npy"):
        x = _read_npz(path, shape, features, layout)
    else:
        raise DlcError(
            f"input file {path.name}: expected a .csv, .parquet, .feather, .npz or .npy file, "
            "a PNG/JPEG image or a folder of images"
        )
    if len(x) == 0:
        raise DlcError(f"{path.name}: no samples")
    return np.ascontiguousarray(x.reshape((len(x), *shape)), dtype=np.float32)
