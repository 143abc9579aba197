"""A multi-task spec against its single-task baselines, on the same data and splits.

For every output of SPEC (`outputs:`), the baseline is the same spec cut down to that output:
the same trunk, only that output's head layer, `task:` = that output's task and `data.target` =
its column. Each configuration is trained with train.seed 0..R-1 (same data split); the test
metrics of every run and their means are printed as one JSON line (a table on stderr).

    .venv/bin/python bench/multitask.py [--spec specs/penguins_multitask.yaml] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlc.train.run import train  # noqa: E402
from dlc.model.spec import load_spec_text  # noqa: E402


def single_task(spec: dict, name: str) -> dict:
    """The spec with only output `name`: its task, its column, no other output's head layer."""
    out = copy.deepcopy(spec)
    heads = out.pop("outputs")
    task = {k: v for k, v in heads[name].items() if k not in ("layer", "target", "weight")}
    others = {h["layer"] for n, h in heads.items() if n != name}
    out["layers"] = [cfg for cfg in out["layers"] if cfg["name"] not in others]
    mine = next(i for i, cfg in enumerate(out["layers"]) if cfg["name"] == heads[name]["layer"])
    out["layers"].append(out["layers"].pop(mine))  # its head is the last layer
    out["task"] = task
    out["data"]["target"] = heads[name]["target"]
    out["name"] = f"{spec['name']}-{name}"
    return out


def run(doc: dict, spec_file: Path, seed: int, tmp: Path) -> dict:
    doc = copy.deepcopy(doc)
    doc["train"]["seed"] = seed
    spec = load_spec_text(yaml.safe_dump(doc, sort_keys=False), str(spec_file))
    path = train(spec, out=str(tmp / f"{doc['name']}-{seed}"), force=True, quiet=True)
    return json.loads((path / "summary.json").read_text())["test"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "specs" / "penguins_multitask.yaml"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    spec_file = Path(args.spec).resolve()
    doc = load_spec_text(spec_file.read_text(), str(spec_file)).data  # defaults filled in
    result = {"spec": str(spec_file), "repeats": args.repeats, "outputs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        multi = [run(doc, spec_file, s, Path(tmp)) for s in range(args.repeats)]
        for name, task in doc["outputs"].items():
            alone = [run(single_task(doc, name), spec_file, s, Path(tmp))
                     for s in range(args.repeats)]
            per = {}
            for metric in task["metrics"]:
                m = [r[f"{name}.{metric}"] for r in multi]
                a = [r[metric] for r in alone]
                per[metric] = {"multitask": m, "single": a,
                               "multitask_mean": sum(m) / len(m), "single_mean": sum(a) / len(a)}
                print(f"{name:>12} {metric:>9}: multi-task {per[metric]['multitask_mean']:.4f}  "
                      f"single-task {per[metric]['single_mean']:.4f}", file=sys.stderr)
            result["outputs"][name] = per
    print(json.dumps(result))


if __name__ == "__main__":
    main()
