"""Several outputs (`outputs:`): the weighted multi-task loss and its gradients (against torch
autograd, and by linearity without torch), the spec checks, and train / evaluate / predict of a
multi-task model through the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SPECS
from stepio import named, pack_feeds

from dlc.errors import SpecError
from dlc.model.network import build_network
from dlc.runtime.infer import load_model
from dlc.model.spec import load_spec_text
from dlc.train.step import build_eval_step, build_train_step

LR = 1024.0  # the gradient read-back lr of test_train_step: g = (p - new) / lr

# A trunk with three heads: 3 classes (label smoothing), binary, 2 regression values (huber).
MULTI = """\
dlc: 1
name: multi
input: {shape: [5]}
layers:
  - {type: dense, name: trunk, units: 6, activation: tanh}
  - {type: dense, name: cls, units: 3, inputs: [trunk]}
  - {type: dense, name: bin, units: 1, inputs: [trunk], activation: sigmoid}
  - {type: dense, name: reg, units: 2, inputs: [trunk]}
outputs:
  kind3: {kind: classification, layer: cls, label_smoothing: 0.1, weight: %s}
  yes_no: {kind: binary, layer: bin, weight: %s}
  amount: {kind: regression, layer: reg, loss: huber, huber_delta: 0.5, weight: %s}
train: {optimizer: {type: sgd, lr: 0.1}}
"""


def multi_net(weights=(1.0, 0.3, 2.0)):
    return build_network(load_spec_text(MULTI % weights, "multi.yaml"))


def batch(n=7, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = {"kind3": rng.integers(0, 3, size=n).astype(np.int64),
         "yes_no": rng.integers(0, 2, size=(n, 1)).astype(np.float32),
         "amount": rng.normal(size=(n, 2)).astype(np.float32)}
    return x, y


def run_step(net, values, x, y):
    step = build_train_step(net)
    feeds = {"x": x, **{f"y.{k}": v for k, v in y.items()}, "lr": np.array(LR, np.float32),
             "step": np.array(1.0, np.float32), **pack_feeds(step, values)}
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    out = named(step, out)
    grads = {k: (v.astype(np.float64) - out[f"{k}.new"].astype(np.float64)) / LR
             for k, v in values.items()}
    return out, grads


def test_the_train_step_has_one_target_logits_and_loss_per_output():
    net = multi_net()
    assert [(h.name, h.node, h.shape, h.weight) for h in net.heads] == [
        ("kind3", "cls", (3,), 1.0), ("yes_no", "bin", (1,), 0.3), ("amount", "reg", (2,), 2.0)]
    step = build_train_step(net)
    inputs = {i.name for i in step.model.graph.input}
    outputs = {o.name for o in step.model.graph.output}
    assert {"y.kind3", "y.yes_no", "y.amount"} <= inputs and "y" not in inputs
    assert {"loss", "loss.kind3", "loss.yes_no", "loss.amount", "logits.kind3", "logits.yes_no",
            "logits.amount"} <= outputs
    eval_outputs = {o.name for o in build_eval_step(net).model.graph.output}
    assert {"loss", "loss.amount", "logits.amount"} <= eval_outputs


def test_loss_is_the_weighted_sum_and_gradients_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = multi_net()
    values = net.init_params(0)
    x, y = batch()
    out, grads = run_step(net, values, x, y)

    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
    h = torch.tanh(torch.from_numpy(x.astype(np.float64)) @ p["trunk.weight"] + p["trunk.bias"])
    logits = {name: h @ p[f"{layer}.weight"] + p[f"{layer}.bias"]
              for name, layer in (("kind3", "cls"), ("yes_no", "bin"), ("amount", "reg"))}
    losses = {
        "kind3": F.cross_entropy(logits["kind3"], torch.from_numpy(y["kind3"]),
                                 label_smoothing=0.1),
        "yes_no": F.binary_cross_entropy_with_logits(
            logits["yes_no"], torch.from_numpy(y["yes_no"].astype(np.float64))),
        "amount": F.huber_loss(logits["amount"], torch.from_numpy(y["amount"].astype(np.float64)),
                               delta=0.5)}
    total = losses["kind3"] + 0.3 * losses["yes_no"] + 2.0 * losses["amount"]
    total.backward()
    np.testing.assert_allclose(out["loss"], total.item(), rtol=1e-5)
    for name, loss in losses.items():
        np.testing.assert_allclose(out[f"loss.{name}"], loss.item(), rtol=1e-5)
        np.testing.assert_allclose(out[f"logits.{name}"], logits[name].detach().numpy(),
                                   rtol=1e-5, atol=1e-6)  # the sigmoid is stripped for the loss
    for k, param in p.items():
        scale = float(param.grad.abs().max())
        assert scale > 0, k
        assert np.abs(grads[k] - param.grad.numpy()).max() / scale < 1e-4, k


def test_gradient_is_linear_in_the_output_weights():
    """Without torch: the gradient with weights w equals sum_h w_h * (the gradient with only
    output h at weight 1), and an output at weight 0 sends its head no gradient at all."""
    x, y = batch(seed=3)
    values = multi_net().init_params(0)
    weights = (1.0, 0.3, 2.0)
    _, mixed = run_step(multi_net(weights), values, x, y)
    alone = [run_step(multi_net(tuple(float(i == j) for j in range(3))), values, x, y)[1]
             for i in range(3)]
    for k in values:
        expected = sum(w * g[k] for w, g in zip(weights, alone))
        scale = max(np.abs(expected).max(), 1e-12)
        assert np.abs(mixed[k] - expected).max() / scale < 1e-4, k
    assert not alone[0]["bin.weight"].any() and not alone[0]["reg.bias"].any()
    assert np.abs(alone[0]["cls.weight"]).max() > 0 and np.abs(alone[0]["trunk.weight"]).max() > 0


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        build_network(load_spec_text(text, "m.yaml"))
    return [d.render() for d in e.value.diagnostics]


BASE = """\
dlc: 1
name: m
input: {shape: [4]}
layers:
  - {type: dense, name: trunk, units: 8, activation: relu}
  - {type: dense, name: a, units: 3, inputs: [trunk]}
  - {type: dense, name: b, units: 1, inputs: [trunk]}
