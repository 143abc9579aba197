"""Issue 15, item 24: static quantization can make a model slower (0.40x on a CNN). Without
--mode, dlc quantize measures dynamic and static and keeps the faster; a slower int8 model is
said to be slower."""

from __future__ import annotations

import json
import re

import onnx
import pytest

from conftest import SPECS


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory):
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    path = tmp_path_factory.mktemp("q") / "iris.onnx"
    path.write_bytes(compile_spec(load_spec(SPECS / "iris.yaml")).SerializeToString())
    return path


def test_no_mode_keeps_the_faster(cli, iris_model, tmp_path):
    out = tmp_path / "int8.onnx"
    r = cli("quantize", iris_model, "-o", out)
    assert r.code == 0, r
    line = next(x for x in r.out.splitlines() if x.startswith("mode: "))
    speeds = {m: float(s.replace(",", "")) for m, s in re.findall(r"(dynamic|static) ([\d,]+)", line)}
    chosen = line.split()[1].rstrip(",")
    assert set(speeds) == {"dynamic", "static"} and chosen == max(speeds, key=speeds.get), line
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["dlc.quantized"])["mode"] == chosen


def test_slower_int8_is_reported(cli, iris_model, tmp_path, monkeypatch):
    """The measured speeds are fixed here (float 100, dynamic 40, static 30 samples/s)."""
    from dlc.commands import quantize as tools_quantize

    monkeypatch.setattr(tools_quantize, "throughput", lambda sessions, *a, **k: [100.0, 40.0,
                                                                                30.0][:len(sessions)])
    r = cli("quantize", iris_model, "-o", tmp_path / "int8.onnx")
    assert r.code == 0, r
    assert "mode: dynamic, the faster int8 model here (dynamic 40, static 30" in r.out, r
    assert "note: the int8 model runs at 0.40x the float model's speed" in r.out, r


def test_chosen_mode_is_kept(cli, iris_model, tmp_path, monkeypatch):
    from dlc.commands import quantize as tools_quantize

    monkeypatch.setattr(tools_quantize, "throughput", lambda sessions, *a, **k: [100.0, 400.0])
    r = cli("quantize", iris_model, "-o", tmp_path / "int8.onnx", "--mode", "static")
    assert r.code == 0 and "mode: " not in r.out and "(static" in r.out, r
