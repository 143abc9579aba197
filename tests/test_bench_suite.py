"""bench/suite.py compares like with like: each PyTorch twin (bench/torch_models.py), given
dlc's initial weights by suite.copy_weights, computes the same logits as dlc's compiled model
(inference mode: batchnorm on running statistics, no dropout)."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import suite  # noqa: E402
import torch_models  # noqa: E402


@pytest.mark.parametrize("model", list(suite.MODELS))
def test_torch_twin_with_dlc_weights_computes_dlc_logits(model, tmp_path):
    import onnxruntime as ort

    from dlc.model.compile import compile_spec

    weights = str(tmp_path / "w.npz")
    init = suite.init_worker(Namespace(model=model, weights=weights))
    assert init["train_flops_per_sample"] > 0
    spec, _ = suite.load_net(model)
    x, _ = suite.synthetic(model, 4)
    sess = ort.InferenceSession(compile_spec(spec, seed=0).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {sess.get_inputs()[0].name: x})[0]
    net = torch_models.build(model)
    suite.copy_weights(net, weights)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(logits - expected).max()) < 1e-4 * max(scale, 1.0)


def test_copy_weights_refuses_a_twin_of_another_shape(tmp_path):
    weights = str(tmp_path / "w.npz")
    suite.init_worker(Namespace(model="mlp", weights=weights))
    with pytest.raises(SystemExit, match="parameters"):
        suite.copy_weights(torch_models.build("textcls"), weights)


def test_suite_runs_both_sides_end_to_end():
    """One short run of the smallest model through the real command: each side in its own
    worker process, the profiler breakdown, the markdown table (numbers not checked: timing)."""
    import json
    import subprocess

    r = subprocess.run([sys.executable, str(BENCH / "suite.py"), "--models", "mlp", "--threads",
                        "1", "--repeats", "1", "--steps", "1", "--warmup", "1", "--markdown",
                        "--json-only"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.splitlines()[0])
    for side in ("dlc", "torch"):
        assert result[side]["samples_per_s"] > 0 and result[side]["peak_rss_mb"] > 0
    assert "Gemm" in result["dlc"]["profile"]["top_ops"]
    assert "| MLP 784-1024-1024-10, batch 256, Adam | 1 |" in r.stdout