"""


@pytest.mark.parametrize("tail,line,message", [
    ("outputs:\n  a: {kind: classification}\n  c: {kind: regression, layer: bb}\n", 10,
     "outputs.c.layer: unknown layer 'bb'; did you mean 'b'?"),
    ("outputs:\n  a: {kind: classification}\n  c: {kind: regression, layer: a}\n", 10,
     "outputs 'a' and 'c' read the same layer"),
    ("outputs:\n  a: {kind: binary}\n  b: {kind: regression}\n", 6,
     "layers[1]: output 'a': a binary task needs 1 output unit, got 3"),
    ("outputs:\n  a: {kind: classification, labels: [x, y]}\n  b: {kind: binary}\n", 9,
     "outputs.a.labels: 2 labels for 3 output units"),
    ("outputs:\n  a: {kind: classification, loss: mse}\n  b: {kind: binary}\n", 9,
     "loss 'mse' does not fit a classification task"),
    ("outputs:\n  a: {kind: classification}\n  b: {kind: regression, class_weights: [1, 2]}\n",
     10, "class weights need a classification or binary task"),
    ("outputs:\n  a: {kind: classification}\n  b: {kind: binary}\n"
     "train: {early_stopping: {monitor: val_b.acuracy}}\n", 11, "schema"),
    ("outputs:\n  a: {kind: classification}\n  b: {kind: binary}\n"
     "train: {early_stopping: {monitor: val_b.f1}}\n", 11,
     "'val_b.f1' is not reported; training reports val_loss, val_a.loss, val_a.accuracy, "
     "val_b.loss, val_b.accuracy"),
    ("outputs:\n  a: {kind: classification}\n  b: {kind: binary}\n"
     "data: {source: 'csv:x.csv', sampling: balanced}\n", 11, "balanced sampling needs one class"),
    ("task: {kind: regression}\noutputs:\n  a: {kind: classification}\n", 1,
     "give exactly one of `task:`"),
])
def test_output_errors_point_into_the_file(tail, line, message):
    if message == "schema":  # a monitor that is not a column name at all: the schema says so
        with pytest.raises(SpecError) as e:
            load_spec_text(BASE + tail, "m.yaml")
        found = [d.render() for d in e.value.diagnostics]
        assert any("m.yaml:11:" in f and "val_<output>.<metric>" in f for f in found), found
        return
    found = errors(BASE + tail)
    assert any(f"m.yaml:{line}:" in f and message in f for f in found), found


def test_softmax_on_an_output_layer_that_other_layers_read_is_refused():
    text = BASE.replace("units: 3, inputs: [trunk]}", "units: 3, inputs: [trunk], "
                        "activation: softmax}") + \
        "  - {type: dense, name: c, units: 1, inputs: [a]}\n" \
        "outputs:\n  a: {kind: classification}\n  c: {kind: regression}\n"
    found = errors(text)
    assert any("m.yaml:6:" in f and "other layers cannot read it" in f for f in found), found


def test_outputs_default_layer_target_and_weight_are_filled_in():
    spec = load_spec_text(BASE + "outputs:\n  a: {kind: classification}\n"
                          "  depth: {kind: regression, layer: b, target: 3}\n", "m.yaml")
    a, depth = spec.data["outputs"]["a"], spec.data["outputs"]["depth"]
    assert (a["layer"], a["target"], a["weight"], a["loss"], a["metrics"]) == \
        ("a", "a", 1.0, "cross_entropy", ["accuracy"])
    assert (depth["layer"], depth["target"], depth["loss"]) == ("b", 3, "mse")


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_multitask_example_trains_evaluates_and_predicts(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", SPECS / "penguins_multitask.yaml", "--out", out, "-q")
    assert r.code == 0, r
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    assert test["species.accuracy"] >= 0.95 and test["bill_depth.r2"] > 0.4, test
    assert test["loss"] == pytest.approx(test["species.loss"] + test["sex.loss"]
                                         + 0.5 * test["bill_depth.loss"], rel=1e-5)
    rows = _csv(out / "metrics.csv")
    assert len(rows) == summary["epochs_run"] and {"val_species.accuracy", "val_sex.loss", "train_bill_depth.mae",
                                "val_loss"} <= set(rows[0])

    data = SPECS / "data" / "penguins.csv"
    r = cli("evaluate", out / "model.onnx", "--data", f"csv:{data}", "-o", tmp_path / "m.json")
    assert r.code == 0, r
    assert "species.accuracy:" in r.out and "bill_depth.r2:" in r.out and "samples: 333" in r.out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"species", "sex", "bill_depth", "samples", "scored"}

    # predict takes raw columns without any target column; one column group per output
    table = _csv(data)
    sample = tmp_path / "in.csv"
    keep = ["island", "bill_length_mm", "flipper_length_mm", "body_mass_g"]
    sample.write_text(",".join(keep) + "\n" + "\n".join(",".join(row[k] for k in keep)
                                                        for row in table[:5]) + "\n")
    r = cli("predict", out / "model.onnx", sample, "-o", tmp_path / "p.csv")
    assert r.code == 0, r
    pred = _csv(tmp_path / "p.csv")
    assert len(pred) == 5 and list(pred[0]) == [
        "species.class_index", "species.label", "species.p_Adelie", "species.p_Chinstrap",
        "species.p_Gentoo", "sex.class_index", "sex.label", "sex.p_male",
        "bill_depth.prediction"]
    assert {row["species.label"] for row in pred} <= {"Adelie", "Chinstrap", "Gentoo"}
    assert all(12 < float(row["bill_depth.prediction"]) < 23 for row in pred)

    r = cli("evaluate", out / "model.onnx", "--data", f"csv:{sample}")
    assert r.code == 1 and "outputs.species.target: column 'species' not in" in r.err, r


SINGLE_INPUT = f"""\
dlc: 1
name: two-heads
input: {{shape: [3]}}
layers:
  - {{type: dense, name: trunk, units: 16, activation: relu}}
  - {{type: dense, name: species, units: 3, inputs: [trunk], activation: softmax}}
  - {{type: dense, name: sex, units: 1, inputs: [trunk]}}
