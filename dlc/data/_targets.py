"""Target encoding: class indices, binary 0/1 columns and regression columns."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dlc.data._common import check_finite, name_list, parse_float
from dlc.errors import DlcError

# Class indices name classes 0..max: a cell claiming class 10^20 would build 10^20 names.
MAX_CLASSES = 100_000

Locator = Callable[[int], str]  # sample index -> "file:line: column 'c'" prefix for messages


def encode_numeric(
    y: np.ndarray, kind: str, known: list[str] | None, loc: Locator, what: str
) -> tuple[np.ndarray, list[str] | None]:
    """Numeric targets (npz, builtin, integer CSV cells) -> (y, labels) for the task kind."""
    if y.dtype.kind not in "biuf":
        raise DlcError(f"{what} must be numeric, found dtype {y.dtype}")
    y = y.astype(np.float64)
    if len(y) == 0:
        raise DlcError(f"{what} is empty")
    check_finite(y, what)
    if kind == "regression":
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2:
            raise DlcError(f"{what} must have shape [n] or [n, k] for regression, found {y.shape}")
        return y.astype(np.float32), None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 and not (kind == "classification" and y.ndim == 2):  # [n, T]: per token
        raise DlcError(f"{what} must hold one class index per sample (or per token), found shape "
                       f"{list(y.shape)}")
    _check_integers(y, loc)
    if kind == "binary":
        return _encode_binary(y, known, loc)
    return _encode_classes(y, known, loc)


def _check_integers(y: np.ndarray, loc: Locator) -> None:
    bad = (y != np.round(y)) | (y < 0)
    if bad.any():
        at = tuple(np.argwhere(bad)[0])  # (sample,) or (sample, token)
        raise DlcError(f"{loc(int(at[0]))}: class target {y[at]:g} is not a non-negative integer")


def _encode_binary(
    y: np.ndarray, known: list[str] | None, loc: Locator
) -> tuple[np.ndarray, list[str]]:
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DlcError(f"{loc(i)}: binary target must be 0 or 1, found {y[i]:g}")
    labels = list(known) if known else ["0", "1"]
    if len(labels) != 2:
        raise DlcError(f"binary task needs exactly 2 class names, found {len(labels)}")
    return y.astype(np.float32)[:, None], labels


def _encode_classes(
    y: np.ndarray, known: list[str] | None, loc: Locator
) -> tuple[np.ndarray, list[str]]:
    if known:
        over = y >= len(known)
        if over.any():
            i = int(np.argwhere(over)[0][0])
            raise DlcError(
                f"{loc(i)}: class index {int(y[i])} is out of range for "
                f"{len(known)} class names ({name_list(known)})"
            )
        labels = list(known)
    else:
        if y.max() >= MAX_CLASSES:
            i = int(np.argmax(y.reshape(len(y), -1).max(axis=1)))
            raise DlcError(f"{loc(i)}: class index {y.max():.0f} is over dlc's limit of "
                           f"{MAX_CLASSES:,} classes (MAX_CLASSES); give class names in "
                           "task.labels or fix the target column")
        labels = [str(i) for i in range(int(y.max()) + 1)]
    return y.astype(np.int64), labels


def _labels_differ(cells: list[str], values: list[str], known: list[str], loc: Locator) -> str:
    """task.labels and the target's values must be the same set: a typo would otherwise train
    with the data's (sorted) names and predict with the spec's, every class swapped."""
    extra = [v for v in values if v not in known]
    missing = [k for k in known if k not in values]
    at = loc(cells.index(extra[0])) if extra else loc(0)
    quoted = lambda names: name_list([f"'{n}'" for n in names])  # noqa: E731
    parts = ([f"the data has {quoted(extra)}, not in task.labels"] if extra else []) + \
        ([f"task.labels has {quoted(missing)}, not in the data"] if missing else [])
    return f"{at}: task.labels does not match the target's values: {'; '.join(parts)}"


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def encode_cells(
    cells: list[str],
    kind: str,
    known: list[str] | None,
    strict: bool,
    where: Locator,
    column: str,
) -> tuple[np.ndarray, list[str] | None]:
    """CSV target cells -> (y, labels). `where(i)` is "file:line" of cell i; `strict`:
    categorical values must be among `known`."""

    def loc(i: int) -> str:
        return f"{where(i)}: column '{column}'"

    for i, cell in enumerate(cells):
        if cell.strip() == "":
            raise DlcError(f"{loc(i)}: empty target cell")
    if kind == "regression":
        values = [parse_float(c, where(i), column) for i, c in enumerate(cells)]
        return np.asarray(values, dtype=np.float32)[:, None], None
    ints = [_as_int(c.strip()) for c in cells]
    if all(v is not None for v in ints):
        _check_one_spelling(cells, ints, loc)
        y = np.asarray(ints, dtype=np.float64)
        return encode_numeric(y, kind, known, loc, "target")
    return _encode_categorical([c.strip() for c in cells], kind, known, strict, loc)


def _check_one_spelling(cells: list[str], ints: list[int], loc: Locator) -> None:
    """Class numbers written two ways ('1' and '1e0', '1.0') would silently be one class."""
    first: dict[int, str] = {}
    for i, (cell, value) in enumerate(zip(cells, ints)):
        seen = first.setdefault(value, cell.strip())
        if seen != cell.strip():
            raise DlcError(f"{loc(i)}: '{cell.strip()}' and '{seen}' are both class {value}, "
                           "written two ways; write each class one way")


def _encode_categorical(
    cells: list[str], kind: str, known: list[str] | None, strict: bool, loc: Locator
) -> tuple[np.ndarray, list[str]]:
    values = sorted(set(cells))
    if known and strict and not set(values) <= set(known):  # a trained model's classes
        i = next(i for i, c in enumerate(cells) if c not in known)
        raise DlcError(f"{loc(i)}: '{cells[i]}' is not one of the class names ({name_list(known)})")
    if known and not strict and set(values) != set(known):  # task.labels name the data's values
        raise DlcError(_labels_differ(cells, values, known, loc))
    labels = known or values
    if kind == "binary" and len(labels) != 2:
        if labels is known:
            raise DlcError(f"binary task needs exactly 2 class names, found {len(labels)}")
        raise DlcError(
            f"{loc(0)}: binary target has {len(labels)} distinct values "
            f"({name_list(labels)}); binary needs exactly 2 (or 0/1)"
        )
    index = {name: i for i, name in enumerate(labels)}
    y = np.asarray([index[c] for c in cells], dtype=np.int64)
    if kind == "binary":
        return y.astype(np.float32)[:, None], labels
    return y, labels
