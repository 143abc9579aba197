"""Everyday CLI use: help that shows flags as flags, shell completion, progress with elapsed time,
ETA and throughput (a bar on a terminal, a line per epoch when piped, JSON lines on request),
`dlc runs` with start time, spec name, epochs and best value, and one `--device` default."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

import pytest
from conftest import SPECS, run_dlc


@pytest.mark.parametrize("command", ["train", "evaluate", "graph"])
def test_help_shows_flags_without_a_value_type(cli, command):
    r = cli(command, "--help")
    assert r.code == 0, r
    lines = [line for line in r.out.splitlines() if "--help" in line or "--force" in line
             or "--per-class" in line]
    assert lines and not any("<bool>" in line or "BOOLEAN" in line for line in lines), r.out


def test_root_help_offers_completion(cli):
    r = cli("--help")
    assert r.code == 0 and "--install-completion" in r.out and "--show-completion" in r.out, r


@pytest.mark.parametrize("words,cword,expected", [
    ("dlc tr", "1", "train"),
    ("dlc train --lo", "2", "--log-format"),
])
def test_bash_completion_completes_commands_and_options(cli, monkeypatch, words, cword, expected):
    monkeypatch.setenv("_DLC_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", cword)
    r = cli()
    assert r.code == 0 and r.out.split() == [expected], r


def test_piped_progress_is_one_line_per_epoch_with_elapsed_and_eta(tmp_path):
    r = run_dlc("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "--epochs", "3",
                "--device", "cpu")
    assert r.code == 0, r
    lines = [line for line in r.err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"], r.err
    assert all(" elapsed 0:00:" in line and " eta 0:00:" in line for line in lines), r.err
    assert lines[-1].endswith("eta 0:00:00")


def test_jsonl_log_format_is_json_on_stdout(cli, tmp_path):
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "--epochs", "3",
            "--log-format", "jsonl")
    assert r.code == 0, r
    events = [json.loads(line) for line in r.out.splitlines()]  # every line is JSON
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all({"train_loss", "val_accuracy", "elapsed_s", "eta_s", "time"} <= set(e)
               for e in epochs)
    assert epochs[-1]["eta_s"] == 0 and epochs[0]["elapsed_s"] <= epochs[-1]["elapsed_s"]
    end = events[-1]
    assert end["event"] == "end" and end["run"] == str(tmp_path / "run") and "time" in end
    assert end["test"]["accuracy"] == json.loads((tmp_path / "run" / "summary.json")
                                                 .read_text())["test"]["accuracy"]
    assert "epoch 1/3" not in r.err


def test_unknown_log_format_is_a_usage_error(cli, tmp_path):
    r = cli("train", SPECS / "iris.yaml", "--out", tmp_path / "run", "--log-format", "xml")
    assert r.code == 2 and "--log-format" in r.err, r


def test_terminal_bar_shows_elapsed_eta_and_throughput():
    from rich.console import Console

    from dlc.train.report import Bar

    out = io.StringIO()
    bar = Bar(64, Console(file=out, force_terminal=True, width=160))
    bar.start_epoch(1, 2, 10)
    for i in range(1, 11):
        bar.step(i, 10, 0.5)
    bar.progress.refresh()
    text = out.getvalue()
    bar.close()
    assert "epoch 1/2" in text and "step 10/10" in text and "samples/s" in text, text
    assert "eta" in text and "0:00:0" in text, text
    assert bar.progress.tasks[0].completed == 10 and bar.progress.tasks[0].total == 20


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    out = tmp_path_factory.mktemp("runs") / "iris-run"
    train(load_spec(SPECS / "iris.yaml", ["train.epochs=4"]), str(out), quiet=True,
          device="cpu")
    return out


def test_runs_lists_start_spec_epochs_and_best(cli, run_folder):
    from dlc.commands.runs import list_runs

    (found,), unread = list_runs(run_folder.parent)
    assert unread == 0
    with (run_folder / "metrics.csv").open() as f:
        val_loss = [float(row["val_loss"]) for row in csv.DictReader(f)]
    assert found["name"] == "iris" and found["epochs"] == 4
    assert found["best"] == {"column": "val_loss", "value": pytest.approx(min(val_loss), 1e-7),
                             "epoch": val_loss.index(min(val_loss)) + 1}
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert found["started"].startswith(today)
    r = cli("runs", run_folder.parent)
    assert r.code == 0, r
    assert today in r.out and "iris" in r.out and "val_loss" in r.out and "started" in r.out


def _device_default(name: str):
    import typer

    from dlc.cli import app

    command = typer.main.get_command(app).commands[name]
    return next(p.default for p in command.params if p.name == "device")


@pytest.mark.parametrize("name", ["evaluate", "predict", "cv", "tune", "explain", "quantize"])
def test_every_command_that_runs_a_model_defaults_to_auto(name):
    assert _device_default(name) == "auto"


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain", "quantize"])
def test_models_run_on_auto_by_default(cli, monkeypatch, run_folder, tmp_path, command):
    import importlib
    import sys

    from dlc.runtime import session

    asked = []
    real = session.choose_device
    importlib.import_module(f"dlc.commands.{command}")  # and what it imports by name
    for module in [m for n, m in sys.modules.items() if n.startswith("dlc.")
                   and getattr(m, "choose_device", None) is real]:
        monkeypatch.setattr(module, "choose_device", lambda d: asked.append(d) or real("cpu"))
    model, sample = run_folder / "model.onnx", SPECS / "data" / "iris_sample.csv"
    args = {"predict": [sample], "evaluate": ["--data", "builtin:iris"], "explain": [sample],
            "quantize": ["-o", tmp_path / "int8.onnx"]}[command]
    r = cli(command, model, *args)
    assert r.code == 0, r
    assert asked and set(asked) == {"auto"}


def test_runs_lists_a_run_without_its_spec_file(cli, run_folder, tmp_path):
    import shutil

    copy = tmp_path / "runs" / "copy"
    shutil.copytree(run_folder, copy)
    (copy / "spec.yaml").write_text("[not a mapping\n")
    (copy / "run.json").write_text("{}")  # no start time: run.json's own time stands in
    r = cli("runs", tmp_path / "runs")
    assert r.code == 0 and "copy" in r.out, r