outputs:
  species: {{kind: classification}}
  sex: {{kind: binary, weight: 0.5}}
data:
  source: csv:{SPECS / "data" / "penguins.csv"}
  features: [bill_length_mm, flipper_length_mm, body_mass_g]
train: {{epochs: 3, batch_size: 32}}
"""


def test_one_input_with_outputs_and_commands_that_need_one_output(cli, tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(SINGLE_INPUT)
    out = tmp_path / "run"
    r = cli("train", spec, "--out", out, "-q")
    assert r.code == 0, r
    data = SPECS / "data" / "penguins.csv"
    r = cli("predict", out / "model.onnx", data)  # the stored feature names pick the columns
    assert r.code == 0 and r.out.splitlines()[0].startswith("species.class_index,species.label,"
                                                             "species.p_Adelie"), r
    assert len(r.out.splitlines()) == 334
    r = cli("evaluate", out / "model.onnx", "--data", f"csv:{data}")
    assert r.code == 0 and "species.accuracy" in r.out and "sex.accuracy" in r.out, r
    for args in (["quantize", out / "model.onnx", "-o", tmp_path / "q.onnx"],
                 ["explain", out / "model.onnx", data],
                 ["cv", spec, "--folds", "2"]):
        r = cli(*args)
        assert r.code in (1, 2) and "one output (`task:`)" in r.err, (args, r)
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, (args, r)


def test_an_output_at_weight_zero_is_not_trained(cli, tmp_path):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "run"
    r = cli("train", SPECS / "penguins_multitask.yaml", "--out", out, "-q", "--epochs", "3",
            "--set", "outputs.sex.weight=0")
    assert r.code == 0, r
    trained = {t.name: numpy_helper.to_array(t)
               for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    spec = load_spec_text((SPECS / "penguins_multitask.yaml").read_text(), "p.yaml")
    initial = build_network(spec).init_params(0)
    np.testing.assert_array_equal(trained["sex.weight"], initial["sex.weight"])
    assert not np.array_equal(trained["species.weight"], initial["species.weight"])


def test_augment_with_named_columns_is_one_line(cli, tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(SINGLE_INPUT.replace("  features: [bill_length_mm, flipper_length_mm, "
                                         "body_mass_g]\n", "  features: [bill_length_mm, "
                                         "flipper_length_mm, body_mass_g]\n  augment: "
                                         "{noise: 0.1}\n"))
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 1 and "data.augment applies to image inputs" in r.err, r


# ---- target_scaling: standard ----------------------------------------------------------------

SCALED = """\
dlc: 1
name: scaled
input: {shape: [3]}
layers:
  - {type: dense, name: h, units: 5, activation: tanh}
  - {type: dense, name: out, units: 2}
