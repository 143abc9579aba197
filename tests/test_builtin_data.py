"""The five `builtin:` data sets ship as package data: no scikit-learn at run time, arrays equal
to scikit-learn's own bundled copies (checked when scikit-learn is installed), under 1 MB."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from dlc.data._sources import BUILTIN_DIR, BUILTINS, load_builtin

KINDS = {"digits": "classification", "iris": "classification", "wine": "classification",
         "breast_cancer": "binary", "diabetes": "regression"}


def test_shipped_files_are_small():
    sizes = {p.name: p.stat().st_size for p in BUILTIN_DIR.glob("*.npz")}
    assert sorted(sizes) == sorted(f"{n}.npz" for n in BUILTINS)
    assert sum(sizes.values()) < 1_000_000, sizes


@pytest.mark.parametrize("name", BUILTINS)
def test_arrays_equal_scikit_learn(name):
    skd = pytest.importorskip("sklearn.datasets")
    bunch = getattr(skd, f"load_{name}")()
    x, y, labels, features = load_builtin(name, KINDS[name], None)
    assert x.dtype == np.float64 and np.array_equal(x, bunch.data)
    target = np.asarray(bunch.target)
    if KINDS[name] == "regression":
        assert labels is None and np.array_equal(y.reshape(-1), target)
    else:
        assert labels == [str(n) for n in bunch.target_names]
        assert np.array_equal(y.reshape(-1), target)
    assert features == [str(f) for f in bunch.feature_names]


def test_builtin_loads_without_scikit_learn(tmp_path):
    """A fresh interpreter in which `import sklearn` fails still loads builtin:iris."""
    blocker = tmp_path / "sklearn"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('scikit-learn is not installed')\n")
    code = ("from dlc.data._sources import load_builtin; "
            "x, y, labels, _ = load_builtin('iris', 'classification', None); "
            "print(x.shape, labels)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(150, 4) ['setosa', 'versicolor', 'virginica']" in proc.stdout
