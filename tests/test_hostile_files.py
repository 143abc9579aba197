"""Issue 15, items 10, 14 and 22: nesting deep enough to exhaust Python's recursion in a spec,
a --set value or a model's metadata; damaged run folders for `dlc runs` and `dlc plot`;
onnxruntime's own log line on a failed run. One line and exit 1 or 2, never exit 3."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SPECS, run_dlc

DEEP = "[" * 400 + "]" * 400
SAMPLE = SPECS / "data" / "iris_sample.csv"


def one_line(r, code: int, *parts: str) -> None:
    assert r.code == code and r.err.count("\n") == 1, r
    for part in parts:
        assert part in r.err, r


def _iris(tmp_path, name: str, change) -> str:
    """A compiled iris model whose dlc.spec_resolved (a dict) went through `change`."""
    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    model = compile_spec(load_spec(SPECS / "iris.yaml"))
    for p in model.metadata_props:
        if p.key == "dlc.spec_resolved":
            p.value = change(json.loads(p.value))
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


# ---- 10: nesting -----------------------------------------------------------------------------
def test_deeply_nested_spec(cli, tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text((SPECS / "iris.yaml").read_text() + f"extra: {DEEP}\n")
    one_line(cli("validate", spec), 2, "deep.yaml:", "nested deeper than 64 levels")


@pytest.mark.parametrize("option", [f"train.epochs={DEEP}", ".".join(["a"] * 400) + "=1"],
                         ids=["value", "path"])
def test_deeply_nested_set(cli, tmp_path, option):
    r = cli("train", SPECS / "iris.yaml", "--set", option, "--out", tmp_path / "run")
    one_line(r, 2, "--set", "64")


@pytest.mark.parametrize("make", [
    lambda spec: "[" * 5000 + "]" * 5000,  # json.loads itself recurses too deep
    lambda spec: json.dumps({**spec, "name": {"a": json.loads("[" * 300 + "]" * 300)}}),
], ids=["json-recursion", "schema-recursion"])
def test_deeply_nested_metadata(cli, tmp_path, make):
    path = _iris(tmp_path, "deep.onnx", make)
    one_line(cli("predict", path, SAMPLE), 1, "deep.onnx", "dlc.spec_resolved")
    one_line(cli("evaluate", path, "--data", "builtin:iris"), 1, "dlc.spec_resolved")


def test_metadata_spec_holding_blocks(cli, tmp_path):
    def with_blocks(spec):
        spec["blocks"] = {"mlp": {"layers": [{"type": "dense", "units": 3, "name": "d"}]}}
        spec["layers"].insert(2, {"type": "block", "use": "mlp", "name": "b0"})
        return json.dumps(spec)

    path = _iris(tmp_path, "blocks.onnx", with_blocks)
    one_line(cli("predict", path, SAMPLE), 1, "blocks")
    one_line(cli("evaluate", path, "--data", "builtin:iris"), 1, "blocks")


# ---- 14: damaged run folders -----------------------------------------------------------------
SUMMARY = {"epochs_run": 3, "test": {"accuracy": 0.9}, "train_samples_per_s": 100.0}


@pytest.mark.parametrize("text", ["[1, 2]", "[" * 5000 + "]" * 5000, "\x00\xff"],
                         ids=["list", "deep", "binary"])
def test_runs_passes_over_a_damaged_summary(cli, tmp_path, monkeypatch, text):
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps long paths at 80
    for run, content in (("a/1", text), ("b/2", json.dumps(SUMMARY))):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "summary.json").write_text(content)
    r = cli("runs", tmp_path)
    assert r.code == 0 and "accuracy 0.9" in r.out and "b/2" in r.out, r
    assert "a/1" not in r.out and "note: 1 summary.json not readable" in r.out, r


def test_runs_shows_a_summary_with_wrong_types_as_blanks(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    (tmp_path / "summary.json").write_text('{"test": [1], "epochs_run": {"a": 1}, '
                                           '"train_samples_per_s": "fast"}')
    r = cli("runs", tmp_path)
    assert r.code == 0 and str(tmp_path) in r.out, r


def test_runs_of_the_root_folder_is_bounded(cli):
    """`dlc runs /` looks RUN_DEPTH folders deep, not through the whole file system; whatever
    it finds or not, it answers (exit 0, or 1 with one line)."""
    r = cli("runs", "/")
    assert r.code in (0, 1) and "unexpected" not in r.err, r


def test_runs_on_a_file(cli, tmp_path):
    (tmp_path / "f").write_text("x")
    one_line(cli("runs", tmp_path / "f"), 1, "is not a folder")


def test_plot_skips_malformed_metrics_rows(cli, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,0.5,0.6\n2,abc,0.5\n"
                                     "3,0.3\n4,0.2,0.3,9\n5,0.1,0.2\n")
    r = cli("plot", run, "-o", tmp_path / "c.png")
    assert r.code == 0 and (tmp_path / "c.png").is_file(), r
    assert "metrics.csv:3: row skipped" in r.out and "metrics.csv:5: row skipped" in r.out, r


@pytest.mark.parametrize("text", ["", "epoch\n", "a,b\nx,y\n", "epoch,train_loss\nx,1\n"],
                         ids=["empty", "header-only", "no-epoch", "no-number"])
def test_plot_with_no_usable_row(cli, tmp_path, text):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.csv").write_text(text)
    r = cli("plot", tmp_path, "-o", tmp_path / "c.png")
    one_line(r, 1, "metrics.csv")


# ---- 22: onnxruntime's own log line ----------------------------------------------------------
def test_failed_run_has_no_onnxruntime_log_line(tmp_path):
    """A model whose Reshape fails at run time: dlc's one line, no coloured ORT log before it
    (written by onnxruntime's C++ logger to fd 2, so a subprocess is needed to see it)."""
    import onnx
    from onnx import helper, numpy_helper

    path = _iris(tmp_path, "bad.onnx", json.dumps)
    model = onnx.load_model_from_string(path.read_bytes())
    model.graph.initializer.append(numpy_helper.from_array(np.array([7, -1], np.int64), "shp"))
    for node in model.graph.node:
        node.input[:] = ["reshaped" if v == "input" else v for v in node.input]
    model.graph.node.insert(0, helper.make_node("Reshape", ["input", "shp"], ["reshaped"]))
    path.write_bytes(model.SerializeToString())
    r = run_dlc("predict", path, SAMPLE)
    one_line(r, 1, "onnxruntime cannot run")
    assert r.err.startswith("error:") and "\x1b[" not in r.err, r


def test_readme_states_the_limits_dlc_applies():
    """The figures of the README's "What dlc trusts and what it refuses" are the constants."""
    from conftest import ROOT
    from dlc.commands import runs as tools
    from dlc.files import untrusted as userfiles
    from dlc.data._targets import MAX_CLASSES
    from dlc.runtime.predictions import MAX_TEXT_ROWS
    from dlc.model.spec.expand import MAX_LAYERS

    text = (ROOT / "README.md").read_text()
    section = text.split("## What dlc trusts and what it refuses")[1].split("\n## ")[0]
    section = " ".join(section.split())  # line breaks as spaces
    gib = lambda n: f"{n // 2**30} GiB"  # noqa: E731
    for figure in (f"{userfiles.MAX_SPEC_BYTES // 2**20} MiB (`MAX_SPEC_BYTES`)",
                   f"{userfiles.MAX_NESTING} levels deep (`MAX_NESTING`",
                   f"{MAX_LAYERS:,} layers", f"{gib(userfiles.MAX_TABLE_BYTES)} (`MAX_TABLE_BYTES`)",
                   f"over {gib(userfiles.MAX_ARRAY_BYTES)} (`MAX_ARRAY_BYTES`, "
                   f"{gib(userfiles.MAX_NPZ_BYTES)} for a whole archive)",
                   f"under {MAX_CLASSES:,} (`MAX_CLASSES`)", f"{MAX_TEXT_ROWS:,} rows",
                   f"{['zero', 'one', 'two', 'three', 'four'][tools.RUN_DEPTH]} folders deep"):
        assert figure in section, figure
