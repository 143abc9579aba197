"""The spec's `base:` section (issue 20): an ONNX model as the network's first node, cut at a
tensor, its initialisers as parameters (all, none or by pattern), the spec's layers a head on
top. Through the CLI: validate proves trainability before any data is read and refuses a bad
base file in one line; train, resume, evaluate, predict, summary and compile work with a base,
and the exported model is self-contained (the base file is not needed after training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SPECS, straight_and_resumed
from oracles import needs_torch, torch
from onnx import TensorProto, helper, numpy_helper

BASE = SPECS / "data" / "digits_base.onnx"
FOLDER = SPECS / "data" / "digits_5to9"


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _spec(tmp_path: Path, base: str, extra: str = "", head: str = "{type: dense, units: 5}",
          data: str = f"folder:{FOLDER}") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""dlc: 1
name: base-test
base: {base}
layers:
  - {head}
task: {{kind: classification, loss: cross_entropy, metrics: [accuracy]}}
data: {{source: "{data}", split: {{val: 0.1, test: 0.25, seed: 0}}, normalize: none}}
train: {{epochs: 2, batch_size: 32, optimizer: {{type: adam, lr: 0.01}}, seed: 0}}
{extra}""")
    return spec


def _tiny(path: Path, op: str = "Relu", front: bool = False) -> Path:
    """x [N, 4] -> MatMul(w) -> `op` -> y [N, 3]: a base model written here; front: an
    ai.onnx.ml Scaler before the MatMul (where a dlc model's string front would stand)."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    scaler = [helper.make_node("Scaler", ["x"], ["xs"], name="scale", domain="ai.onnx.ml",
                               offset=[1.0], scale=[0.5])] if front else []
    graph = helper.make_graph(
        [*scaler, helper.make_node("MatMul", ["xs" if front else "x", "w"], ["h"], name="mm"),
         helper.make_node(op, ["h"], ["y"], name="act", **(
             {"domain": "ai.onnx.ml", "offset": [0.0], "scale": [2.0]} if op == "Scaler"
             else {}))], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("ai.onnx.ml", 3)]),
              path)
    return path


def test_the_example_fine_tunes_frozen_then_unfrozen(cli, tmp_path):
    """specs/digits_finetune.yaml: the head alone on the frozen torch CNN, then everything from
    that run (init_from). The frozen base's bytes stay those of the exported file."""
    head, full = tmp_path / "head", tmp_path / "all"
    r = cli("train", SPECS / "digits_finetune.yaml", "--out", head, "-q")
    assert r.code == 0, r
    frozen = json.loads((head / "summary.json").read_text())["test"]["accuracy"]
    assert frozen >= 0.85
    source, trained = _weights(BASE), _weights(head / "model.onnx")
    assert all(trained[f"base.{k}"].tobytes() == source[k].tobytes()
               for k in ("conv1.weight", "conv2.bias", "fc1.weight"))
    r = cli("train", SPECS / "digits_finetune.yaml", "--out", full, "-q", "--set",
            "base.trainable=all", "--set", f"train.init_from={head / 'model.onnx'}",
            "--set", "train.optimizer.lr=0.001", "--set", "train.epochs=30")
    assert r.code == 0, r
    unfrozen = json.loads((full / "summary.json").read_text())["test"]["accuracy"]
    assert unfrozen >= 0.95 and unfrozen > frozen
    moved = _weights(full / "model.onnx")["base.fc1.weight"]
    assert moved.tobytes() != source["fc1.weight"].tobytes()


def test_the_exported_model_needs_no_base_file(cli, tmp_path):
    """evaluate, predict and a second look at the model after the base file is gone."""
    base = shutil.copy(BASE, tmp_path / "base.onnx")
    spec = _spec(tmp_path, "{model: base.onnx, cut: features, trainable: [fc1]}")
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    Path(base).unlink()
    model = tmp_path / "run" / "model.onnx"
    r = cli("evaluate", model, "--data", f"folder:{FOLDER}")
    assert r.code == 0 and "accuracy" in r.out, r
    r = cli("predict", model, FOLDER / "7")
    assert r.code == 0 and r.out.splitlines()[0].startswith("path,class_index,label"), r
    weights = _weights(model)  # trainable: [fc1]: only fc1 of the base changed
    source = _weights(BASE)
    assert weights["base.conv1.weight"].tobytes() == source["conv1.weight"].tobytes()
    assert weights["base.fc1.weight"].tobytes() != source["fc1.weight"].tobytes()


