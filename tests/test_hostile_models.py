"""Issue 15, items 1 and 15: a model whose tensors keep their values in an external file is
refused (exit 1, one line) by every command that loads a model, and the file's bytes never come
out: onnx and onnxruntime resolve an external location against the working folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SPECS

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for your eyes " * 40


def _external(raw: bytes, location: str) -> bytes:
    """The model with its first initializer's values moved to `location` (not written)."""
    import onnx

    model = onnx.load_model_from_string(raw)
    t = model.graph.initializer[0]
    n = int(np.prod(t.dims)) * 4
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(n))):
        t.external_data.add(key=key, value=value)
    return model.SerializeToString()


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A folder holding a secret and a compiled iris model that reads it; the working folder."""
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_rsa").write_bytes(SECRET)
    raw = compile_spec(load_spec(SPECS / "iris.yaml")).SerializeToString()
    path = tmp_path / "evil.onnx"
    path.write_bytes(_external(raw, ".ssh/id_rsa"))
    monkeypatch.chdir(tmp_path)
    return path


def _refused(r, tmp_path: Path) -> None:
    assert r.code == 1, r
    assert r.err.count("\n") == 1 and "external file" in r.err, r
    assert "PRIVATE" not in r.out + r.err
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != "id_rsa":
            assert b"PRIVATE" not in f.read_bytes(), f


def test_the_model_would_read_the_secret(evil):
    """The fixture really is hostile: onnx resolves the location and gets the key's bytes."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load_model_from_string(evil.read_bytes())
    load_external_data_for_model(model, str(evil.parent))
    assert model.graph.initializer[0].raw_data.startswith(SECRET[:40])


@pytest.mark.parametrize("args", [
    ["predict", "evil.onnx", str(SPECS / "data" / "iris_sample.csv"), "-o", "out.json"],
    ["evaluate", "evil.onnx", "--data", "builtin:iris", "-o", "m.json"],
    ["explain", "evil.onnx", str(SPECS / "data" / "iris_sample.csv"), "-o", "attr.csv"],
    ["quantize", "evil.onnx", "-o", "int8.onnx"],
], ids=["predict", "evaluate", "explain", "quantize"])
def test_commands_refuse_external_data(cli, evil, args):
    _refused(cli(*args), evil.parent)


@pytest.mark.parametrize("option", ["train.init_from=evil.onnx",
                                    "train.distill={teacher: evil.onnx}"],
                         ids=["init_from", "distill"])
def test_training_refuses_external_data(cli, evil, option):
    r = cli("train", SPECS / "iris.yaml", "--out", "run", "--epochs", "1", "-q", "--set",
            option.replace("evil.onnx", str(evil)))
    _refused(r, evil.parent)
    assert "train." in r.err, r


def test_external_data_in_a_constant_node_is_refused(cli, evil):
    """Not only initializers: a Constant's tensor attribute may point outside too."""
    import onnx

    model = onnx.load_model_from_string(evil.read_bytes())
    t = model.graph.initializer.pop(0)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [t.name], value=t))
    evil.write_bytes(model.SerializeToString())
    _refused(cli("predict", "evil.onnx", SPECS / "data" / "iris_sample.csv"), evil.parent)
