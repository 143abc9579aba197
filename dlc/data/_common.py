"""Small helpers shared by the data readers: float parsing, name suggestions, shape checks."""

from __future__ import annotations

import difflib
import lzma
import math
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

from dlc.errors import DlcError


# What numpy.load can raise on a damaged .npy/.npz: a zip member is read lazily (at z[key]), and
# zipfile raises RuntimeError (encrypted), NotImplementedError (compression) and codec errors.
NPZ_ERRORS = (ValueError, OSError, EOFError, RuntimeError, NotImplementedError,
              zipfile.BadZipFile, zlib.error, lzma.LZMAError)


# Data is trained and predicted in float32: a value beyond its range (1e39) is finite as a
# float64 but inf once cast, so finiteness is judged in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite32(x: np.ndarray) -> np.ndarray:
    """Elementwise: finite and within float32's range."""
    return np.isfinite(x) & (np.abs(x) <= FLOAT32_MAX)


def name_list(names: Sequence[str], limit: int = 8) -> str:
    """`a, b, c` (at most `limit` names, then `...`)."""
    shown = [str(n) for n in names[:limit]]
    if len(names) > limit:
        shown.append("...")
    return ", ".join(shown)


def suggest(name: str, choices: Sequence[str]) -> str:
    """`did you mean 'x'?` or a list of the available choices."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"columns are: {name_list(choices)}"


def parse_float(cell: str, where: str, column: str) -> float:
    """One finite float from a CSV cell; DlcError `where: column 'c': ...` otherwise."""
    text = cell.strip()
    if text == "":
        raise DlcError(f"{where}: column '{column}': empty cell")
    try:
        value = float(text)
    except ValueError:
        raise DlcError(f"{where}: column '{column}': '{text}' is not a number") from None
    if not math.isfinite(value):
        raise DlcError(f"{where}: column '{column}': '{text}' is not a finite number (NaN/inf)")
    if abs(value) > FLOAT32_MAX:
        raise DlcError(f"{where}: column '{column}': '{text}' is beyond float32's range "
                       f"(±{FLOAT32_MAX:.4g}), in which dlc trains and predicts")
    return value


def check_finite(x: np.ndarray, what: str) -> None:
    """DlcError naming the first sample holding NaN, inf or a value beyond float32's range."""
    bad = ~finite32(x.reshape(len(x), -1)).all(axis=1) if len(x) else np.zeros(0, bool)
    if bad.any():
        first = int(np.argmax(bad))
        raise DlcError(f"{what} contains NaN or inf or a value beyond float32's range "
                       f"(±{FLOAT32_MAX:.4g}) (first at sample {first})")


def fit_shape(x: np.ndarray, input_shape: Sequence[int], what: str) -> np.ndarray:
    """Reshape each sample of x to input_shape when the per-sample sizes agree (float32; uint8
    pixels stay uint8)."""
    shape = [int(d) for d in input_shape]
    need = int(np.prod(shape)) if shape else 1
    have = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    if have != need:
        raise DlcError(
            f"{what}: data has {have} features per sample; input.shape {shape} needs {need}"
        )
    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    return np.ascontiguousarray(x.reshape((len(x), *shape)), dtype=dtype)


def as_numeric(arr: np.ndarray, what: str) -> np.ndarray:
    """A float64 copy of a numeric array; DlcError for strings or objects."""
    if arr.dtype.kind not in "biuf":
        raise DlcError(f"{what} must be numeric, found dtype {arr.dtype}")
    return arr.astype(np.float64)
