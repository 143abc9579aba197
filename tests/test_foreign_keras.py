"""dlc's gradient pass on Keras 3 exports (issue 20): an MLP and a small CNN built with random
weights on Keras' torch backend, exported with `model.export(path, format="onnx")` (which runs
torch.onnx.export: constant folding transposes the conv kernel to OIHW, reshapes its bias and
renames every initialiser). The Keras model is a torch module, so autograd gives the reference:
every initialiser's gradient from dlc equals autograd's on the Keras variable it was folded from
(the same transpose/reshape applied) within 1e-4, and one momentum-SGD step gives the same
weights. Needs keras (and torch); skipped without them (the only tests that need keras)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_foreign_grads import DECAY, LR, MOMENTUM, _dlc_step
from test_vjp_rules import err

from dlc.autodiff.coverage import missing_rules
from dlc.graph.foreign import to_pinned_opset

FOLDS = (lambda v: v, lambda v: v.transpose(3, 2, 0, 1) if v.ndim == 4 else v)  # HWIO -> OIHW


def _keras(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {keras.backend.backend()} backend")
    return keras


def _folded(value: np.ndarray, variables: dict) -> tuple[str, object]:
    """The Keras variable an initialiser holds, and the fold from one to the other."""
    for name, v in variables.items():
        for fold in FOLDS:
            w = fold(v)
            if w.size == value.size and np.array_equal(w.reshape(value.shape), value):
                return name, lambda a, fold=fold: fold(a).reshape(value.shape)
    raise AssertionError(f"no Keras variable matches an initialiser of shape {value.shape}")


def _build(keras, family: str):
    layers = keras.layers
    if family == "mlp":
        model = keras.Sequential([keras.Input((8,)), layers.Dense(16, activation="relu"),
                                  layers.Dense(3)])
    else:
        model = keras.Sequential([keras.Input((8, 8, 1)),
                                  layers.Conv2D(4, 3, activation="relu"),
                                  layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(3)])
    rng = np.random.default_rng(0)
    for v in model.weights:  # random, so no two initialisers are equal (the exporter shares them)
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_keras_export_gradients_and_sgd_step_match_autograd(monkeypatch, tmp_path, family):
    keras = _keras(monkeypatch)
    torch = pytest.importorskip("torch")
    model = _build(keras, family)
    x = np.random.default_rng(1).normal(size=(2, *model.input_shape[1:])).astype(np.float32)
    y = model(torch.from_numpy(x))  # Keras exports only a model that has been called
    path = tmp_path / f"{family}.onnx"
    model.export(str(path), format="onnx")
    exported = to_pinned_opset(onnx.load(path), str(path))
    assert missing_rules(exported) == []
    variables = {v.path: v.value for v in model.trainable_weights}  # torch Parameters
    folds = {t.name: _folded(numpy_helper.to_array(t), {k: p.detach().numpy()
                                                       for k, p in variables.items()})
             for t in exported.graph.initializer}
    assert sorted(v for v, _ in folds.values()) == sorted(variables)  # one each
    r = np.random.default_rng(2).uniform(-1, 1, tuple(y.shape)).astype(np.float32)
    (y * torch.from_numpy(r)).sum().backward()
    torch.optim.SGD(variables.values(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY).step()
    out = _dlc_step(exported, list(folds), {exported.graph.input[0].name: x}, r)
    for name, (var, fold) in folds.items():
        p = variables[var]
        assert np.abs(p.grad.numpy()).max() > 1e-3, var  # a real gradient to compare
        assert err(out[f"g:{name}"], fold(p.grad.numpy())) < 1e-4, (name, var)
        assert err(out[f"w:{name}"], fold(p.detach().numpy())) < 1e-6, (name, var)
