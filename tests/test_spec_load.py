"""Loading valid specs: defaults, overrides, positions, the schema file itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from broken_specs import VALID_SPEC, mutate, with_layer

from dlc.errors import Diagnostic, SpecError
from dlc.model.spec import Spec, load_spec, load_spec_text, render_path, schema, schema_path


@pytest.fixture
def spec() -> Spec:
    return load_spec_text(VALID_SPEC, "spec.yaml")


def test_result_is_plain_data(spec):
    assert json.loads(json.dumps(spec.data)) == spec.data
    assert spec.text == VALID_SPEC
    assert spec.file == "spec.yaml"


def test_schema_defaults_filled(spec):
    data = spec.data
    assert data["input"]["dtype"] == "float32"
    assert data["layers"][2] == {"type": "dense", "name": "dense_2", "units": 10,
                                 "activation": "linear", "use_bias": True, "initializer": "auto"}
    assert data["train"]["optimizer"] == {"type": "adam", "lr": 0.001, "weight_decay": 0.0,
                                          "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert data["train"]["schedule"]["type"] == "constant"
    assert data["train"]["device"] == "auto"
    assert data["train"]["seed"] == 0
    assert data["data"]["split"] == {"val": 0.1, "test": 0.2, "stratify": True, "seed": 0}
    assert data["data"]["normalize"] == "standard"
    assert "early_stopping" not in data["train"]
    assert "clip_norm" not in data["train"]


def test_train_created_with_defaults_when_absent():
    data = load_spec_text(VALID_SPEC.split("data:")[0]).data
    assert "data" not in data
    assert data["train"]["epochs"] == 10
    assert data["train"]["batch_size"] == 32
    assert data["train"]["optimizer"]["type"] == "adam"


def test_split_created_when_data_present():
    data = load_spec_text(mutate("  split: {val: 0.1, test: 0.2}\n", "")).data
    assert data["data"]["split"]["val"] == 0.1


def test_defaults_inside_present_optional_object():
    text = mutate("batch_size: 64", "batch_size: 64\n  early_stopping: {patience: 2}")
    stop = load_spec_text(text).data["train"]["early_stopping"]
    assert stop == {"patience": 2, "monitor": "val_loss", "min_delta": 0.0, "restore_best": True}


@pytest.mark.parametrize(("layer", "expected"), [
    ("{type: leaky_relu}", {"alpha": 0.01}),
    ("{type: elu}", {"alpha": 1.0}),
    ("{type: gelu}", {"approximate": "none"}),
    ("{type: dropout, rate: 0.5}", {"rate": 0.5}),
    ("{type: softmax}", {}),
    ("{type: flatten}", {}),
    ("{type: reshape, shape: [2, -1]}", {"shape": [2, -1]}),
], ids=["leaky_relu", "elu", "gelu", "dropout", "softmax", "flatten", "reshape"])
def test_per_layer_type_defaults(layer, expected):
    data = load_spec_text(with_layer(f"  - {layer}\n")).data
    added = data["layers"][3]
    assert added == {"type": added["type"], "name": f"{added['type']}_3", **expected}


@pytest.mark.parametrize(("kind", "loss", "metrics"), [
    ("classification", "cross_entropy", ["accuracy"]),
    ("binary", "binary_cross_entropy", ["accuracy"]),
    ("regression", "mse", ["mae", "r2"]),
])
def test_kind_dependent_defaults(kind, loss, metrics):
    task = load_spec_text(mutate("kind: classification", f"kind: {kind}")).data["task"]
    assert task["loss"] == loss
    assert task["metrics"] == metrics


def test_explicit_loss_and_metrics_kept():
    text = mutate("kind: classification", "kind: regression\n  loss: huber\n  metrics: [mse]")
    task = load_spec_text(text).data["task"]
    assert (task["loss"], task["metrics"], task["huber_delta"]) == ("huber", ["mse"], 1.0)


def test_layer_names_default_and_explicit():
    data = load_spec_text(mutate("    units: 10", "    units: 10\n    name: out")).data
    assert [layer["name"] for layer in data["layers"]] == ["dense_0", "dense_1", "out"]


def test_default_name_clashing_with_explicit_name():
    text = mutate("  - type: dense\n    units: 256\n    activation: relu\n  - type: dense\n",
                  "  - type: dense\n    name: dense_1\n    units: 256\n    activation: relu\n"
                  "  - type: dense\n")
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "spec.yaml")
    assert "spec.yaml:10:5: layers[1]: duplicate the default name 'dense_1'" in str(info.value)


def test_yaml12_floats():
    data = load_spec_text(mutate("lr: 0.001", "lr: 1e-3")).data
    assert data["train"]["optimizer"]["lr"] == 0.001
    data = load_spec_text(mutate("lr: 0.001", "lr: 1.0e-8")).data
    assert data["train"]["optimizer"]["lr"] == 1e-8


def test_dates_stay_strings():
    text = mutate("name: digits-mlp", "name: digits-mlp\ndescription: 2024-01-01")
    data = load_spec_text(text).data
    assert data["description"] == "2024-01-01"


def test_positions(spec):
    assert spec.positions[()] == (1, 1)
    assert spec.positions[("layers", 2, "units")] == (13, 12)
    assert spec.key_positions[("layers", 2, "units")] == (13, 5)
    assert spec.positions[("layers", 2)] == (12, 5)
    assert spec.positions[("input", "shape", 0)] == (4, 11)
    assert spec.positions[("train", "optimizer", "lr")] == (22, 31)


def test_where_walks_up_to_nearest_written_node(spec):
    assert spec.where(("layers", 2, "units")) == (13, 12)
    assert spec.where(("train", "optimizer", "beta1")) == spec.positions[("train", "optimizer")]
    assert spec.where(("layers", 2, "activation")) == (12, 5)
    assert spec.where(("nothing", "here")) == (1, 1)


def test_diag_helper(spec):
    diagnostic = spec.diag(("layers", 2, "units"), "10 units but 3 labels")
    assert diagnostic == Diagnostic("spec.yaml", 13, 12, "layers[2].units", "10 units but 3 labels")
    assert diagnostic.render() == "spec.yaml:13:12: layers[2].units: 10 units but 3 labels"


def test_render_path():
    assert render_path(("layers", 2, "units")) == "layers[2].units"
    assert render_path(("train", "optimizer", "lr")) == "train.optimizer.lr"
    assert render_path(("input", "shape", 0)) == "input.shape[0]"
    assert render_path(()) == ""


def test_overrides_applied_before_validation():
    spec = load_spec_text(VALID_SPEC, overrides=["layers.2.units=128", "train.epochs=5",
                                                 "train.optimizer.type=sgd",
                                                 "train.schedule.type=cosine",
                                                 "input.shape=[8, 8]", "description=hi there"])
    data = spec.data
    assert data["layers"][2]["units"] == 128
    assert data["train"]["epochs"] == 5
    assert data["train"]["optimizer"] == {**data["train"]["optimizer"], "type": "sgd", "lr": 0.001}
    assert data["train"]["schedule"]["type"] == "cosine"
    assert data["input"]["shape"] == [8, 8]
    assert data["description"] == "hi there"
    assert spec.where(("layers", 2, "units")) == (13, 12)


def test_override_creates_missing_mappings():
    data = load_spec_text(VALID_SPEC, overrides=["train.early_stopping.patience=2"]).data
    assert data["train"]["early_stopping"]["patience"] == 2
    assert data["train"]["early_stopping"]["monitor"] == "val_loss"


def test_override_kind_changes_kind_defaults():
    data = load_spec_text(VALID_SPEC, overrides=["task.kind=regression"]).data
    assert data["task"]["loss"] == "mse"


def test_load_spec_from_file(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text(VALID_SPEC)
    spec = load_spec(path, ["train.epochs=3"])
    assert spec.file == str(path)
    assert spec.data["train"]["epochs"] == 3


def test_schema_file():
    assert schema_path().name == "dlc.schema.json"
    assert schema_path().is_file()
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _objects(node, where="#"):
    if isinstance(node, dict):
        if "properties" in node:
            yield where, node
        for key, value in node.items():
            yield from _objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{where}/{i}")


OPEN_BY_DESIGN = {  # maps whose keys are the user's: block names and block parameters
    "#/$defs/block", "#/properties/blocks", "#/properties/blocks/additionalProperties/properties/params"}


def test_schema_describes_every_property_and_closes_every_object():
    for where, node in _objects(schema()):
        if "/if" in where or "/then" in where or where == "#/$defs/layer":
            continue  # the layer dispatcher, per-type refinements (their object is closed)
        if where in OPEN_BY_DESIGN:
            assert node.get("description"), where
            continue
        assert node.get("additionalProperties") is False, where
        for key, prop in node["properties"].items():
            if "$ref" in prop:  # shared: task fields in task: and outputs:, layerCommon's keys
                pointer, prop = prop["$ref"], schema()
                for part in pointer.removeprefix("#/").split("/"):
                    prop = prop[part]
            assert prop.get("description"), f"{where}/properties/{key}"


def test_schema_layer_types_each_have_a_branch():
    layer = schema()["$defs"]["layer"]
    branched = []
    for branch in layer["allOf"]:
        cond = branch["if"]["properties"]["type"]
        branched += [cond["const"]] if "const" in cond else cond["enum"]
    assert sorted(branched) == sorted(layer["properties"]["type"]["enum"])


def test_import_does_not_pull_numpy_or_onnx():
    code = ("import sys, dlc.model.spec; dlc.model.spec.load_spec_text(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'onnx', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code, VALID_SPEC],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
