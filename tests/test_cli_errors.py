"""Every broken spec of the shared table through the real CLI: message, line, exit code 2,
never a traceback."""

from __future__ import annotations

import pytest
from broken_specs import BROKEN_OVERRIDES, BROKEN_SPECS
from conftest import SPECS, run_dlc


@pytest.mark.parametrize("case_id,text,line,substring", BROKEN_SPECS, ids=[c[0] for c in BROKEN_SPECS])
def test_validate_reports_broken_spec(cli, tmp_path, case_id, text, line, substring):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    r = cli("validate", path)
    assert r.code == 2, r
    assert "Traceback" not in r.err
    assert f"spec.yaml:{line}:" in r.err, r
    assert substring in r.err, r


@pytest.mark.parametrize("case_id,text,overrides,line,substring", BROKEN_OVERRIDES,
                         ids=[c[0] for c in BROKEN_OVERRIDES])
def test_compile_reports_broken_override(cli, tmp_path, case_id, text, overrides, line, substring):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    args = [a for ov in overrides for a in ("--set", ov)]
    r = cli("compile", path, "-o", tmp_path / "m.onnx", *args)
    assert r.code == 2, r
    assert substring in r.err, r
    assert not (tmp_path / "m.onnx").exists()


SEMANTIC = [  # (id, layers/task text replacing the digits MLP's, line, message)
    ("softmax-regression",
     "layers:\n  - {type: dense, units: 8}\n  - {type: softmax}\ntask: {kind: regression}\n", 6,
     "softmax as the output of a regression task"),
    ("dense-after-reshape",
     "layers:\n  - {type: reshape, shape: [4, 4, 4]}\n  - {type: dense, units: 3}\n"
     "task: {kind: classification}\n", 6, "dense takes (features,) or (steps, features), got "
     "shape [4, 4, 4]"),
    ("bad-reshape", "layers:\n  - {type: reshape, shape: [7, 9]}\n  - {type: flatten}\n"
     "task: {kind: classification}\n", 5, "cannot reshape [64] (64 values) to [7, 9]"),
    ("binary-two-units", "layers:\n  - {type: dense, units: 2}\ntask: {kind: binary}\n", 5,
     "a binary task needs 1 output unit, got 2"),
    ("loss-kind", "layers:\n  - {type: dense, units: 1}\ntask: {kind: regression, loss: "
     "cross_entropy}\n", 6, "loss 'cross_entropy' does not fit a regression task"),
    ("labels-count", "layers:\n  - {type: dense, units: 3}\ntask: {kind: classification, "
     "labels: [a, b]}\n", 6, "2 labels for 3 output units"),
    ("metric-kind", "layers:\n  - {type: dense, units: 1}\ntask: {kind: regression, metrics: "
     "[accuracy]}\n", 6, "metric 'accuracy' does not fit a regression task"),
    ("monitor-not-reported", "layers:\n  - {type: dense, units: 3}\ntask: {kind: classification}"
     "\ntrain: {early_stopping: {monitor: val_f1}}\n", 7,
     "'val_f1' is not reported; training reports val_loss, val_accuracy"),
    ("output-unknown-layer", "layers:\n  - {type: dense, name: out, units: 3}\noutputs:\n"
     "  digit: {kind: classification, layer: outt}\n", 7,
     "outputs.digit.layer: unknown layer 'outt'; did you mean 'out'?"),
]


@pytest.mark.parametrize("case_id,body,line,message", SEMANTIC, ids=[c[0] for c in SEMANTIC])
def test_semantic_errors(cli, tmp_path, case_id, body, line, message):
    path = tmp_path / "spec.yaml"
    path.write_text("dlc: 1\nname: t\ninput: {shape: [64]}\n" + body)
    r = cli("validate", path)
    assert r.code == 2, r
    assert f"spec.yaml:{line}:" in r.err and message in r.err, r


def test_all_errors_of_a_file_at_once(cli, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("dlc: 1\nname: t\ninput: {shape: [64]}\nlayers:\n  - {type: dense, unit: 3}\n"
                    "  - {type: rellu}\ntask: {kind: classification, los: mse}\n")
    r = cli("validate", path)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 3, r
    assert "did you mean 'units'" in r.err and "did you mean 'relu'" in r.err
    assert "did you mean 'loss'" in r.err


def test_validate_many_files(cli, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text((SPECS / "iris.yaml").read_text())
    bad.write_text("dlc: 2\n")
    r = cli("validate", good, bad)
    assert r.code == 2
    assert "good.yaml: ok" in r.out and "bad.yaml:1:" in r.err


@pytest.mark.parametrize("text,message", [
    ("a: !!python/object/apply:os.system ['echo pwned']\n", "tags are not allowed"),
    ("", "the file is empty"),
    ("dlc: 1\ndlc: 1\n", "duplicate key 'dlc'"),
])
def test_subprocess_no_traceback(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    r = run_dlc("validate", path)
    assert r.code == 2 and message in r.err and "Traceback" not in r.err, r


def test_missing_spec_file(cli, tmp_path):
    r = cli("validate", tmp_path / "nope.yaml")
    assert r.code == 1 and "spec file not found" in r.err, r


def test_unknown_device_is_a_usage_error(cli, tmp_path):
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "--device", "tpu")
    assert r.code == 2 and "device" in r.err and "Traceback" not in r.err, r


def test_errors_with_line_breaks_in_file_content_stay_one_line(cli, tmp_path):
    (tmp_path / "d.csv").write_text('a,b,"ki\nnd"\n1,2,x\n3,4,y\n')
    spec = tmp_path / "s.yaml"
    spec.write_text("dlc: 1\nname: t\ninput: {shape: [2]}\nlayers:\n  - {type: dense, units: 2}\n"
                    "task: {kind: classification}\ndata: {source: csv:d.csv, target: kind, "
                    "split: {val: 0, test: 0}}\n")
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "\\n" in r.err, r


@pytest.mark.parametrize("train,line,message", [
    ("{epochs: 5, prune: {sparsity: 0.5, end_epoch: 9}}", 7, "end_epoch 9 is after the last "
     "epoch"),
    ("{epochs: 5, optimizer: {type: adam, lr_scale: {fcc: 0.1}}}", 7, "'fcc' selects no "
     "trainable parameter"),
    ("{epochs: 5, distill: {teacher: nothere.onnx}}", 0, "nothere.onnx"),
    ("{epochs: 5, init_from: nothere.onnx}", 0, "train.init_from:"),
])
def test_validate_checks_training_options_without_data(cli, tmp_path, train, line, message):
    """What `dlc train` would refuse before loading data, `dlc validate` refuses too."""
    path = tmp_path / "spec.yaml"
    path.write_text("dlc: 1\nname: t\ninput: {shape: [4]}\nlayers:\n"
                    "  - {type: dense, name: fc, units: 3}\ntask: {kind: classification}\n"
                    f"train: {train}\n")
    r = cli("validate", path)
    assert r.code in (1, 2) and message in r.err and "Traceback" not in r.err, r
    assert not line or f"spec.yaml:{line}:" in r.err, r
