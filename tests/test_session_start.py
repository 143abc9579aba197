"""Time to the first step (issue 14): sessions prepared by graph size, optimised graphs reused
across runs from a cache that survives damage and races; and `dlc summary`'s memory estimate."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SPECS


def _chain(nodes: int):
    """y = x + 1 + 1 + ... : a graph of `nodes` Add nodes."""
    from dlc.graph import Builder

    b = Builder()
    x = b.input("x", "float32", ["N", 4])
    for _ in range(nodes):
        x = b.Add(x, b.const(np.ones(4, np.float32)))
    b.output(x, "y", "float32", ["N", 4])
    return b.model("chain")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ort-graphs"


def _y(sess, rows: int = 2):
    return sess.run(None, {"x": np.zeros((rows, 4), np.float32)})[0]


def test_preparation_by_graph_size():
    from dlc.runtime.session import preparation, session_options

    assert preparation(90) == ("ORT_ENABLE_ALL", True, False)
    assert preparation(6000) == ("ORT_ENABLE_EXTENDED", False, True)
    small, big = session_options(1, 90), session_options(1, 6000)
    assert small.enable_mem_reuse and not big.enable_mem_reuse  # the planner that took 4.5 s
    assert big.graph_optimization_level.name == "ORT_ENABLE_EXTENDED"
    # a memory pattern held ResNet-20's step at 1.7x the peak RSS (bench/suite.py)
    assert not small.enable_mem_pattern and not big.enable_mem_pattern


def test_optimised_graph_is_cached_and_reused(cache, monkeypatch):
    import onnxruntime as ort

    from dlc.runtime import session

    model = _chain(1200)
    first = session.make_session(model, threads=1)
    files = list(cache.glob("*.onnx"))
    assert len(files) == 1
    made = []
    real = ort.InferenceSession

    def spy(source, opts, **kw):
        made.append((type(source), opts.graph_optimization_level.name))
        return real(source, opts, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    second = session.make_session(model, threads=1)
    assert made == [(bytes, "ORT_DISABLE_ALL")]  # loaded from the cache, not optimised again
    np.testing.assert_array_equal(_y(second), _y(first))
    assert _y(second)[0, 0] == 1200
    assert list(cache.glob("*.onnx")) == files


def test_small_graphs_and_disabled_cache_write_nothing(cache, monkeypatch):
    from dlc.runtime.session import make_session

    make_session(_chain(20), threads=1)
    assert not cache.exists() or not list(cache.glob("*.onnx"))
    monkeypatch.setenv("DLC_CACHE_DIR", "off")
    assert _y(make_session(_chain(1200), threads=1))[0, 0] == 1200
    assert not cache.exists() or not list(cache.glob("*.onnx"))


@pytest.mark.parametrize("damage", ["truncated", "garbage_with_its_digest"])
def test_damaged_cache_file_is_replaced(cache, damage):
    import hashlib

    from dlc.runtime.session import make_session

    model = _chain(1200)
    make_session(model, threads=1)
    (path,) = cache.glob("*.onnx")
    if damage == "truncated":  # the name's digest no longer matches
        path.write_bytes(path.read_bytes()[:1000])
    else:  # a digest that matches, but onnxruntime cannot load it
        junk = b"not an onnx model"
        path.unlink()
        path = path.with_name(f"{path.stem.rsplit('-', 1)[0]}-"
                              f"{hashlib.sha256(junk).hexdigest()[:16]}.onnx")
        path.write_bytes(junk)
    assert _y(make_session(model, threads=1))[0, 0] == 1200
    (fresh,) = cache.glob("*.onnx")
    assert fresh.stat().st_size > 1000 and fresh.read_bytes() != b"not an onnx model"


def test_concurrent_processes_share_one_cache_entry(cache):
    code = ("import sys; sys.path.insert(0, 'tests'); from test_session_start import _chain, _y; "
            "from dlc.runtime.session import make_session; "
            "print(_y(make_session(_chain(1200), threads=1))[0, 0])")
    env = {**__import__("os").environ, "DLC_CACHE_DIR": str(cache.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.strip() for o, _ in outs] == ["1200.0"] * 3
    assert len(list(cache.glob("*.onnx"))) == 1 and not list(cache.glob(".*.tmp"))


def test_cached_train_session_trains_identically(cache):
    """The train step from the cached optimised graph gives the very same step as a fresh one."""
    from dlc.model.network import build_network
    from dlc.runtime.session import make_session
    from dlc.runtime.stepper import HostStepper
    from dlc.model.spec import load_spec
    from dlc.train.step import build_train_step

    net = build_network(load_spec(SPECS / "lstm_forecast.yaml", ["layers.0.units=4"]))
    step = build_train_step(net)
    assert len(step.model.graph.node) > 1000  # cached
    params = step.pack(net.init_params(0))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(8, 24, 1)).astype(np.float32),
             "y": rng.normal(size=(8, 6)).astype(np.float32),
             "lr": np.array(0.01, np.float32), "step": np.array(1, np.float32)}
    results = []
    for _ in range(2):  # the first writes the cache, the second reads it
        s = HostStepper(make_session(step.model, threads=1),
                        {"params": params, **{f"state.{k}": np.zeros_like(params)
                                              for k in step.states}})
        results.append((s.run(feeds)["loss"], s._pending["params"]))
    assert len(list(cache.glob("*.onnx"))) == 1
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_memory_is_the_most_bytes_alive_at_once():
    from dlc.commands.summary import _peak_alive, _tensor_bytes

    model = _chain(5)  # x -> Add -> Add -> ... -> y, each [N, 4] float32
    sizes = _tensor_bytes(model, 10)
    assert sizes["x"] == sizes["y"] == 160
    # the input stays alive; each Add's output lives until the next one has read it
    assert _peak_alive(model, sizes) == 3 * 160


def test_summary_shows_memory_and_warns_past_the_device(cli):
    from dlc.model.spec import load_spec
    from dlc.commands.summary import memory

    m = memory(load_spec(SPECS / "digits_mlp.yaml"))
    hidden, params = (256 + 256) * 64 * 4, 85002 * 4  # fc1 and fc2 outputs; every parameter
    assert m["inference"] >= hidden + params
    assert m["training"] >= 3 * params * 2 + hidden  # params and Adam's m, v: read and written
    bigger = memory(load_spec(SPECS / "digits_mlp.yaml", ["train.batch_size=128"]))
    assert bigger["training"] > m["training"] and bigger["inference"] > m["inference"]
    r = cli("summary", SPECS / "digits_mlp.yaml")
    assert r.code == 0 and "memory at batch 64" in r.out and "training" in r.out, r
    assert "warning" not in r.err
    r = cli("summary", SPECS / "digits_cnn.yaml", "--set", "train.batch_size=100000000")
    assert r.code == 0 and "more than the" in r.err and "of host RAM" in r.err, r
    r = cli("summary", SPECS / "digits_mlp.yaml", "--device", "tpu")
    assert r.code == 2 and "unknown device" in r.err, r


@pytest.mark.parametrize("spec, overrides", [
    ("lstm_forecast.yaml", []),
    ("digits_resnet.yaml", ["layers.1.repeat=4"]),  # convolutions: onnxruntime's NCHWc layouts
])
def test_runs_from_a_cold_and_a_warm_cache_agree(cli, cache, tmp_path, spec, overrides):
    args = ["-q", "--epochs", "1", *[a for o in overrides for a in ("--set", o)]]
    for run in ("cold", "warm"):
        r = cli("train", SPECS / spec, "--out", tmp_path / run, *args)
        assert r.code == 0, r
    assert len(list(cache.glob("*.onnx"))) >= 1  # the train step's optimised graph
    assert ((tmp_path / "cold" / "metrics.csv").read_text()
            == (tmp_path / "warm" / "metrics.csv").read_text())


def test_cache_keeps_the_newest_graphs_and_drops_stale_temporaries(cache, monkeypatch):
    import os
    import time

    from dlc.runtime import graphcache
    from dlc.runtime.session import make_session

    monkeypatch.setattr(graphcache, "KEEP", 2)
    cache.mkdir(parents=True)
    stale, fresh = cache / ".dead.1.tmp", cache / ".busy.2.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    for k in range(3):
        make_session(_chain(600 + k), threads=1)
    assert len(list(cache.glob("*.onnx"))) == 2
    assert not stale.exists() and fresh.exists()
