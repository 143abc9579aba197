"""Write dlc/data/builtin/<name>.npz from scikit-learn's bundled copies (run once, by hand).

dlc ships these five toy data sets as package data so that `builtin:NAME` needs no
scikit-learn (with SciPy, about 195 MB of install). Each archive holds `x` (the features, as
stored: integer-valued sets such as digits as uint8, the rest float64), `y` (the targets),
`labels` (class names, absent for regression) and `features` (feature names), compressed.
tests/test_builtin_data.py checks the arrays against scikit-learn's whenever it is installed.

    python scripts/make_builtin_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sklearn
import sklearn.datasets as skd

OUT = Path(__file__).resolve().parent.parent / "dlc" / "data" / "builtin"
NAMES = ("digits", "iris", "wine", "breast_cancer", "diabetes")


def compact(x: np.ndarray) -> np.ndarray:
    """uint8 when every value is an integer in 0..255 (digits' 0..16 pixels), else as is."""
    if np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255:
        return x.astype(np.uint8)
    return x


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        bunch = getattr(skd, f"load_{name}")()
        arrays = {"x": compact(np.asarray(bunch.data)), "y": np.asarray(bunch.target),
                  "features": np.asarray([str(f) for f in bunch.feature_names])}
        if getattr(bunch, "target_names", None) is not None:
            arrays["labels"] = np.asarray([str(n) for n in bunch.target_names])
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        print(f"{name}: {(OUT / f'{name}.npz').stat().st_size:,} bytes "
              f"(scikit-learn {sklearn.__version__})")


if __name__ == "__main__":
    main()
