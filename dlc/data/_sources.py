"""Data sources: `builtin:NAME`, `csv:PATH`, `parquet:PATH`, `feather:PATH`, `npz:PATH`,
`folder:PATH` -> raw (x, y, labels, features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlc.data._common import NPZ_ERRORS, as_numeric, check_finite, name_list
from dlc.data._csv import load_table
from dlc.data._images import load_folder, to_nchw
from dlc.data._targets import encode_numeric
from dlc.errors import DlcError
from dlc.files.untrusted import check_file, check_numpy_file

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTINS = ("digits", "iris", "wine", "breast_cancer", "diabetes")
TABLES = ("csv", "parquet", "feather")  # read column by column through pyarrow (_table.py)
SCHEMES = ("builtin", *TABLES, "npz", "folder")

Raw = tuple[np.ndarray, "np.ndarray | None", "list[str] | None", "list[str] | None"]


def parse_source(source: str) -> tuple[str, str]:
    """`csv:iris.csv` -> ("csv", "iris.csv"); a bare `*.csv` / `*.parquet` / `*.feather` /
    `*.npz` path is accepted too."""
    scheme, sep, rest = str(source).partition(":")
    if sep and scheme in SCHEMES and rest:
        return scheme, rest
    suffix = Path(str(source)).suffix.lower()
    if suffix in (".csv", ".parquet", ".feather", ".npz"):
        return suffix[1:], str(source)
    raise DlcError(
        f"data source '{source}': expected builtin:NAME, csv:PATH, parquet:PATH, feather:PATH, "
        "npz:PATH or folder:PATH "
        f"(builtins: {', '.join(BUILTINS)})"
    )


def resolve_path(rest: str, spec_dir: Path, origin: str, folder: bool = False) -> Path:
    """A data file (or, with `folder`, directory) path relative to spec_dir (absolute allowed);
    DlcError when missing."""
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = Path(spec_dir) / path
    if folder and path.is_file():
        raise DlcError(f"data folder {path} is a file; folder: needs a folder (from {origin})")
    if folder and not path.is_dir():
        raise DlcError(f"data folder not found: {path} (from {origin})")
    if not folder:
        try:
            check_file(path, "data file")
        except DlcError as e:
            raise DlcError(f"{e} (from {origin})") from None
    return path


def load_builtin(name: str, kind: str, known: list[str] | None) -> Raw:
    """One of scikit-learn's five bundled toy data sets, shipped with dlc as package data
    (dlc/data/builtin/NAME.npz, made by scripts/make_builtin_data.py), so no scikit-learn is
    needed; the arrays equal scikit-learn's (tests/test_builtin_data.py)."""
    if name not in BUILTINS:
        raise DlcError(f"unknown builtin data set '{name}'; expected one of: {', '.join(BUILTINS)}")
    arrays = _read_npz(BUILTIN_DIR / f"{name}.npz", f"builtin:{name}")
    x = arrays["x"].astype(np.float64)
    names = _npz_names(arrays, "labels", None)
    if not known and names is not None and kind != "regression":
        known = names
    what = f"builtin:{name}"
    y, labels = encode_numeric(arrays["y"], kind, known, lambda i: f"{what}: sample {i}",
                               f"{what} target")
    return x, y, labels, _npz_names(arrays, "features", x.shape[1])


def _read_npz(path: Path, display: str) -> dict[str, np.ndarray]:
    if check_numpy_file(path, display) != "npz":
        raise DlcError(f"{display}: not an npz archive (write it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except NPZ_ERRORS as e:
        raise DlcError(f"cannot read {display} as npz: {e}") from None


def _npz_names(arrays: dict, key: str, n: int | None) -> list[str] | None:
    """An optional string array (labels / features) stored beside x and y."""
    if key not in arrays:
        return None
    names = [str(v) for v in np.asarray(arrays[key]).reshape(-1)]
    return names if n is None or len(names) == n else None


def load_npz(
    path: Path,
    display: str,
    spec: dict,
    known: list[str] | None,
    require_target: bool,
) -> Raw:
    """x (and y) arrays from an npz archive; an optional `labels` array names the classes."""
    data = spec.get("data") or {}
    kind = (spec.get("task") or {}).get("kind", "classification")
    arrays = _read_npz(path, display)
    x_key, y_key = data.get("x_key") or "x", data.get("y_key") or "y"
    present = name_list(sorted(arrays)) or "none"
    if x_key not in arrays:
        raise DlcError(f"{display}: no array '{x_key}' (data.x_key); arrays present: {present}")
    x = as_numeric(arrays[x_key], f"{display}: {x_key}")
    if x.ndim == 0 or len(x) == 0:
        raise DlcError(f"{display}: {x_key} holds no samples")
    check_finite(x, f"{display}: {x_key}")
    features = _npz_names(arrays, "features", x.shape[1]) if x.ndim == 2 else None
    if kind != "regression" and not known:
        known = _npz_names(arrays, "labels", None)
    if y_key not in arrays:
        if require_target:
            raise DlcError(f"{display}: no array '{y_key}' (data.y_key); arrays present: {present}")
        return x, None, (known if kind != "regression" else None), features
    y_raw = arrays[y_key]
    if y_raw.ndim == 0 or len(y_raw) != len(x):
        raise DlcError(
            f"{display}: {y_key} has {len(y_raw) if y_raw.ndim else 0} samples, "
            f"{x_key} has {len(x)}"
        )
    what = f"{display}: {y_key}"
    y, labels = encode_numeric(y_raw, kind, known, lambda i: f"{what}[{i}]", what)
    return x, y, labels, features


def load_raw(
    source: str,
    spec: dict,
    spec_dir: Path,
    known: list[str] | None,
    strict: bool,
    require_target: bool,
    origin: str,
) -> Raw:
    """Dispatch on the source scheme; x is [n, ...] (not yet reshaped), channels first."""
    scheme, rest = parse_source(source)
    kind = (spec.get("task") or {}).get("kind", "classification")
    if scheme == "folder":
        path = resolve_path(rest, spec_dir, origin, folder=True)
        return load_folder(path, rest.rstrip("/\\") or rest, spec, known, strict)
    if scheme == "builtin":
        raw = load_builtin(rest, kind, known)
    else:
        path = resolve_path(rest, spec_dir, origin)
        if scheme in TABLES:
            raw = load_table(path, rest, spec, known, strict, require_target, scheme)
        else:
            raw = load_npz(path, rest, spec, known, require_target)
    return _layout(raw, spec, source if scheme == "builtin" else rest)


def _layout(raw: Raw, spec: dict, what: str) -> Raw:
    """Apply data.layout: channels-last image arrays become channels-first."""
    layout = (spec.get("data") or {}).get("layout") or "nchw"
    shape = (spec.get("input") or {}).get("shape")
    if shape is None and layout == "nchw":
        return raw
    return (to_nchw(raw[0], shape or [], layout, what), *raw[1:])