def test_resume_continues_a_base_run_bit_for_bit(cli, tmp_path, monkeypatch):
    spec = _spec(tmp_path, f"{{model: {BASE}, cut: features, trainable: all}}")
    args = ["-q", "--set", "train.epochs=3"]
    straight, broken = straight_and_resumed(cli, monkeypatch, tmp_path, spec, args, epoch=2)
    assert (broken / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    a, b = _weights(straight / "model.onnx"), _weights(broken / "model.onnx")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_summary_and_compile_show_the_base(cli, tmp_path):
    spec = _spec(tmp_path, f"{{model: {BASE}, cut: features}}")
    r = cli("summary", spec)
    assert r.code == 0, r
    row = next(line for line in r.out.splitlines() if " base " in line)
    assert "64]" in row and "37,632" in row  # conv1 160 + conv2 4,640 + fc1 32,832
    r = cli("compile", spec, "-o", tmp_path / "m.onnx")
    assert r.code == 0, r
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 8, 8]


def test_a_dlc_model_as_base_brings_its_normalisation(cli, tmp_path, digits_mlp_model):
    """The digits MLP's graph normalises its raw input: data.normalize must be none."""
    extra = "input: {shape: [64]}\n"
    base = f"{{model: {digits_mlp_model}, cut: fc2/relu/Relu, trainable: none}}"
    spec = _spec(tmp_path, base, extra, head="{type: dense, units: 10}", data="builtin:digits")
    spec.write_text(spec.read_text().replace("normalize: none", "normalize: standard"))
    r = cli("validate", spec)
    assert r.code == 2 and "data.normalize: none" in r.err, r
    spec.write_text(spec.read_text().replace("normalize: standard", "normalize: none"))
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.code == 0, r
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test"]["accuracy"] > 0.8


@pytest.fixture(scope="module")
def digits_mlp_model(tmp_path_factory):
    from conftest import trained_model

    return trained_model(tmp_path_factory, "digits_mlp.yaml", "train.epochs=3")


def test_validate_lists_every_op_without_a_gradient_rule(cli, tmp_path):
    """Before any data is read (the data file does not exist): Sin has no VJP rule."""
    _tiny(tmp_path / "sin.onnx", "Sin")
    spec = _spec(tmp_path, "{model: sin.onnx}", data="csv:missing.csv")
    r = cli("validate", spec)
    assert r.code == 2, r
    lines = r.err.splitlines()
    assert "1 node(s) between the trainable initialisers and 'y' have no gradient rule (Sin)" \
        in lines[0] and lines[1].endswith("base.model: node 1 act (Sin): h -> y"), r
    spec.write_text(spec.read_text().replace("{model: sin.onnx}",
                                             "{model: sin.onnx, trainable: none}"))
    assert cli("validate", spec).code == 0  # frozen: nothing to differentiate through Sin
    spec.write_text(spec.read_text().replace("trainable: none", "cut: h"))
    assert cli("validate", spec).code == 0  # cut before it


def _external(tmp_path: Path) -> Path:
    path = _tiny(tmp_path / "ext.onnx")
    model = onnx.load(path)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    return path


@pytest.mark.parametrize("make,base,code,message", [
    (None, "{model: nothing.onnx}", 1, "base.model: model file not found"),
    (lambda p: (p / "junk.onnx").write_bytes(b"\x08\x07 not onnx \xff"), "{model: junk.onnx}",
     1, "base.model:"),
    (_external, "{model: ext.onnx}", 1, "external"),
    (lambda p: _tiny(p / "t.onnx"), "{model: t.onnx, cut: nope}", 2,
     "base.cut: 'nope' is no tensor of"),
    (lambda p: _tiny(p / "t.onnx"), "{model: t.onnx, trainable: [w, conv*]}", 2,
     "'conv*' selects no float initialiser of the base"),
])
def test_a_bad_base_is_one_clear_line(cli, tmp_path, make, base, code, message):
    if make:
        make(tmp_path)
    r = cli("validate", _spec(tmp_path, base))
    assert r.code == code and message in r.err and "Traceback" not in r.err, r
    assert len(r.err.strip().splitlines()) == 1, r


