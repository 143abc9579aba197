"""`dlc quantize` on `inputs:` models (a float input and a categorical one): calibrated on every
input, compared on the spec's own test split, metadata (category table included) kept."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import SPECS


@pytest.fixture(scope="module")
def penguins(tmp_path_factory):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("penguins") / "run"
    train(load_spec(SPECS / "penguins_wide_deep.yaml", ["train.epochs=20"]), str(out), quiet=True)
    return out / "model.onnx"


@pytest.mark.parametrize("mode,marker", [("dynamic", "MatMulInteger"),
                                         ("static", "QuantizeLinear")])
def test_inputs_model_quantizes_and_predicts(cli, penguins, tmp_path, mode, marker):
    from dlc.runtime.infer import load_model, predict_inputs

    out = tmp_path / f"{mode}.onnx"
    r = cli("quantize", penguins, "-o", out, "--mode", mode, "--calibration", "64")
    assert r.code == 0, r
    assert "metrics on test split of the spec's data (83 samples)" in r.out
    assert "accuracy:" in r.out and "same predicted class:" in r.out
    quantized = onnx.load(out)
    assert marker in {n.op_type for n in quantized.graph.node}
    meta0 = {p.key: p.value for p in onnx.load(penguins).metadata_props}
    meta1 = {p.key: p.value for p in quantized.metadata_props}
    assert json.loads(meta1.pop("dlc.quantized"))["mode"] == mode and meta1 == meta0
    rows = str(SPECS / "data" / "penguins.csv")
    before, after = load_model(penguins), load_model(out)
    x = predict_inputs(before, rows)
    p0, p1 = before.run(x)["probabilities"], after.run(x)["probabilities"]
    change, agree = np.abs(p0 - p1).mean(), ((p0 > 0.5) == (p1 > 0.5)).mean()
    assert change < 0.03 and agree > 0.95, (change, agree)  # int8 rounding, not a new model
    assert cli("predict", out, rows).code == 0


def test_inputs_model_calibrates_on_a_data_option(penguins, tmp_path):
    from dlc.commands.quantize import quantize

    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join((SPECS / "data" / "penguins.csv").read_text().splitlines()[:41]))
    report = quantize(str(penguins), str(tmp_path / "q.onnx"), "static", str(rows),
                      bench_seconds=0.02)
    assert report["calibration"] == 40  # the 40 rows given, timed as a 1024-row batch
    assert report["batch"] == 1024 and set(report["samples_per_s"]) == {"float", "static"}
