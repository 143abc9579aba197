"""One validation pipeline (dlc.train.features.checks.checked_network): validate, train, cv and
tune refuse the same spec with the same diagnostic, before any data is loaded or trial run."""

from __future__ import annotations

import pytest
from conftest import SPECS

SEARCH = "search:\n  train.optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}\n"


@pytest.fixture
def bad_spec(tmp_path):
    """iris with a distillation teacher that does not exist: only the training checks see it."""
    spec = tmp_path / "iris.yaml"
    spec.write_text((SPECS / "iris.yaml").read_text().replace("epochs: 60", "epochs: 1")
                    + "  distill: {teacher: missing.onnx}\n" + SEARCH)
    return spec


@pytest.mark.parametrize("command", ["validate", "train", "cv", "tune"])
def test_every_command_refuses_the_spec_through_the_same_checks(cli, bad_spec, tmp_path, command):
    if command == "tune":
        pytest.importorskip("optuna")
    extra = {"train": ["--out", tmp_path / "run"], "cv": ["--folds", "2"],
             "tune": ["--trials", "1"]}.get(command, [])
    r = cli(command, bad_spec, *extra)
    assert r.code == 2, r
    assert f"teacher model not found: {tmp_path / 'missing.onnx'}" in r.err, r
    assert "trial" not in r.out + r.err  # tune: refused before its first trial
    assert not (tmp_path / "run").exists()


def test_validate_passes_what_the_pipeline_passes(cli):
    from dlc.model.spec import load_spec
    from dlc.train.features.checks import checked_network

    net = checked_network(load_spec(SPECS / "iris.yaml", []))
    assert net.kind == "classification"
    r = cli("validate", SPECS / "iris.yaml")
    assert r.code == 0 and r.out.strip().endswith("iris.yaml: ok"), r
