"""Typed training options (dlc.train.options): built once from the validated spec, whose schema
fills every default, so the training code never repeats one."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from dlc.train import options as trainopts
from dlc.model.network import build_network
from dlc.model.spec import load_spec_text
from dlc.model.spec.schema import schema

DLC = Path(trainopts.__file__).parents[1]  # the dlc package
# modules that read training options: through dlc.train.options, or cfg[key] of the filled spec
READERS = ["train/optim.py", "train/schedule.py", "train/step.py", "train/trainer.py",
           "train/checkpoint.py", "train/features/prune.py", "train/features/finetune.py",
           "train/features/distill.py", "train/features/registry.py", "train/options.py"]

SPEC = """dlc: 1
name: opts
input: {shape: [4]}
layers: [{type: dense, name: out, units: 3}]
task: {kind: classification}
train: {optimizer: {type: %s}, schedule: {type: plateau, patience: 2},
        early_stopping: {patience: 4}, clip_norm: 1.5}
"""


def literal_defaults(path: Path) -> list[str]:
    """`x.get("key", <literal>)` calls: a default written beside the schema's."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[1], (ast.Constant, ast.Dict, ast.List))):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", READERS)
def test_no_schema_default_is_repeated(module):
    assert literal_defaults(DLC / module) == []


def _properties(*path: str) -> set[str]:
    node = schema()["properties"]["train"]
    for key in path:
        node = node["properties"][key]
    return set(node["properties"])


@pytest.mark.parametrize("cls, path, untyped", [
    (trainopts.OptimizerConfig, ("optimizer",), {"lr_scale"}),  # lr_scale: finetune's
    (trainopts.ScheduleConfig, ("schedule",), set()),
    (trainopts.EarlyStopping, ("early_stopping",), set()),
    (trainopts.OnDivergence, ("on_divergence",), set()),
    (trainopts.CheckpointPolicy, ("checkpoint",), set())])
def test_typed_options_cover_the_schema(cls, path, untyped):
    """A field added to the schema must be added here too (or it would never be read)."""
    assert {f.name for f in dataclasses.fields(cls)} == _properties(*path) - untyped


@pytest.mark.parametrize("kind", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"])
def test_options_hold_the_filled_spec(kind):
    spec = load_spec_text(SPEC % kind)
    opts = trainopts.TrainOptions.of(build_network(spec).spec)
    filled = spec.data["train"]
    assert dataclasses.asdict(opts.optimizer) == {
        f.name: filled["optimizer"].get(f.name) for f in dataclasses.fields(opts.optimizer)}
    assert opts.schedule.patience == 2 and opts.schedule.factor == filled["schedule"]["factor"]
    assert opts.early_stopping.patience == 4 and opts.early_stopping.monitor == "val_loss"
    assert opts.clip_norm == 1.5 and opts.on_divergence.retry_budget == 0
    assert (opts.epochs, opts.batch_size, opts.seed) == (filled["epochs"],
                                                        filled["batch_size"], filled["seed"])
