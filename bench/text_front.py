"""The in-graph text front (dlc.model.text_front) on the 5,000 WordNet glosses: raw strings to
token ids in one onnxruntime run, as `dlc predict` and `dlc train` run it.

    .venv/bin/python bench/text_front.py [--repeats 7] [--baseline DIR] [--json-only]

The front of specs/text_classifier.yaml (its max_length, vocabulary and lowercasing; the
vocabulary built from all glosses) over all 5,000 glosses in one `session.run`; `--repeats`
interleaved runs of each variant after one untimed run, median wall and CPU seconds (CPU: this
process's, the figure to compare on a shared machine at one intra-op thread) with
`foreign_cpu_share`. With `--baseline DIR` the same front built by the dlc in DIR (`git archive`
of an older commit; a subprocess with DLC_SRC=DIR) is timed beside it, its ids checked equal.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, ForeignLoad, cores, versions  # noqa: E402  (adds ROOT to sys.path)

SPEC = ROOT / "specs" / "text_classifier.yaml"


def glosses() -> list[str]:
    with open(SPEC.parent / "data" / "wordnet_glosses.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def front_model() -> bytes:
    """The spec's text front, its vocabulary built from every gloss, as a serialised model."""
    from dlc.data.text import text_config
    from dlc.graph.builder import Builder
    from dlc.model.spec import load_spec
    from dlc.model.text_front import text_front

    ts = text_config(load_spec(SPEC).data).build(glosses())
    b = Builder()
    ids = text_front(b, b.input("input", "string", ["N"]), list(ts.vocab), ts.max_length,
                     ts.lowercase)
    b.output(ids, "ids", "int64")
    return b.model("text_front").SerializeToString()


def baseline_model(src: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d, "front.onnx")
        subprocess.run([sys.executable, __file__, "--emit", str(out)], check=True,
                       env={**os.environ, "DLC_SRC": str(Path(src).resolve())})
        return out.read_bytes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--baseline", help="also time the front built by the dlc in this tree")
    p.add_argument("--json-only", action="store_true")
    p.add_argument("--emit", help=argparse.SUPPRESS)  # internal: write the front model here
    a = p.parse_args()
    if a.emit:
        Path(a.emit).write_bytes(front_model())
        return
    import onnxruntime as ort

    models = {"dlc": front_model(), **({"baseline": baseline_model(a.baseline)}
                                       if a.baseline else {})}
    sessions = {k: ort.InferenceSession(m, providers=["CPUExecutionProvider"])
                for k, m in models.items()}
    feed = {"input": np.array(glosses(), dtype=object)}
    ids = {k: s.run(None, feed)[0] for k, s in sessions.items()}  # untimed first run
    assert all(np.array_equal(v, ids["dlc"]) for v in ids.values()), "fronts differ"
    wall, cpu = ({k: [] for k in sessions} for _ in range(2))
    with ForeignLoad() as fl:
        for _ in range(a.repeats):
            for k, s in sessions.items():
                w, c = time.perf_counter(), time.process_time()
                s.run(None, feed)
                wall[k].append(time.perf_counter() - w)
                cpu[k].append(time.process_time() - c)
    r = {"bench": "text_front", "texts": len(feed["input"]), "repeats": a.repeats,
         "wall_s": {k: round(statistics.median(v), 3) for k, v in wall.items()},
         "cpu_s": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
         "foreign_cpu_share": fl.value, "cores": cores(), **versions()}
    print(json.dumps(r), flush=True)
    if not a.json_only:
        print("# " + ", ".join(f"{k}: {r['wall_s'][k]} s wall, {r['cpu_s'][k]} s CPU"
                               for k in sessions)
              + f"  (foreign share {fl.value or 0:.2f})", file=sys.stderr)


if __name__ == "__main__":
    main()
