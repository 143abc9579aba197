"""bench/distributed.py, docs/distributed.md's measured table: the speed suite's models (one list,
bench/suite.py's), each measured fused and with 1, 2, 4 workers in torchrun-style processes;
its command lines, and one short real run (figures not checked: timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from oracles import needs_torch

BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import suite  # noqa: E402


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(BENCH / "distributed.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_the_bench_covers_the_suite_models_and_filters_them():
    """--dry-run: each worker's command line. By default every model of suite.MODELS, fused
    then 1, 2 and 4 workers (one process per rank, its RANK and WORLD_SIZE); --models keeps
    those named, an unknown one is a usage error naming the suite's."""
    r = bench("--dry-run")
    assert r.returncode == 0, r.stderr
    children = [line.split("--child ")[1].split() for line in r.stdout.splitlines()]
    assert [c[0] for c in children] == [m for m in suite.MODELS for _ in range(1 + 1 + 2 + 4)]
    r = bench("--dry-run", "--models", "textcls,mlp", "--workers", "1,2", "--steps", "3")
    lines = r.stdout.splitlines()
    assert [(line.split()[0], line.split()[1], line.split()[-4], line.split()[-1])
             for line in lines[:4]] == [("RANK=0", "WORLD_SIZE=1", "textcls", "fused"),
                                        ("RANK=0", "WORLD_SIZE=1", "textcls", "split"),
                                        ("RANK=0", "WORLD_SIZE=2", "textcls", "split"),
                                        ("RANK=1", "WORLD_SIZE=2", "textcls", "split")]
    assert len(lines) == 8 and all(" 3 2 " in line for line in lines)  # --steps, --warmup
    r = bench("--dry-run", "--models", "mlp,vgg")
    assert r.returncode == 2 and "unknown model 'vgg'; the suite's are mlp, resnet20" in r.stderr


@needs_torch
def test_the_bench_measures_a_model_and_prints_the_docs_table():
    """One timed step of the wide MLP, fused and with 1 and 2 workers (gloo over loopback): the
    all-reduced vector is 4 bytes x (parameters + the loss + N x B x 10 logits), as the docs
    say, and the markdown table has the model's three rows."""
    r = bench("--models", "mlp", "--workers", "1,2", "--steps", "1", "--warmup", "1",
              "--markdown", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[0])
    row = result["results"]["mlp"]
    params = row["fused"]["params"]
    assert params == 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    for n in (1, 2):
        assert row[str(n)]["wire_bytes"] == 4 * (params + 1 + n * 256 * 10)
        assert row[str(n)]["allreduce_ms"] is not None and row[str(n)]["efficiency"] > 0
    assert row["1"]["efficiency"] == 1.0 and row["fused"]["allreduce_ms"] is None
    table = r.stdout.splitlines()[1:]
    assert table[0] == "| model | fused, 1 process | 1 worker | 2 workers |"
    assert table[2].startswith("| MLP 784-1024-1024-10, batch 256, Adam: step ms | ")
    assert table[3].startswith("| all-reduce ms (7.5 MB at 2) | - | ")
    assert table[4].startswith("| efficiency | - | 1.0 | ")
