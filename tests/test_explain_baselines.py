"""`dlc explain` baselines (the training mean by default, zero when asked) and `inputs:` models
(float columns and embedded categorical columns, attributed per named column)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SPECS, trained_model

from dlc.commands.attribution import baselines, explain, load_explainer
from dlc.runtime.infer import load_model, predict_inputs

IRIS_SAMPLE = SPECS / "data" / "iris_sample.csv"


@pytest.fixture(scope="module")
def iris_minmax(tmp_path_factory):
    return trained_model(tmp_path_factory, "iris.yaml", "train.epochs=30")  # normalize: minmax


@pytest.fixture(scope="module")
def iris_standard(tmp_path_factory):
    return trained_model(tmp_path_factory, "iris.yaml", "train.epochs=30", "data.normalize=standard")


@pytest.fixture(scope="module")
def penguins(tmp_path_factory):
    return trained_model(tmp_path_factory, "penguins_wide_deep.yaml", "train.epochs=5")


def test_mean_baseline_is_the_training_mean_in_raw_units(iris_minmax, iris_standard):
    """A standard normalisation's offset (carried by the model) and the mean of the training
    split recomputed from the data (minmax models) are the same numbers: the raw-unit means of
    iris' training split, not zero and not normalised values."""
    from dlc.data import load_dataset
    from dlc.model.spec import load_spec

    carried = baselines(load_explainer(iris_standard), "mean")["input"]
    recomputed = baselines(load_explainer(iris_minmax), "mean")["input"]
    spec = load_spec(SPECS / "iris.yaml", ["data.normalize=none"])
    raw_train = load_dataset(spec.data, SPECS).train.x  # the same seeded split, raw
    np.testing.assert_allclose(carried, raw_train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(recomputed, raw_train.mean(axis=0), rtol=1e-5)
    assert 5.0 < carried[0] < 6.5  # sepal length in cm
    assert not baselines(load_explainer(iris_standard), "zero")["input"].any()


@pytest.mark.parametrize("method", ["grad_x_input", "integrated_gradients"])
def test_a_feature_at_its_mean_gets_no_attribution(iris_minmax, method):
    """Against the training mean, a feature that sits at its mean contributes nothing, however
    large its raw value; against zero it does. f(baseline) is the model's own output at the
    mean sample."""
    ex = load_explainer(iris_minmax)
    model = load_model(iris_minmax)
    x = predict_inputs(model, str(IRIS_SAMPLE))
    mean = baselines(ex, "mean")["input"]
    x[:, 0] = mean[0]
    result = explain(ex, x, method, steps=16)
    assert np.all(result["attributions"]["input"][:, 0] == 0)
    assert np.abs(result["attributions"]["input"][:, 1:]).max() > 0.01
    zero = explain(ex, x, method, steps=16, baseline="zero")
    assert np.abs(zero["attributions"]["input"][:, 0]).min() > 1e-3
    logits = model.run(mean[None].astype(np.float32))["logits"][0]
    np.testing.assert_allclose(result["baseline_logit"], logits[result["target"]], rtol=1e-5)


def test_inputs_model_attributes_every_named_column(penguins):
    """Numeric and categorical inputs: one attribution per column, named; integrated gradients
    add up to f(x) - f(baseline) over all columns (the categorical ones through their
    embeddings) for both baselines, up to a quadrature error that shrinks with the steps; and
    grad_x_input of a numeric column is (x - mean) times
    the finite-difference slope of the shipped model's logit."""
    ex = load_explainer(penguins)
    model = load_model(penguins)
    rows = SPECS / "data" / "penguins.csv"
    x = predict_inputs(model, str(rows))
    x = x[:40]  # Columns: every input's first 40 rows
    assert set(ex.shapes) == {"numeric", "categories"} and len(ex.lookups) == 1
    for baseline in ("mean", "zero"):
        gaps = []
        for steps in (64, 512):  # ReLU kinks: the midpoint rule's error falls as 1/steps
            result = explain(ex, x, "integrated_gradients", steps=steps, baseline=baseline)
            attr = result["attributions"]
            assert attr["numeric"].shape == (40, 4) and attr["categories"].shape == (40, 2)
            total = attr["numeric"].sum(axis=1) + attr["categories"].sum(axis=1)
            delta = result["logit"] - result["baseline_logit"]
            gaps.append(np.abs(total - delta).sum())
        assert gaps[1] < gaps[0] / 4 and gaps[1] <= 0.02 * np.abs(delta).sum(), (gaps, baseline)
        assert np.abs(attr["categories"]).max() > 1e-3
    result = explain(ex, x, "grad_x_input")
    sign = np.where(result["target"] == 1, 1.0, -1.0)
    h = 1e-3 * np.asarray(ex.norm["numeric"]["scale"])  # small enough to cross no ReLU kink
    mean = baselines(ex, "mean")["numeric"]
    for j in range(4):
        up, down = x[:], x[:]
        up["numeric"], down["numeric"] = x["numeric"].copy(), x["numeric"].copy()
        up["numeric"][:, j] += h[j]
        down["numeric"][:, j] -= h[j]
        slope = (model.run(up)["logits"][:, 0] - model.run(down)["logits"][:, 0]) / (2 * h[j])
        want = (x["numeric"][:, j] - mean[j]) * slope * sign
        np.testing.assert_allclose(result["attributions"]["numeric"][:, j], want, rtol=2e-2,
                                   atol=2e-3)


def test_cli_inputs_model_and_baselines(cli, penguins, iris_minmax, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join((SPECS / "data" / "penguins.csv").read_text().splitlines()[:6]))
    out = tmp_path / "attr.csv"
    r = cli("explain", penguins, rows, "--method", "integrated_gradients", "-o", out)
    assert r.code == 0, r
    assert "against a baseline of the training mean" in r.out
    for column in ("species", "island", "bill_length_mm", "body_mass_g"):
        assert column in r.out
    header = out.read_text().splitlines()[0].split(",")
    assert header[3:] == ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g",
                          "species", "island"]
    r = cli("explain", iris_minmax, IRIS_SAMPLE, "--baseline", "zero")
    assert r.code == 0 and "against a baseline of zero" in r.out
    r = cli("explain", iris_minmax, IRIS_SAMPLE, "--baseline", "median")
    assert r.code == 2 and "unknown --baseline 'median'" in r.err


def test_mean_baseline_without_the_data_says_what_to_do(cli, tmp_path):
    """A minmax model whose training data is gone: one line pointing at --baseline zero."""
    data = tmp_path / "iris.csv"
    data.write_text((SPECS / "data" / "iris_sample.csv").read_text() * 4)
    model = tmp_path / "m.onnx"
    r = cli("compile", SPECS / "iris.yaml", "-o", model, "--set", f"data.source=csv:{data}")
    assert r.code == 0, r
    data.unlink()
    r = cli("explain", model, IRIS_SAMPLE)
    assert r.code == 1 and "use --baseline zero" in r.err and len(r.err.splitlines()) == 1
    assert cli("explain", model, IRIS_SAMPLE, "--baseline", "zero").code == 0