task: {kind: regression, loss: mse, target_scaling: standard}
train: {optimizer: {type: sgd, lr: 0.1}}
"""


def test_target_scaling_trains_on_standardised_targets_and_predicts_in_units():
    """The loss is mse(logits, (y - mean) / std) with the training split's statistics; the step's
    logits output (what metrics see) is logits * std + mean. Against torch autograd."""
    torch = pytest.importorskip("torch")
    from dlc.data import Split
    from dlc.model.losses import scale_targets

    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    y = (rng.normal(size=(9, 2)) * [30.0, 0.5] + [150.0, -4.0]).astype(np.float32)
    net = scale_targets(build_network(load_spec_text(SCALED, "s.yaml")),
                        type("D", (), {"train": Split(x, y)})())
    mean, std = y.astype(np.float64).mean(0), y.astype(np.float64).std(0)
    np.testing.assert_allclose(net.head.target_norm["offset"], mean)
    np.testing.assert_allclose(net.head.target_norm["scale"], std)
    values = net.init_params(0)
    step = build_train_step(net)
    feeds = {"x": x, "y": y, "lr": np.array(LR, np.float32), "step": np.array(1.0, np.float32),
             **pack_feeds(step, values)}
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = named(step, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))

    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
    h = torch.tanh(torch.from_numpy(x.astype(np.float64)) @ p["h.weight"] + p["h.bias"])
    logits = h @ p["out.weight"] + p["out.bias"]
    target = (torch.from_numpy(y.astype(np.float64)) - torch.from_numpy(mean)) / \
        torch.from_numpy(std)
    loss = torch.nn.functional.mse_loss(logits, target)
    loss.backward()
    np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-5)
    np.testing.assert_allclose(out["logits"], logits.detach().numpy() * std + mean, rtol=1e-5)
    for k, param in p.items():
        g = (values[k].astype(np.float64) - out[f"{k}.new"].astype(np.float64)) / LR
        assert np.abs(g - param.grad.numpy()).max() / float(param.grad.abs().max()) < 1e-4, k


def test_target_scaling_model_predicts_in_the_targets_units(cli, tmp_path):
    from dlc.commands.attribution import load_explainer

    out = tmp_path / "run"
    r = cli("train", SPECS / "diabetes.yaml", "--out", out, "-q", "--epochs", "3",
            "--set", "task.target_scaling=standard")
    assert r.code == 0, r
    summary = json.loads((out / "summary.json").read_text())
    model = load_model(out / "model.onnx")
    from dlc.data import load_dataset
    from dlc.model.spec import load_spec
    from dlc.commands.quantize import denormalize

    data = load_dataset(load_spec(SPECS / "diabetes.yaml").data, SPECS)
    raw = denormalize(data.test.x, data.norm)  # the model takes raw inputs
    pred = model.run(raw)["prediction"]
    # three epochs from scratch: far from good, but already in the targets' units (mean ~152)
    assert abs(pred.mean() - data.train.y.mean()) < 0.5 * data.train.y.std()
    assert summary["test"]["mae"] == pytest.approx(np.abs(pred - data.test.y).mean(), rel=1e-4)
    ex = load_explainer(out / "model.onnx")  # the explainer predicts what the model does
    logits, _ = ex.run(raw, np.ones((len(raw), 1), np.float32))
    np.testing.assert_allclose(logits, pred, rtol=1e-5, atol=1e-3)


def test_target_scaling_needs_a_regression_task():
    found = errors(BASE + "outputs:\n  a: {kind: classification, target_scaling: standard}\n"
                   "  b: {kind: regression, target_scaling: standard}\n")
    assert any("m.yaml:9:" in f and "target scaling applies to regression targets, not to a "
               "classification task" in f for f in found), found


def test_outputs_from_an_npz_archive(cli, tmp_path):
    """One image input, three outputs, each target an array of the archive named by its
    `target`: train, then evaluate and predict from npz files."""
    from sklearn.datasets import load_digits

    x, digit = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", images=x.reshape(-1, 1, 8, 8).astype(np.float32),
             digit=digit, even=(digit % 2 == 0).astype(np.int64),
             ink=x.sum(axis=1, keepdims=True).astype(np.float32))
    spec = tmp_path / "multi.yaml"
    spec.write_text("""\
