"""Graph specs: inputs, merges, blocks with repeat, shared weights; expand and graph commands;
gradients through merges and shared weights against torch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SPECS
from stepio import named, pack_feeds

from dlc.errors import SpecError
from dlc.model.network import build_network
from dlc.model.spec import load_spec, load_spec_text
from dlc.train.step import build_train_step

HEAD = "dlc: 1\nname: g\ninput: {shape: [6]}\n"
TASK = "task: {kind: regression}\n"


def spec(layers: str, extra: str = "") -> str:
    return HEAD + "layers:\n" + layers + TASK + extra


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        build_network(load_spec_text(text, "g.yaml"))
    return [d.render() for d in e.value.diagnostics]


BRANCHY = spec("""\
  - {type: dense, name: a, units: 4, activation: tanh}
  - {type: dense, name: b, units: 4, inputs: [input], activation: sigmoid}
  - {type: add, name: s, inputs: [a, b]}
  - {type: multiply, name: m, inputs: [s, a]}
  - {type: average, name: v, inputs: [m, b, a]}
  - {type: concat, name: c, inputs: [v, input]}
  - {type: dense, name: shared, units: 10, share: a2, inputs: [c]}
  - {type: dense, name: a2, units: 10, inputs: [c]}
  - {type: add, name: t, inputs: [shared, a2]}
  - {type: dense, name: out, units: 2}
""", "train: {optimizer: {type: sgd}}\n")


@pytest.mark.parametrize("layers,line,message", [
    ("  - {type: dense, name: a, units: 4}\n  - {type: add, inputs: [a, b2]}\n", 6,
     "unknown layer 'b2'"),
    ("  - {type: dense, name: a, units: 4}\n  - {type: add, inputs: [a, inptu]}\n", 6,
     "did you mean 'input'?"),
    ("  - {type: dense, name: a, units: 4, inputs: [b]}\n  - {type: dense, name: b, units: 4, "
     "inputs: [a]}\n  - {type: dense, units: 1}\n", 5, "form a cycle"),
    ("  - {type: dense, name: a, units: 4}\n  - {type: dense, name: b, units: 3, inputs: "
     "[input]}\n  - {type: add, inputs: [a, b]}\n", 7, "shape mismatch: a gives [4] but b gives [3]"),
    ("  - {type: dense, name: a, units: 4}\n  - {type: dense, units: 4, inputs: [a, input]}\n", 6,
     "dense takes one input, got 2"),
    ("  - {type: dense, name: a, units: 4}\n  - {type: dense, units: 5, share: a}\n", 6,
     "cannot share the parameters of 'a'"),
    ("  - {type: dense, name: a, units: 4}\n  - {type: dense, units: 4, share: zz}\n", 6,
     "share: no layer 'zz'"),
])
def test_graph_errors_point_into_the_file(layers, line, message):
    found = errors(spec(layers))
    assert any(f"g.yaml:{line}:" in f and message in f for f in found), found


def test_branches_merges_and_shared_weights_match_torch():
    torch = pytest.importorskip("torch")
    net = build_network(load_spec_text(BRANCHY, "g.yaml"))
    assert "shared.weight" not in {p.name for p in net.params}
    step = build_train_step(net)
    values = net.init_params(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    lr = 1024.0
    feeds = {"x": x, "y": y, "lr": np.array(lr, np.float32), "step": np.array(1, np.float32),
             **pack_feeds(step, values)}
    out = named(step, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
    xi = torch.tensor(x, dtype=torch.float64)
    dense = lambda h, n, w=None: h @ t[f"{w or n}.weight"] + t[f"{w or n}.bias"]  # noqa: E731
    a, b = torch.tanh(dense(xi, "a")), torch.sigmoid(dense(xi, "b"))
    s = a + b
    m = s * a
    v = (m + b + a) / 3
    c = torch.cat([v, xi], dim=1)
    shared, a2 = dense(c, "shared", "a2"), dense(c, "a2")
    pred = dense(shared + a2, "out")
    loss = ((pred - torch.tensor(y, dtype=torch.float64)) ** 2).mean()
    loss.backward()
    assert abs(float(out["loss"]) - loss.item()) < 1e-5 * loss.item()
    for k, p in t.items():
        got = (values[k].astype(np.float64) - out[f"{k}.new"]) / lr
        scale = max(np.abs(p.grad.numpy()).max(), 1e-3)
        assert np.abs(got - p.grad.numpy()).max() < 1e-4 * scale, k


def test_residual_block_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    s = load_spec(SPECS / "digits_resnet.yaml", ["layers.1.repeat=1"])
    net = build_network(s)
    step = build_train_step(net)
    values = net.init_params(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 7, 3])
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    lr = 1024.0
    feeds = {"x": x, "y": y, "lr": np.array(lr, np.float32), "step": np.array(1, np.float32),
             **pack_feeds(step, values)}
    out = named(step, dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))
    out_sgd = out  # the spec uses adam: compare the loss and the gradient norm (pre-update)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
    conv = lambda h, n: F.conv2d(h, t[f"{n}.weight"], t[f"{n}.bias"], padding=1)  # noqa: E731
    h = F.relu(conv(torch.tensor(x, dtype=torch.float64), "stem"))
    r = F.relu(conv(h, "res.a"))
    h = F.relu(conv(r, "res.b") + h)
    h = F.max_pool2d(h, 2).flatten(1)
    h = F.relu(h @ t["fc.weight"] + t["fc.bias"])
    logits = h @ t["head.weight"] + t["head.bias"]
    loss = F.cross_entropy(logits, torch.tensor(y),
                           label_smoothing=s.data["task"]["label_smoothing"])
    loss.backward()
    norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in t.values())))
    assert abs(float(out_sgd["loss"]) - loss.item()) < 1e-5 * loss.item()
    assert abs(float(out_sgd["grad_norm"]) - norm) < 1e-4 * norm


BLOCKS = HEAD + """\
blocks:
  mlp:
    params: {width: 8, act: relu}
    layers:
      - {type: dense, name: up, units: "${width}", activation: "${act}"}
      - {type: dense, name: down, units: 6}
      - {type: add, name: skip, inputs: [down, "${input}"]}
