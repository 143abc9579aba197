"""The train loop's own work around onnxruntime (issue 14): parameters and optimizer state in
onnxruntime-owned buffers bound once, dropout noise drawn into a kept buffer, train metrics summed
per batch instead of keeping every batch's logits, and samples/s of whole steps beside the
run-only figure."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from conftest import SPECS, straight_and_resumed

from dlc.model import metrics as M


def _trainer(spec_path, *overrides):
    from dlc.data import load_dataset
    from dlc.model.network import build_network
    from dlc.train.trainer import Trainer
    from dlc.model.spec import load_spec

    spec = load_spec(spec_path, list(overrides))
    return Trainer(build_network(spec), load_dataset(spec.data, spec_path.parent), seed=0,
                   threads=1)


def _traced_epoch(trainer) -> tuple[dict, int]:
    """(the epoch's metrics row, the most bytes Python allocated during it), after one untraced
    epoch that gets first-run allocations out of the way."""
    trainer.train_epoch()
    tracemalloc.start()
    try:
        row = trainer.train_epoch()
        return row, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind, shape, classes", [("classification", (301,), 7),
                                                  ("binary", (301,), 2),
                                                  ("classification", (301, 5), 4)],
                         ids=["classes", "binary", "per-token"])
def test_running_classification_metrics_equal_the_whole_split(kind, shape, classes):
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, shape)
    logits = rng.normal(size=(*shape, 1 if kind == "binary" else classes)).astype(np.float32)
    running = M.Running(kind)
    for i in range(0, len(y), 64):
        running.add(y[i:i + 64], logits[i:i + 64])
    assert running.result() == M.compute(kind, y, logits)


@pytest.mark.parametrize("loc", [0.0, 1e4], ids=["centred", "far-from-0"])
def test_running_regression_metrics_equal_the_whole_split(loc):
    """R² from the targets' per-batch moments (no targets kept) equals the two-pass figure over
    the whole split, also where the mean dwarfs the spread."""
    rng = np.random.default_rng(1)
    y = rng.normal(loc, size=(301, 3))
    pred = (y + rng.normal(size=(301, 3))).astype(np.float32)
    running = M.Running("regression")
    for i in range(0, len(y), 64):
        running.add(y[i:i + 64], pred[i:i + 64])
    got, want = running.result(), M.compute("regression", y, pred)
    assert got.keys() == want.keys()
    for k in want:  # the same sums, added batch by batch: equal up to the order of additions
        assert got[k] == pytest.approx(want[k], rel=1e-12), k


def test_train_epoch_keeps_no_batch_logits(tmp_path):
    """An epoch's logits (16,384 samples x 250 classes: 16 MiB) are never held at once: the
    metrics are summed batch by batch (numpy allocations are traced; onnxruntime's are not)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.normal(size=(16384, 8)).astype(np.float32),
             y=rng.integers(0, 250, 16384))
    spec = tmp_path / "wide.yaml"
    spec.write_text("dlc: 1\nname: wide\ninput: {shape: [8]}\n"
                    "layers: [{type: dense, name: out, units: 250}]\n"
                    "task: {kind: classification, loss: cross_entropy, metrics: [accuracy]}\n"
                    "data: {source: npz:wide.npz, split: {val: 0.0, test: 0.0, stratify: false},"
                    " normalize: none}\n"
                    "train: {epochs: 1, batch_size: 256, optimizer: {type: sgd, lr: 0.01}}\n")
    row, peak = _traced_epoch(_trainer(spec))
    assert 0.0 <= row["train_accuracy"] <= 1.0
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB traced during one epoch"


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_train_epoch_holds_one_int32_order(tmp_path, kind):
    """A big table's epoch holds one int32 permutation (1 MiB for 262,144 samples) and no
    concatenation of its batches' indices or targets (int64: 2 MiB each; R² from the targets'
    per-batch moments)."""
    rng = np.random.default_rng(0)
    n = 2**18
    y = rng.integers(0, 3, n) if kind == "classification" else rng.normal(size=(n, 1))
    np.savez(tmp_path / "big.npz", x=rng.normal(size=(n, 2)).astype(np.float32), y=y)
    head = "{type: dense, name: out, units: 3}" if kind == "classification" else \
        "{type: dense, name: out, units: 1}"
    spec = tmp_path / "big.yaml"
    spec.write_text(f"dlc: 1\nname: big\ninput: {{shape: [2]}}\nlayers: [{head}]\n"
                    f"task: {{kind: {kind}}}\n"
                    "data: {source: npz:big.npz, split: {val: 0.0, test: 0.0, stratify: false},"
                    " normalize: none}\n"
                    "train: {epochs: 1, batch_size: 4096, optimizer: {type: sgd, lr: 0.01}}\n")
    _, peak = _traced_epoch(_trainer(spec))
    assert peak < 1.5 * 2**20, f"{peak / 2**20:.2f} MiB traced during one epoch"


def test_cpu_training_binds_buffers_onnxruntime_owns():
    """Both ping-pong sets are separate onnxruntime allocations (never one buffer as input and
    output, never a view of the caller's arrays), and a step's results are host copies."""
    from dlc.runtime.stepper import BoundStepper

    t = _trainer(SPECS / "iris.yaml")
    assert type(t.stepper) is BoundStepper
    a, b = t.stepper.sets
    pointers = {v.data_ptr() for s in (a, b) for v in s.values()}
    assert len(pointers) == 2 * len(a)
    before = t.stepper.get("params")
    before_copy = before.copy()
    t.train_epoch()
    np.testing.assert_array_equal(before, before_copy)  # get() handed out a copy
    assert not np.array_equal(t.stepper.get("params"), before_copy)


def test_dropout_noise_is_one_draw_equal_to_one_per_tensor():
    """The noise of a step comes from one draw into a kept buffer, number for number what one
    draw per noise tensor gives (so resumed runs and old checkpoints keep their masks)."""
    t = _trainer(SPECS / "digits_mlp.yaml",
                 "layers=[{type: dense, name: fc1, units: 32, activation: relu}, "
                 "{type: dropout, name: d1, rate: 0.3}, {type: dense, name: fc2, units: 16}, "
                 "{type: dropout, name: d2, rate: 0.2}, {type: dense, name: out, units: 10}]")
    assert [name for name, _ in t.step_graph.noise] == ["d1.noise", "d2.noise"]
    for seed, n in enumerate((64, 13, 64)):  # the buffer of each batch size is kept and reused
        t.state.rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        got = t._dropout_noise(n)
        for name, shape in t.step_graph.noise:
            np.testing.assert_array_equal(got[name], twin.random((n, *shape), dtype=np.float32))
        assert t.state.rng.bit_generator.state == twin.bit_generator.state


def test_dropout_run_resumes_exactly(cli, tmp_path, monkeypatch):
    spec = tmp_path / "drop.yaml"
    spec.write_text((SPECS / "digits_mlp.yaml").read_text().replace(
        "  - {type: dense, name: fc2", "  - {type: dropout, name: drop, rate: 0.3}\n"
        "  - {type: dense, name: fc2"))
    args = ["-q", "--epochs", "4", "--set", "train.batch_size=200"]
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path, spec, args, 3)
    assert (straight / "metrics.csv").read_text() == (broken / "metrics.csv").read_text()


