"""Knowledge distillation (train.distill): the KD term against torch and numpy, the whole train
step (teacher inlined, de-normalised and reshaped input) against torch, and a small MLP pulled
toward the digits CNN's predictions (the accuracy experiment over seeds: bench/distill.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, SPECS

from dlc.graph import Builder
from dlc.model.losses import distillation

STUDENT = ROOT / "bench" / "specs" / "digits_student.yaml"  # also bench/distill.py's


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """specs/digits_cnn.yaml trained for 8 epochs (its own min-max normalisation, [1, 8, 8])."""
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("teacher")
    train(load_spec(SPECS / "digits_cnn.yaml", ["train.epochs=8"]), str(out), force=True,
          quiet=True)
    return out / "model.onnx"


@pytest.fixture
def student(tmp_path):
    path = tmp_path / "student.yaml"
    path.write_text(STUDENT.read_text())
    return path


def _kd_reference(s, t, temperature):
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp, lq = log_softmax(t.astype(np.float64)), log_softmax(s.astype(np.float64))
    return temperature ** 2 * np.mean(np.sum(np.exp(lp) * (lp - lq), -1))


def test_kd_term_matches_torch_and_numpy():
    import onnxruntime as ort

    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    s, t = (rng.normal(0, 3, (32, 10)).astype(np.float32) for _ in range(2))
    for temperature in (1.0, 4.0):
        b = Builder()
        out = distillation(b, b.input("s", "float32", ["N", 10]),
                           b.input("t", "float32", ["N", 10]), temperature)
        b.output(out, "kd", "float32", [])
        sess = ort.InferenceSession(b.model("kd").SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        got = float(sess.run(None, {"s": s, "t": t})[0])
        ref = F.kl_div(F.log_softmax(torch.tensor(s) / temperature, -1),
                       F.log_softmax(torch.tensor(t) / temperature, -1), log_target=True,
                       reduction="batchmean") * temperature ** 2
        assert got == pytest.approx(float(ref), rel=1e-5)
        assert got == pytest.approx(_kd_reference(s, t, temperature), rel=1e-5)


def test_train_step_loss_and_gradient_match_torch(teacher, student):
    """One sgd step of the student with the teacher inside: the loss is alpha T^2 KL + (1-alpha)
    CE with the teacher run separately on the RAW batch (as model.onnx, [N, 1, 8, 8]), and the
    update is torch's gradient of that loss."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    from dlc.runtime.infer import load_model
    from dlc.train.run import prepare
    from dlc.train.trainer import Trainer
    from dlc.model.spec import load_spec

    spec = load_spec(student, [f"train.distill={{teacher: {teacher}, temperature: 3, alpha: 0.6}}",
                               "train.optimizer.type=sgd"])
    net, data, _ = prepare(spec, student.parent)
    trainer = Trainer(net, data)
    x, y, flat = data.train.x[:64], data.train.y[:64], trainer.stepper.get("params")
    out = dict(zip([o.name for o in trainer.sess.get_outputs()], trainer.sess.run(None, {
        "x": x, "y": y, "lr": np.array(0.1, np.float32), "step": np.array(1.0, np.float32),
        "params": flat})))
    raw = x * np.float32(data.norm["scale"]) + np.float32(data.norm["offset"])
    t = torch.tensor(load_model(teacher).run(raw.reshape(-1, 1, 8, 8))["logits"])
    w = {k: torch.tensor(v, requires_grad=True) for k, v in trainer.step_graph.unpack(flat).items()}
    h = torch.relu(torch.tensor(x) @ w["fc1.weight"] + w["fc1.bias"])
    s = h @ w["out.weight"] + w["out.bias"]
    kd = F.kl_div(F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True,
                  reduction="batchmean") * 9
    loss = 0.6 * kd + 0.4 * F.cross_entropy(s, torch.tensor(y))
    loss.backward()
    assert float(out["loss"]) == pytest.approx(loss.item(), rel=1e-5)
    g = np.concatenate([w[n].grad.numpy().ravel() for n, _, _ in trainer.step_graph.layout])
    np.testing.assert_allclose((flat - out["params.new"]) / np.float32(0.1), g, atol=2e-6)
    assert not [i.name for i in trainer.step_graph.model.graph.input if "teacher" in i.name]


def _soft_kl(teacher_logits, student_logits, temperature: float) -> float:
    """Mean KL(teacher_T || student_T) over the rows, as the KD term measures it."""
    return _kd_reference(student_logits, teacher_logits, temperature) / temperature ** 2


def test_distillation_pulls_the_student_toward_the_teacher(cli, teacher, student, tmp_path):
    """Cheap and deterministic (the accuracy experiment over seeds is bench/distill.py): the
    student trained 3 epochs on the teacher alone (alpha 1, T 4) matches the teacher's softened
    predictions on the test split far better than the same student trained on the labels."""
    from dlc.data import load_dataset
    from dlc.runtime.infer import load_model
    from dlc.model.spec import load_spec

    kd = f"train.distill={{teacher: {teacher}, temperature: 4, alpha: 1.0}}"
    for name, extra in (("alone", []), ("taught", ["--set", kd])):
        r = cli("train", student, "--out", tmp_path / name, "-q", "--epochs", "3", *extra)
        assert r.code == 0, r
    data = load_dataset(load_spec(student).data, student.parent)
    raw = data.test.x * np.float32(data.norm["scale"]) + np.float32(data.norm["offset"])
    t = load_model(teacher).run(raw.reshape(-1, 1, 8, 8))["logits"]
    kl = {name: _soft_kl(t, load_model(tmp_path / name / "model.onnx").run(raw)["logits"], 4.0)
          for name in ("alone", "taught")}
    assert kl["taught"] < 0.2 * kl["alone"], kl  # seed 0: 0.009 against 0.240


def test_teacher_problems_are_reported(cli, student, tmp_path):
    r = cli("train", student, "--out", tmp_path / "r1", "-q", "--set",
            "train.distill={teacher: missing.onnx}")
    assert r.code == 2 and "teacher model not found" in r.err and f"{student}:" in r.err, r
    iris = tmp_path / "iris.onnx"
    assert cli("compile", SPECS / "iris.yaml", "-o", iris).code == 0
    r = cli("train", student, "--out", tmp_path / "r2", "-q", "--set",
            f"train.distill={{teacher: {iris.name}}}")  # relative: to the spec's folder
    assert r.code == 1 and "the teacher has 3 classes, the student 10" in r.err, r
    r = cli("train", SPECS / "diabetes.yaml", "--out", tmp_path / "r3", "-q", "--set",
            f"train.distill={{teacher: {iris}}}")
    assert r.code == 2 and "needs task.kind classification" in r.err, r


def test_teacher_input_must_hold_as_many_values(cli, tmp_path):
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    model = compile_spec(load_spec(SPECS / "digits_mlp.yaml", ["input.shape=[32]"]))
    (tmp_path / "t.onnx").write_bytes(model.SerializeToString())
    r = cli("train", SPECS / "digits_mlp.yaml", "--out", tmp_path / "r", "-q", "--epochs", "1",
            "--set", f"train.distill={{teacher: {tmp_path / 't.onnx'}}}")
    assert r.code == 1 and "must hold the same number of values" in r.err, r
