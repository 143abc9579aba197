"""Shared fixtures: run the real CLI entry point in-process or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


@pytest.fixture(autouse=True, scope="session")
def _graph_cache(tmp_path_factory):
    """Optimised graphs (dlc/runtime/graphcache.py) of the tests go to a temporary folder, not
    the user's cache (a DLC_CACHE_DIR set outside wins)."""
    os.environ.setdefault("DLC_CACHE_DIR", str(tmp_path_factory.mktemp("dlc-cache")))


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out[-500:]!r}, err={self.err[-1500:]!r})"


@pytest.fixture
def cli(capsys, monkeypatch):
    """Call `dlc.cli.main` (the console script's entry point) with argv; capture exit and output."""
    from dlc.cli import main

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["dlc", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_dlc(*args: str, cwd: Path | None = None, timeout: float = 300) -> Result:
    """The console script in a fresh interpreter (what a user runs)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "dlc", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def interrupt_in_epoch(monkeypatch, epoch: int):
    """Ctrl-C as training starts epoch `epoch` (1-based): Trainer.train_epoch raises
    KeyboardInterrupt there. Returns a function that restores the real train_epoch."""
    from dlc.train.trainer import Trainer

    original = Trainer.train_epoch

    def interrupted(self, on_step=None):
        if self.state.epoch == epoch - 1:
            raise KeyboardInterrupt
        return original(self, on_step)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    return lambda: monkeypatch.setattr(Trainer, "train_epoch", original)


def straight_and_resumed(cli, monkeypatch, tmp_path: Path, spec, args, epoch: int):
    """Train `spec` with `args` straight through (tmp_path/straight) and again interrupted in
    epoch `epoch`, then resumed (tmp_path/broken); the two run folders."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    r = cli("train", spec, "--out", straight, *args)
    assert r.code == 0, r
    restore = interrupt_in_epoch(monkeypatch, epoch)
    r = cli("train", spec, "--out", broken, *args)
    assert r.code == 130, r
    restore()
    r = cli("train", "--resume", broken, "-q")
    assert r.code == 0, r
    return straight, broken


def raises_one_line(fn, *substrings) -> str:
    """fn() raises a one-line DlcError holding every substring; its message."""
    from dlc.errors import DlcError

    with pytest.raises(DlcError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for s in substrings:
        assert s in message, message
    return message


def trained_model(tmp_path_factory, spec: str, *overrides: str) -> Path:
    """model.onnx of specs/`spec` trained with `overrides` (quietly, in a fresh temporary run
    folder): for module-scoped fixtures."""
    from dlc.model.spec import load_spec
    from dlc.train.run import train

    out = tmp_path_factory.mktemp(spec.split(".")[0]) / "run"
    train(load_spec(SPECS / spec, list(overrides)), str(out), quiet=True)
    return out / "model.onnx"