def test_ai_onnx_ml_ops_off_the_parameter_path_are_taken(cli, tmp_path):
    """A Scaler before the parameters trains (it is copied, and runs); one after them is named."""
    import onnxruntime as ort

    _tiny(tmp_path / "front.onnx", front=True)
    spec = _spec(tmp_path, "{model: front.onnx}", data="csv:missing.csv")
    assert cli("validate", spec).code == 0
    r = cli("compile", spec, "-o", tmp_path / "m.onnx")
    assert r.code == 0, r
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(["logits"], {"input": np.ones((2, 4), np.float32)})[0].shape == (2, 5)
    _tiny(tmp_path / "after.onnx", op="Scaler")
    r = cli("validate", _spec(tmp_path, "{model: after.onnx}", data="csv:missing.csv"))
    assert r.code == 2 and "(ai.onnx.ml::Scaler)" in r.err, r


@needs_torch
def test_gradients_through_the_copied_base_match_torch(tmp_path):
    """The compiled model (the example's base copied in, its head on `features`): dlc's gradient
    of every parameter and one momentum-SGD step equal torch's on scripts/make_finetune_base's
    BaseCNN holding the same weights."""
    import importlib.util

    from test_foreign_grads import DECAY, LR, MOMENTUM, _dlc_step
    from test_vjp_rules import err

    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    script = SPECS.parent / "scripts" / "make_finetune_base.py"
    found = importlib.util.spec_from_file_location("make_finetune_base", script)
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    model = compile_spec(load_spec(SPECS / "digits_finetune.yaml", ["base.trainable=all"]))
    weights = {k: torch.from_numpy(v.copy()) for k, v in _weights_of(model).items()}
    base, head = module.BaseCNN(), torch.nn.Linear(64, 5)
    base.load_state_dict({k: weights[f"base.{k}"] for k in base.state_dict()  # fc2: cut off
                          if f"base.{k}" in weights}, strict=False)
    head.load_state_dict({"weight": weights["head.weight"].T, "bias": weights["head.bias"]})
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    y = head(base(torch.from_numpy(x))[1])
    r = np.random.default_rng(1).uniform(-1, 1, tuple(y.shape)).astype(np.float32)
    (y * torch.from_numpy(r)).sum().backward()
    params = {**{f"base.{k}": p for k, p in base.named_parameters() if not k.startswith("fc2")},
              "head.weight": head.weight, "head.bias": head.bias}
    torch.optim.SGD(params.values(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY).step()
    out = _dlc_step(model, list(params), {"input": x}, r)
    for name, p in params.items():
        fold = (lambda a: a.T) if name == "head.weight" else (lambda a: a)  # dense: [in, out]
        assert np.abs(p.grad.numpy()).max() > 1e-4, name
        assert err(fold(out[f"g:{name}"]), p.grad.numpy()) < 1e-4, name
        assert err(fold(out[f"w:{name}"]), p.detach().numpy()) < 1e-6, name


def _weights_of(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_a_base_path_with_control_characters_is_escaped(cli, tmp_path):
    """Found by tests/test_fuzz.py: the path as written reaches the message escaped, one line."""
    r = cli("validate", _spec(tmp_path, '{model: "\\x1e0\\x1b[31m"}'))
    assert r.code == 1 and "\\x1e0\\x1b[31m" in r.err and "\x1b" not in r.err, r
    assert len(r.err.splitlines()) == 1, r


def test_a_base_path_with_a_nul_character_is_one_line(cli, tmp_path):
    """Found by tests/test_fuzz.py: os.stat raises ValueError (not OSError) for a NUL in a path;
    check_file turns it into the one-line file error (was exit 3)."""
    r = cli("validate", _spec(tmp_path, '{model: "\\0base.onnx"}'))
    assert r.code == 1 and "holds a NUL character" in r.err and "\0" not in r.err, r
    assert len(r.err.splitlines()) == 1, r
