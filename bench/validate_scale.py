"""`dlc validate` on specs of N plain layers: building and checking a network is linear in N.

Each spec is N dense layers of varied widths and activations (so that no two neighbours are the
same and schema validation cannot share work between them); each size is validated `--runs`
times as a fresh `python -m dlc validate` process and the median wall time printed, with the
time per 1,000 layers. One JSON line on stdout (a table on stderr).

    .venv/bin/python bench/validate_scale.py [--layers 1000,4000,10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def spec_text(n: int) -> str:
    acts = ("relu", "tanh", "gelu")
    layers = [{"type": "dense", "units": 4 + i % 61, "activation": acts[i % 3]}
              for i in range(n - 1)] + [{"type": "dense", "units": 3}]
    return yaml.safe_dump({"dlc": 1, "name": f"plain-{n}", "input": {"shape": [4]},
                           "layers": layers, "task": {"kind": "classification"}})


def wall(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dlc", "validate", str(path)], cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="1000,4000,10000")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.layers.split(",")):
            path = Path(tmp) / f"plain{n}.yaml"
            path.write_text(spec_text(n))
            result[n] = statistics.median(wall(path) for _ in range(args.runs))
            print(f"{n:>6} layers: {result[n]:.2f} s ({1000 * result[n] / n:.3f} s per 1,000)",
                  file=sys.stderr)
    print(json.dumps({"bench": "validate_scale", "runs": args.runs,
                      "seconds": {str(k): round(v, 3) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
