"""`dlc inspect MODEL.onnx`: the report on any ONNX file, through the real CLI. Trainability names
exactly the nodes on a parameter -> output path without a VJP rule, and no others."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from oracles import needs_torch, torch
from conftest import SPECS

from dlc.graph import OPSET


def _model(nodes, inits, outputs, path, opset=OPSET):
    """A float model with input x [2, 4] and the named float outputs of unknown shape."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, path)
    return path


W = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def test_dlc_model_trains_and_counts_its_parameters(cli, tmp_path):
    model = tmp_path / "mlp.onnx"
    assert cli("compile", SPECS / "digits_mlp.yaml", "-o", model).code == 0
    r = cli("inspect", model)
    assert r.code == 0, r
    assert "  input  float [N, 64]" in r.out and "  class_index  int64 [N]" in r.out
    assert "Gemm 3" in r.out and f"opset: {OPSET}; also ai.onnx.ml 4\n" in r.out
    # 64*256+256 + 256*256+256 + 256*10+10 weights in six float initialisers
    assert "parameters: 85,002 in 6 float initialisers" in r.out
    assert "trainable: yes" in r.out


def test_names_each_node_without_a_rule_on_the_parameter_path(cli, tmp_path):
    nodes = [helper.make_node("HardSigmoid", ["x"], ["xs"], name="pre"),  # before any weight
             helper.make_node("MatMul", ["xs", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["z"], name="bias"),
             helper.make_node("HardSigmoid", ["z"], ["y"], name="act"),
             helper.make_node("Shrink", ["y"], ["out"], name="shrink"),
             helper.make_node("NonZero", ["z"], ["nz"], name="nz")]  # int64: no gradient
    r = cli("inspect", _model(nodes, W, ["out", "nz"], tmp_path / "m.onnx"))
    assert r.code == 1, r
    assert ("trainable: no, 2 nodes on the path from the float initialisers to the outputs "
            "without a VJP rule (2 op types: HardSigmoid, Shrink):") in r.out
    assert "  node #3 act (HardSigmoid): z -> y\n" in r.out
    assert "  node #4 shrink (Shrink): y -> out\n" in r.out
    assert " pre " not in r.out and " nz " not in r.out.split("trainable")[1]
    assert "HardSigmoid 2" in r.out and "NonZero 1" in r.out


def test_other_domains_and_opsets_are_named(cli, tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("FusedGelu", ["h"], ["y"], name="gelu", domain="com.example")]
    path = tmp_path / "m.onnx"
    model = onnx.load(_model(nodes, W, ["y"], path, opset=17))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, path)
    r = cli("inspect", path)
    assert r.code == 1, r
    assert f"opset: 17 (dlc trains it converted to opset {OPSET}); also com.example 1" in r.out
    assert "node #1 gelu (com.example::FusedGelu): h -> y" in r.out


def test_external_data_and_garbage_are_refused_in_one_line(cli, tmp_path):
    path = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], W, ["y"], tmp_path / "m.onnx")
    model = onnx.load(path)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    r = cli("inspect", tmp_path / "ext.onnx")
    assert r.code == 1 and "external file" in r.err and r.err.count("\n") == 1, r
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00not a model")
    r = cli("inspect", tmp_path / "junk.onnx")
    assert r.code == 1 and "not a valid ONNX model" in r.err and "Traceback" not in r.err, r


@needs_torch
def test_torch_export_of_an_mlp_trains(cli, tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, (torch.randn(2, 4),), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False)
    r = cli("inspect", path)
    assert r.code == 0, r
    assert "pytorch" in r.out and "parameters: 58 in 4 float initialisers" in r.out


@needs_torch
def test_torch_resnet_export_at_opset_17_trains(cli, tmp_path):
    """BatchNormalization, MaxPool without Indices and GlobalAveragePool have rules, and the
    trainability is judged after onnx's version converter brought the model to dlc's opset."""
    from test_foreign_grads import ResNet

    path = tmp_path / "resnet.onnx"
    torch.onnx.export(ResNet().eval(), (torch.randn(1, 3, 8, 8),), str(path), opset_version=17,
                      do_constant_folding=False, dynamo=False)
    r = cli("inspect", path)
    assert r.code == 0, r
    assert f"opset: 17 (dlc trains it converted to opset {OPSET})" in r.out
    assert "BatchNormalization 5" in r.out
    assert "trainable: yes" in r.out