dlc: 1
name: digits-three
input: {shape: [1, 8, 8]}
layers:
  - {type: flatten, name: flat}
  - {type: dense, name: trunk, units: 64, activation: relu}
  - {type: dense, name: digit, units: 10}
  - {type: dense, name: even, units: 1, inputs: [trunk]}
  - {type: dense, name: ink, units: 1, inputs: [trunk]}
outputs:
  digit: {kind: classification, layer: digit}
  even: {kind: binary, labels: [odd, even]}
  ink: {kind: regression, target_scaling: standard, weight: 0.2}
data: {source: npz:digits.npz, x_key: images, split: {val: 0.1, test: 0.2, seed: 0}}
train: {epochs: 12, batch_size: 64, optimizer: {type: adam, lr: 0.003}}
""")
    out = tmp_path / "run"
    r = cli("train", spec, "--out", out, "-q")
    assert r.code == 0, r
    test = json.loads((out / "summary.json").read_text())["test"]
    assert test["digit.accuracy"] > 0.9 and test["even.accuracy"] > 0.9 and test["ink.r2"] > 0.9
    r = cli("evaluate", out / "model.onnx", "--data", f"npz:{tmp_path / 'digits.npz'}",
            "-o", tmp_path / "m.json")
    assert r.code == 0, r
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["samples"] == len(x) and metrics["digit"]["accuracy"] > 0.9
    np.savez(tmp_path / "new.npz", images=x[:4].reshape(-1, 1, 8, 8).astype(np.float32))
    r = cli("predict", out / "model.onnx", tmp_path / "new.npz")
    assert r.code == 0, r
    assert r.out.splitlines()[0].startswith("digit.class_index,digit.label,digit.p_0,")
    assert r.out.splitlines()[0].endswith(",even.p_even,ink.prediction")
    np.savez(tmp_path / "no_ink.npz", images=x[:4].reshape(-1, 1, 8, 8), digit=digit[:4],
             even=digit[:4] % 2)
    r = cli("evaluate", out / "model.onnx", "--data", f"npz:{tmp_path / 'no_ink.npz'}")
    assert r.code == 1 and "no array 'ink' (outputs.ink.target)" in r.err, r
