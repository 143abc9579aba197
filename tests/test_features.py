"""The training-feature interface (dlc.train.features.registry): the train step, the Trainer and the run reach
the features only through it, and a feature registered from outside plugs into every stage."""

from __future__ import annotations

import ast
import csv
import json
import sys
import types
from pathlib import Path

import pytest
from conftest import SPECS

from dlc.train.features import registry as features
from dlc.errors import SpecError
from dlc.train.features.protocol import Feature
from dlc.train.features.registry import Registered

DLC = Path(features.__file__).parents[2]  # the dlc package
# the modules that drive training: they loop over the registry, never name a feature
DRIVERS = ["train/step.py", "train/trainer.py", "train/run.py", "train/features/checks.py",
           "commands/cv.py"]


def imported_modules(path: Path) -> set[str]:
    """Every dlc module `path` imports, at any level (`from dlc import x` counts as dlc.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("driver", DRIVERS)
def test_drivers_do_not_name_a_feature_module(driver):
    named = imported_modules(DLC / driver) & {r.module for r in features.REGISTRY}
    assert not named, f"dlc/{driver} imports {sorted(named)}: go through dlc.train.features.registry"


def test_every_registered_module_exposes_a_feature():
    import importlib

    found = [importlib.import_module(r.module).FEATURE for r in features.REGISTRY]
    assert all(isinstance(f, Feature) for f in found)
    assert len({f.name for f in found}) == len(found) and all(f.name for f in found)


@pytest.mark.parametrize("module", [r.module for r in features.REGISTRY])
def test_features_do_not_import_the_registry(module):
    """The registry loads the feature modules; they see only the protocol: no circle."""
    path = DLC / (module.removeprefix("dlc.").replace(".", "/") + ".py")
    assert not {"dlc.train.features.registry", "dlc.train.features.checks"} & \
        imported_modules(path)


class Toy(Feature):
    """Adds 5 to the train step's loss (a constant: the gradient is unchanged), counts epochs
    and reports the count; refuses a spec named 'refused'."""

    name = "toy"

    def check(self, spec, net, base_dir) -> None:
        if spec.data["name"] == "refused":
            raise SpecError([spec.diag(("name",), "the toy feature refuses this name")])

    def loss(self, b, net, inputs, logits, loss, data_norm):
        return b.Add(loss, b.const(5.0))

    def start(self, trainer):
        return {"epochs": 0}

    def epoch_start(self, trainer) -> None:
        trainer.feature_state[self.name]["epochs"] += 1

    def summary(self, trainer, params) -> dict:
        return {"toy": dict(trainer.feature_state[self.name])}


@pytest.fixture
def toy(monkeypatch):
    module = types.ModuleType("toy_feature")
    module.FEATURE = Toy()
    monkeypatch.setitem(sys.modules, "toy_feature", module)
    monkeypatch.setattr(features, "REGISTRY", [*features.REGISTRY,
                                               Registered("toy_feature", lambda s, net: True)])


def _train(cli, out: Path) -> list[dict]:
    r = cli("train", SPECS / "iris.yaml", "--epochs", "2", "--out", out, "-q", "--device", "cpu")
    assert r.code == 0, r
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_registered_feature_plugs_in(cli, tmp_path, monkeypatch, toy):
    with_toy = _train(cli, tmp_path / "toy")
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert summary["toy"] == {"epochs": 2}  # start, epoch_start and summary were called
    monkeypatch.setattr(features, "REGISTRY", features.REGISTRY[:-1])
    plain = _train(cli, tmp_path / "plain")
    for a, b in zip(with_toy, plain):  # its loss term reached the train step, and only it
        assert float(a["train_loss"]) - float(b["train_loss"]) == pytest.approx(5.0, abs=1e-4)
        assert a["val_loss"] == b["val_loss"] and a["train_accuracy"] == b["train_accuracy"]


def test_a_registered_feature_checks_specs_in_validate(cli, tmp_path, toy):
    spec = tmp_path / "refused.yaml"
    spec.write_text((SPECS / "iris.yaml").read_text().replace("name: iris", "name: refused"))
    r = cli("validate", spec)
    assert r.code == 2 and "the toy feature refuses this name" in r.err, r