def test_summary_reports_whole_steps_and_run_only_speed(cli, tmp_path):
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "-q", "--epochs", "3")
    assert r.code == 0, r
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # the whole step (gathering, feeds, run, bookkeeping) takes longer than its run alone
    assert 0 < summary["train_samples_per_s"] < summary["train_run_samples_per_s"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "samples_per_s" not in header  # timings stay out: equal seeds give equal files


def test_eval_session_is_made_only_when_evaluating():
    t = _trainer(SPECS / "iris.yaml")
    t.train_epoch()
    assert "eval_sess" not in vars(t)  # training alone never builds it
    row = t.evaluate(t.data.test, "test")
    assert "eval_sess" in vars(t) and 0.0 <= row["test_accuracy"] <= 1.0


def test_update_copies_no_parameter_and_no_state(tmp_path):
    """The flat parameter vector reaches the layers through one Split (not a Slice per
    parameter), and no graph output is an Identity copy once onnxruntime has optimised the
    graph (the new Adam moments and the logits were: each also has another reader). Adam is 12
    passes over the flat vector: 3 per moment, one for g*g, 5 for the step."""
    import collections

    import onnx
    import onnxruntime as ort

    from dlc.model.network import build_network
    from dlc.model.spec import load_spec
    from dlc.train.step import build_train_step

    step = build_train_step(build_network(load_spec(SPECS / "digits_mlp.yaml")))
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(step.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    nodes = onnx.load(opts.optimized_model_filepath).graph.node
    ops = collections.Counter(n.op_type for n in nodes)
    assert (ops["Split"], ops["Slice"], ops["Identity"]) == (1, 0, 0)
    flat = {f"{o}.new" for o in ("params", "state.m", "state.v")}  # what a full pass writes
    produced = {o for n in nodes for o in n.output}
    assert flat <= produced
    passes = [n.op_type for n in step.model.graph.node  # per-step scalars: update/optimizer/
              if n.name.startswith("update/") and not n.name.startswith("update/optimizer/")]
    assert len(passes) == 12, passes
