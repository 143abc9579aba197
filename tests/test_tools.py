"""diff, runs, plot, env, overrides through the CLI."""

from __future__ import annotations

import json

import pytest
from conftest import SPECS


def test_diff_shows_fields_and_parameter_counts(cli, tmp_path):
    b = tmp_path / "b.yaml"
    b.write_text((SPECS / "digits_mlp.yaml").read_text().replace("units: 256, activation: relu}\n"
                                                                "  - {type: dense, name: fc2",
                                                                "units: 128, activation: relu}\n"
                                                                "  - {type: dense, name: fc2"))
    r = cli("diff", SPECS / "digits_mlp.yaml", b)
    assert r.code == 0, r
    assert "~ layers[0].units: 256 -> 128" in r.out
    assert "parameters: 85,002 -> 43,914 (-48.3%)" in r.out  # 64*128+128 + 128*256+256 + 2570


def test_overrides_reach_the_compiled_model(cli, tmp_path):
    out = tmp_path / "m.onnx"
    r = cli("compile", SPECS / "digits_mlp.yaml", "-o", out, "--set", "layers.0.units=32")
    assert r.code == 0, r
    import onnx

    shapes = {t.name: list(t.dims) for t in onnx.load(out).graph.initializer}
    assert shapes["fc1.weight"] == [64, 32]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("runs") / "iris-a"
    train(load_spec(SPECS / "iris.yaml", ["train.epochs=3"]), str(out), quiet=True)
    return out


def test_runs_lists_run_folders(cli, short_run):
    r = cli("runs", short_run.parent)
    assert r.code == 0, r
    summary = json.loads((short_run / "summary.json").read_text())
    row = next(line for line in r.out.splitlines() if str(short_run) in line)
    cells = [c.strip() for c in row.split("\u2502")[1:-1]]  # the table's column separator
    assert cells[1:4] == ["iris", str(short_run), "3"], cells
    assert f"accuracy {summary['test']['accuracy']:.4g}" in cells[5], cells
    assert cli("runs", short_run / "nothing-here").code == 1


def test_plot_writes_png(cli, short_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    r = cli("plot", short_run, "-o", out)
    assert r.code == 0, r
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli("plot", tmp_path, "-o", out).code == 1


def test_plot_takes_its_format_from_the_suffix(cli, short_run, tmp_path):
    """A suffix matplotlib cannot write is a usage error in one line, exit 2 (it was
    matplotlib's ValueError: exit 3), before anything is written; an .svg is an SVG, written
    atomically (no temporary file left beside it)."""
    pytest.importorskip("matplotlib")
    r = cli("plot", short_run, "-o", tmp_path / "curves.xyz")
    assert r.code == 2 and r.err.startswith("error: cannot plot to") and ".svg" in r.err, r
    assert r.err.count("\n") == 1 and list(tmp_path.iterdir()) == []
    r = cli("plot", short_run, "-o", tmp_path / "curves.svg")
    assert r.code == 0, r
    assert [p.name for p in tmp_path.iterdir()] == ["curves.svg"]
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()[:400]


def test_env_reports_providers(cli):
    r = cli("env")
    assert r.code == 0, r
    assert "CPUExecutionProvider" in r.out and "onnxruntime:" in r.out and "cuda:" in r.out
