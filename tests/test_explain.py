"""`dlc explain`: attributions through dlc's own autodiff, checked against float32 central finite
differences of the shipped model and the completeness of integrated gradients."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import SPECS

from dlc.data import model_inputs
from dlc.commands.attribution import explain, load_explainer
from dlc.runtime.infer import load_model

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("iris") / "run"
    train(load_spec(SPECS / "iris.yaml"), str(out), quiet=True)
    return out / "model.onnx"


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory):
    """digits_cnn compiled with seeded weights (Conv, MaxPool, Gemm; no training needed)."""
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    path.write_bytes(compile_spec(load_spec(SPECS / "digits_cnn.yaml")).SerializeToString())
    return path


def iris_inputs(path):
    m = load_model(path)
    return m, model_inputs(SPECS / "data" / "iris_sample.csv", m.spec, m.features)


def central_differences(model, x, target, steps):
    """d logit_target / d x_j by float32 central differences of the shipped model (ONNX Runtime),
    one step size per flattened feature."""
    f = lambda z: model.run(z)["logits"][np.arange(len(z)), target].astype(np.float64)  # noqa
    flat, fd = x.reshape(len(x), -1), np.zeros(x.reshape(len(x), -1).shape)
    for j, h in enumerate(steps):
        e = np.zeros_like(flat)
        e[:, j] = h
        fd[:, j] = (f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * h)
    return fd.reshape(x.shape)


def fd_tolerance(logits, steps):
    """The logit is evaluated in float32: its rounding error is at most ~64 ulp of the largest
    logit (sums over a few hundred terms), and the central difference divides twice that by 2h.
    A ReLU network is piecewise linear, so away from kinks truncation error is zero; the steps
    (1e-3 of each feature's normalisation scale) are small enough not to cross one here."""
    return 64 * EPS32 * np.abs(logits).max() / np.asarray(steps)


def test_grad_x_input_matches_finite_differences(iris_model):
    model, x = iris_inputs(iris_model)
    meta = {p.key: p.value for p in onnx.load(iris_model).metadata_props}
    steps = 1e-3 * np.asarray(json.loads(meta["dlc.normalize"])["scale"])
    result = explain(load_explainer(iris_model), x, "grad_x_input", baseline="zero")
    attr = result["attributions"]["input"]
    out = model.run(x)
    assert np.array_equal(result["target"], out["class_index"])  # default: predicted class
    np.testing.assert_allclose(result["logit"], out["logits"].max(axis=1), rtol=1e-5)
    fd = central_differences(model, x, result["target"], steps)
    tol = np.abs(x) * fd_tolerance(out["logits"], steps)
    assert np.all(np.abs(attr - x * fd) <= tol), np.abs(attr - x * fd).max()
    assert np.abs(attr).max() > 20 * tol.max()  # 5% off would show


def test_gradient_through_conv_and_maxpool_matches_finite_differences(cnn_model):
    model, ex = load_model(cnn_model), load_explainer(cnn_model)
    x = np.random.default_rng(0).uniform(0, 16, (6, 1, 8, 8)).astype(np.float32)
    result = explain(ex, x, "grad_x_input", baseline="zero")
    attr = result["attributions"]["input"]
    steps = np.full(64, 1e-2)
    fd = central_differences(model, x, result["target"], steps)
    tol = np.abs(x) * fd_tolerance(model.run(x)["logits"], steps)[0]
    err = np.abs(attr - x * fd)
    assert np.all(err <= tol), err.max()
    assert np.abs(attr).max() > 10 * tol.max()


@pytest.mark.parametrize("target,baseline", [(None, "zero"), ("virginica", "zero"),
                                             (None, "mean")])
def test_integrated_gradients_completeness(iris_model, target, baseline):
    _, x = iris_inputs(iris_model)
    ex = load_explainer(iris_model)
    result = explain(ex, x, "integrated_gradients", steps=32, target=target, baseline=baseline)
    total = result["attributions"]["input"].sum(axis=1)
    delta = result["logit"] - result["baseline_logit"]
    assert np.all(np.abs(total - delta) <= 0.03 * np.abs(delta) + 1e-3), (total, delta)
    coarse = explain(ex, x, "integrated_gradients", steps=2, target=target, baseline=baseline)
    fine = explain(ex, x, "integrated_gradients", steps=128, target=target, baseline=baseline)
    gap = lambda r: np.abs(r["attributions"]["input"].sum(axis=1) - delta).sum()  # noqa: E731
    assert gap(fine) <= gap(result) <= gap(coarse) and gap(coarse) > 0


def test_binary_target_zero_negates_the_log_odds():
    from dlc.model.compile import compile_spec
    from dlc.commands.attribution import gradient_model
    from dlc.model.spec import load_spec

    spec = load_spec(SPECS / "breast_cancer.yaml")
    proto = compile_spec(spec)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    model, _, _ = gradient_model(spec.data, None, weights)
    from dlc.runtime.session import make_session

    sess = make_session(model.SerializeToString())
    x = np.random.default_rng(1).normal(size=(5, 30)).astype(np.float32)
    plus = sess.run(None, {"input": x, "weight": np.ones((5, 1), np.float32)})[1]
    minus = sess.run(None, {"input": x, "weight": -np.ones((5, 1), np.float32)})[1]
    np.testing.assert_allclose(minus, -plus, rtol=1e-6)
    assert np.abs(plus).max() > 0


def test_cli_tabular_table_and_targets(cli, iris_model, tmp_path):
    sample = SPECS / "data" / "iris_sample.csv"
    r = cli("explain", iris_model, sample)
    assert r.code == 0, r
    assert "feature" in r.out and "petal_length" in r.out and "sample 4: target" in r.out
    by_name, by_index = tmp_path / "a.csv", tmp_path / "b.csv"
    for target, out in (("virginica", by_name), ("2", by_index)):
        r = cli("explain", iris_model, sample, "--method", "integrated_gradients", "--steps",
                "16", "--target", target, "-o", out)
        assert r.code == 0, r
    assert by_name.read_text() == by_index.read_text()
    rows = by_name.read_text().splitlines()
    assert rows[0] == "sample,target,logit,sepal_length,sepal_width,petal_length,petal_width"
    assert len(rows) == 6 and all(row.split(",")[1] == "virginica" for row in rows[1:])
    r = cli("explain", iris_model, sample, "--target", "rose")
    assert r.code == 2 and "--target rose" in r.err
    r = cli("explain", iris_model, sample, "--method", "shap")
    assert r.code == 2 and "unknown --method 'shap'" in r.err


def test_cli_image_saliency_pngs(cli, cnn_model, tmp_path):
    pytest.importorskip("matplotlib")
    sample = SPECS / "data" / "digits_sample.csv"
    folder = tmp_path / "saliency"
    r = cli("explain", cnn_model, sample, "-o", folder, "--method", "integrated_gradients",
            "--steps", "8")
    assert r.code == 0, r
    rows = len(sample.read_text().strip().splitlines()) - 1
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == rows and r.out.count("wrote ") == rows
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