layers:
  - {type: block, use: mlp, name: r, width: 5, repeat: 3}
  - {type: dense, name: out, units: 1}
""" + TASK


def test_block_expansion_names_copies_and_wires_inputs():
    s = load_spec_text(BLOCKS, "b.yaml")
    names = [l["name"] for l in s.data["layers"]]
    assert names == ["r1.up", "r1.down", "r1.skip", "r2.up", "r2.down", "r2.skip", "r3.up",
                     "r3.down", "r3.skip", "out"]
    layers = {l["name"]: l for l in s.data["layers"]}
    assert layers["r1.up"]["inputs"] == ["input"] and layers["r2.up"]["inputs"] == ["r1.skip"]
    assert layers["r2.skip"]["inputs"] == ["r2.down", "r1.skip"]
    assert layers["r3.up"]["units"] == 5 and layers["r3.up"]["activation"] == "relu"
    net = build_network(s)
    assert len([p for p in net.params if p.name.endswith(".weight")]) == 7


@pytest.mark.parametrize("change,line,message", [
    (("units: \"${width}\"", "units: \"${widht}\""), 8, "unknown block parameter '${widht}'; "
                                                        "did you mean '${width}'?"),
    (("width: 5, repeat", "wdth: 5, repeat"), 12, "block 'mlp' has no parameter 'wdth'; did you "
                                                  "mean 'width'?"),
    (("use: mlp", "use: mpl"), 12, "unknown block 'mpl'; did you mean 'mlp'?"),
    (("repeat: 3", "repeat: 1000000000"), 12, "expected an integer from 1 to 1000"),
    (("width: 5,", "width: many,"), 8, "expected an integer, got \"many\""),
])
def test_block_errors(change, line, message):
    text = BLOCKS.replace(*change)
    with pytest.raises(SpecError) as e:
        build_network(load_spec_text(text, "b.yaml"))
    rendered = str(e.value)
    assert f"b.yaml:{line}:" in rendered and message in rendered, rendered


def test_straight_line_specs_are_unchanged_by_graph_support():
    for path in sorted(SPECS.glob("*.yaml")):
        net = build_network(load_spec(path))
        assert all(len(n.sources) == 1 for n in net.nodes if not n.layer.multi), path


def test_expand_and_graph_commands(cli, tmp_path):
    import yaml

    r = cli("expand", SPECS / "digits_resnet.yaml")
    assert r.code == 0, r
    expanded = yaml.safe_load(r.out)
    assert "blocks" not in expanded
    assert [l["name"] for l in expanded["layers"]][1:5] == ["res1.a", "res1.b", "res1.sum",
                                                            "res1.out"]
    r = cli("graph", SPECS / "digits_resnet.yaml", "-o", tmp_path / "g.dot")
    assert r.code == 0, r
    dot = (tmp_path / "g.dot").read_text()
    assert '"stem" -> "res1.sum"' in dot and "subgraph cluster_0" in dot
    r = cli("graph", SPECS / "digits_resnet.yaml", "-o", tmp_path / "g.svg")  # no dot needed
    assert r.code == 0 and (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml"), r
    r = cli("summary", SPECS / "digits_resnet.yaml")
    assert r.code == 0 and "res1" in r.out and "block" in r.out, r


@pytest.mark.parametrize("name,overrides,target", [
    ("penguins_wide_deep", [], 0.85),
    ("digits_resnet", ["--epochs", "8"], 0.96),
])
def test_graph_examples_train(cli, tmp_path, name, overrides, target):
    import json

    out = tmp_path / name
    r = cli("train", SPECS / f"{name}.yaml", "--out", out, "-q", *overrides)
    assert r.code == 0, r
    assert json.loads((out / "summary.json").read_text())["test"]["accuracy"] >= target


def test_wide_deep_predicts_raw_categories(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", SPECS / "penguins_wide_deep.yaml", "--out", out, "-q", "--epochs",
               "5").code == 0
    rows = (SPECS / "data" / "penguins.csv").read_text().splitlines()
    sample = tmp_path / "in.csv"
    sample.write_text("\n".join(rows[:4] + [rows[1].replace("Torgersen", "Atlantis")]) + "\n")
    r = cli("predict", out / "model.onnx", sample)
    assert r.code == 0, r
    lines = r.out.strip().splitlines()
    assert lines[0] == "class_index,label,p_male" and len(lines) == 5  # unseen island: id 0
    r = cli("evaluate", out / "model.onnx", "--data", f"csv:{SPECS / 'data' / 'penguins.csv'}")
    assert r.code == 0 and "accuracy" in r.out, r


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_summary_and_graph_of_every_example(cli, tmp_path, path):
    """Every example (one input or several, one output or several) has a summary and a graph
    that shows each model input (and each output of an `outputs:` spec)."""
    from dlc.model.names import spec_heads, spec_inputs
    from dlc.model.network import build_network

    spec = load_spec(path)
    build_network(spec)  # fills in the input of a `base:` spec (the base model's)
    summary = cli("summary", path)
    assert summary.code == 0, summary
    r = cli("graph", path, "-o", tmp_path / "g.dot")
    assert r.code == 0, r
    dot = (tmp_path / "g.dot").read_text()
    for name in spec_inputs(spec.data):
        assert f'"{name}" [label="{name}' in dot and name in summary.out
    for head in spec_heads(spec.data):
        assert not head or f'"output:{head}"' in dot
