"""`dlc quantize`: int8 models through onnxruntime.quantization keep accuracy, shrink, keep the
dlc metadata (so predict/evaluate work), and the raw test split is recreated exactly."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import SPECS

from dlc.data import load_arrays
from dlc.data._split import apply_norm, split_indices


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("digits") / "run"
    train(load_spec(SPECS / "digits_mlp.yaml"), str(out), quiet=True)
    return out


def raw_test_split(spec: dict):
    """The spec's test split from raw arrays, independently of tools_quantize.denormalize."""
    x, y, _, _ = load_arrays(spec["data"]["source"], spec, SPECS)
    split = spec["data"]["split"]
    _, _, te = split_indices(y, len(x), split["val"], split["test"], True, split["seed"])
    return x[te], y[te]


def accuracy(path, x, y) -> float:
    from dlc.runtime.infer import load_model

    return float((load_model(path).run(x)["class_index"] == y).mean())


@pytest.mark.parametrize("mode,marker", [("dynamic", "MatMulInteger"),
                                         ("static", "QuantizeLinear")])
def test_quantized_digits_keeps_accuracy_and_shrinks(digits_run, tmp_path, mode, marker):
    from dlc.commands.quantize import quantize

    src, out = digits_run / "model.onnx", tmp_path / f"{mode}.onnx"
    report = quantize(str(src), str(out), mode, bench_seconds=0.02)
    assert report["bytes_before"] == src.stat().st_size
    assert report["bytes_after"] == out.stat().st_size < 0.4 * src.stat().st_size
    model = onnx.load(out)
    assert marker in {n.op_type for n in model.graph.node}
    spec = json.loads({p.key: p.value for p in model.metadata_props}["dlc.spec_resolved"])
    x, y = raw_test_split(spec)
    before, after = accuracy(src, x, y), accuracy(out, x, y)
    assert before >= 0.97 and abs(after - before) <= 0.01, (before, after)
    m = report["metrics"]
    assert m["samples"] == len(y)
    assert m["before"]["accuracy"] == pytest.approx(before) and \
        m["after"]["accuracy"] == pytest.approx(after)
    # timed on the same 1024-row batch: the float model and the one int8 model of this mode
    assert report["batch"] == 1024 and report["chosen_by"] == mode
    assert report["samples_per_s"] == {"float": report["samples_per_s_before"],
                                       mode: report["samples_per_s_after"]}


def test_metadata_is_kept_and_cli_predicts(cli, digits_run, tmp_path):
    src, out = digits_run / "model.onnx", tmp_path / "int8.onnx"
    r = cli("quantize", src, "-o", out, "--mode", "static", "--calibration", "64")
    assert r.code == 0, r
    sizes = f"size: {src.stat().st_size:,} -> {out.stat().st_size:,} bytes"
    assert sizes in r.out and "samples/s" in r.out and "accuracy:" in r.out
    meta0 = {p.key: p.value for p in onnx.load(src).metadata_props}
    meta1 = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta1.pop("dlc.quantized")) == {"mode": "static", "calibration": 64}
    assert meta1 == meta0
    p0 = cli("predict", src, SPECS / "data" / "digits_sample.csv")
    p1 = cli("predict", out, SPECS / "data" / "digits_sample.csv")
    assert p1.code == 0, p1
    labels = lambda text: [row.split(",")[1] for row in text.splitlines()[1:]]  # noqa: E731
    assert labels(p1.out) == labels(p0.out)
    assert cli("evaluate", out, "--data", "builtin:digits").code == 0


def test_calibration_from_data_option(digits_run, tmp_path):
    from dlc.commands.quantize import quantize

    out = tmp_path / "int8.onnx"
    report = quantize(str(digits_run / "model.onnx"), str(out), "static",
                      f"csv:{SPECS / 'data' / 'digits_sample.csv'}", bench_seconds=0.02)
    rows = len((SPECS / "data" / "digits_sample.csv").read_text().strip().splitlines()) - 1
    assert report["calibration"] == rows
    assert report["metrics"]["data"].startswith("test split")


def test_denormalize_inverts_the_dataset_normalisation():
    from dlc.commands.quantize import denormalize

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (50, 1, 4, 4)).astype(np.float32)
    norm = {"kind": "standard", "offset": rng.normal(size=16).tolist(),
            "scale": rng.uniform(0.5, 2, 16).tolist()}
    np.testing.assert_allclose(denormalize(apply_norm(x, norm), norm), x, rtol=1e-5, atol=1e-5)
    assert denormalize(x, None) is x


def test_calibration_set_is_seeded_and_bounded():
    from dlc.commands.quantize import calibration_set

    x = np.arange(100, dtype=np.float32)[:, None]
    a, b = calibration_set(x, 10), calibration_set(x, 10)
    assert a.shape == (10, 1) and np.array_equal(a, b) and len(np.unique(a)) == 10
    assert len(calibration_set(x, 1000)) == 100


def test_errors_are_one_line(cli, digits_run, tmp_path):
    r = cli("quantize", digits_run / "model.onnx", "-o", tmp_path / "q.onnx", "--mode", "fp16")
    assert r.code == 2 and "unknown --mode 'fp16'" in r.err
    r = cli("quantize", tmp_path / "none.onnx", "-o", tmp_path / "q.onnx")
    assert r.code == 1 and "model file not found" in r.err
    r = cli("quantize", digits_run / "model.onnx", "-o", tmp_path / "no" / "q.onnx")
    assert r.code == 1 and "does not exist" in r.err
