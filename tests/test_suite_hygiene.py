"""The suite itself: optional oracles never hide the tests that do not need them."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

MODULE_SKIP = re.compile(r"^(\w+ = )?pytest\.importorskip\(", re.M)
WHOLE_FILE = {  # files where every test needs the package
    "test_tune_ray.py",  # runs Ray Tune (dlc.commands.tune_ray imports ray)
    "test_install.py",  # reads pyproject.toml with tomllib (the standard library from 3.11)
}


def test_no_file_level_importorskip():
    """A file-level importorskip skips every test of its file, those that do not need the package
    too; mark the tests that need it (tests/oracles.py) or call importorskip inside them."""
    offenders = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
                 if MODULE_SKIP.search(p.read_text()) and p.name not in WHOLE_FILE]
    assert offenders == []


def test_oracle_free_tests_run_without_the_oracles(tmp_path):
    """With torch and Pillow made unimportable, the files of oracle tests still collect, and
    their tests that need neither run (one from each file here; test_cnn's only one, a slow
    training, is collected)."""
    (tmp_path / "torch.py").write_text("raise ImportError('torch hidden by the test')\n")
    (tmp_path / "PIL").mkdir()
    (tmp_path / "PIL" / "__init__.py").write_text("raise ImportError('Pillow hidden')\n")
    tests = ["tests/test_data_images.py::test_npz_layout_errors",
             "tests/test_imbalance.py::test_balanced_weights_without_the_trainer_are_an_error",
             "tests/test_sequence.py::test_unrolled_lstm_hoists_the_input_projection",
             "tests/test_train_step.py::test_huber_and_mae_cover_both_branches"]
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0 and f"{len(tests)} passed" in proc.stdout, proc.stdout[-2000:]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--collect-only", "-m", "slow", "tests/test_cnn.py"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)
    assert "test_train_digits_cnn_and_predict_csv" in proc.stdout, proc.stdout[-2000:]
