"""A table bigger than it should be in memory: time to the first train step and peak RSS of a whole
`dlc train` (one epoch of a tiny MLP) on a 2,000,000 x 8 float CSV, old reader against new, and
on a 2,000,000-row table with column kinds (input.columns: 6 numbers and 2 string columns, all
with missing cells); and `dlc predict` / `dlc evaluate --data` of each table (streamed).

    .venv/bin/python bench/big_table.py [--rows 2000000] [--dir /tmp/dlc-big] [--old f497edb]
        [--before COMMIT] [--repeats 1] [--json-only] [--only columns-build,columns-reuse]

Writes DIR/big.csv (8 float features rounded to 6 decimals, a class 0-2 from them) once, then
runs, each in a fresh interpreter under /usr/bin/time -v:
  baseline   a process that imports everything `dlc train` needs (dlc, numpy, pyarrow,
             onnxruntime) and reads no data: the floor under every peak below
  old        dlc at commit --old (stdlib csv -> lists -> numpy; exported by git archive), skipped
             with --old none
  memory     this checkout, data.cache: false (the table read whole through pyarrow)
  build      this checkout, data.cache: true, an empty cache folder (streams and builds the cache)
  reuse      the same again (memory-maps the cache the build left)
  before-build, before-reuse   build and reuse for dlc at commit --before (a cache folder of
             their own), so that one run gives before/after figures
  columns-memory, columns-build, columns-reuse   this checkout on DIR/columns.csv
             (input.columns) read into memory, building the column cache, reusing it; and
             before-columns at commit --before (its default for the file: data.cache auto)
  predict, predict-npz, columns-predict, columns-predict-npz, columns-evaluate, evaluate
             `dlc predict -o pred.csv|pred.npz` of big.csv and columns.csv, `dlc evaluate
             --data` of each, with models trained once on each table's first MODEL_ROWS rows
             (data.cache: false); and before-predict-npz, before-columns-predict-npz,
             before-columns-evaluate, before-evaluate at --before
             (CSV output of 2M rows is over its MAX_TEXT_ROWS)
first_step_s: seconds from starting the interpreter to the first onnxruntime run of the train
step; wall_s: the whole command; peak_mib: its maximum RSS; above_base_mib: peak - baseline's.
feature_mib is the float32 size of the features (rows x 8 x 4 B; the column table's 8 raw
columns alike: 6 numbers, 2 category codes). Record foreign_cpu_share.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ForeignLoad, cores  # noqa: E402

SPEC = """dlc: 1
name: big
input: {{shape: [8]}}
layers:
  - {{type: dense, name: h, units: 16, activation: relu}}
  - {{type: dense, name: out, units: 3}}
task: {{kind: classification, metrics: [accuracy]}}
data: {{source: csv:big.csv, target: y, split: {{val: 0.1, test: 0.1, seed: 0}}{cache}}}
train: {{epochs: 1, batch_size: 1024, optimizer: {{type: adam, lr: 0.01}}, seed: 0}}
"""

COLUMNS_SPEC = """dlc: 1
name: big-columns
input:
  columns: {{f0: numeric, f1: numeric, f2: numeric, f3: numeric, f4: numeric, f5: numeric,
            colour: categorical, city: categorical}}
layers:
  - {{type: dense, name: h, units: 16, activation: relu}}
  - {{type: dense, name: out, units: 3}}
task: {{kind: classification, metrics: [accuracy]}}
data: {{source: csv:columns.csv, target: y, split: {{val: 0.1, test: 0.1, seed: 0}}{cache}}}
train: {{epochs: 1, batch_size: 1024, optimizer: {{type: adam, lr: 0.01}}, seed: 0}}
"""

# The child: marks the first run of a session that takes a learning rate (the train step).
CHILD = """
import os, runpy, sys, time
import onnxruntime as ort
t0, mark = float(os.environ["BENCH_T0"]), os.environ["BENCH_MARK"]
def hooked(name):
    original = getattr(ort.InferenceSession, name)
    def run(self, *a, **k):
        if not os.path.exists(mark) and any(i.name == "lr" for i in self.get_inputs()):
            open(mark, "w").write(str(time.time() - t0))
        return original(self, *a, **k)
    setattr(ort.InferenceSession, name, run)
for name in ("run", "run_with_iobinding"):
    hooked(name)
if sys.argv[1] == "baseline":
    import numpy, pyarrow.csv, dlc.cli, dlc.data, dlc.train.run  # noqa
    raise SystemExit(0)
sys.argv = ["dlc", *sys.argv[1:]]
runpy.run_module("dlc", run_name="__main__")
"""


def write_csv(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 8)).round(6)
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1] - x[:, 2], [-0.7, 0.7])
    table = pa.table({**{f"f{i}": x[:, i] for i in range(8)}, "y": y})
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(table, tmp)
    tmp.replace(path)


def write_columns_csv(path: Path, rows: int) -> None:
    """6 float features, a colour (5 values) and a city (200 values); 2% of each missing (NA or
    an empty cell); a class 0-2 from them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 6)).round(6)
    colour, city = rng.integers(0, 5, rows), rng.integers(0, 200, rows)
    y = np.digitize(x[:, 0] - x[:, 1] + (colour == 2) - (city < 40), [-0.7, 0.7])
    cols = {f"f{i}": pa.array(x[:, i], mask=rng.random(rows) < 0.02) for i in range(6)}
    names = {"colour": np.array(["red", "green", "blue", "grey", "black"]),
             "city": np.array([f"city {i:03d}" for i in range(200)])}
    for name, codes in (("colour", colour), ("city", city)):
        cells = names[name][codes].astype(object)
        cells[rng.random(rows) < 0.02] = "NA"
        cols[name] = pa.array(cells, pa.string())
    table = pa.table({**cols, "y": y})
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="none"))
    tmp.replace(path)


def run(src: Path, args: list[str], cwd: Path, cache: Path) -> dict:
    mark = cwd / "first_step"
    mark.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "DLC_CACHE_DIR": str(cache),
           "BENCH_MARK": str(mark), "BENCH_T0": repr(time.time())}
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", CHILD, *args], cwd=cwd,
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-25:]}
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return {"first_step_s": round(float(mark.read_text()), 2) if mark.exists() else None,
            "wall_s": round(wall, 2), "peak_mib": round(peak / 1024)}


MODEL_ROWS = 20_000  # rows the predict/evaluate variants' models are trained on (one epoch)


def _models(work: Path) -> dict[str, str]:
    """Models of both specs trained once on the first MODEL_ROWS rows of each table (what a
    model predicts does not matter here, only how the table is read)."""
    out = {}
    for name, spec, source in (("big", SPEC, "big.csv"), ("columns", COLUMNS_SPEC, "columns.csv")):
        model = work / f"model-{name}.onnx"
        out[name] = model.name
        if model.exists():
            continue
        head = "".join(line for _, line in zip(range(MODEL_ROWS + 1), open(work / source)))
        (work / f"head-{source}").write_text(head)
        (work / "spec.yaml").write_text(spec.format(cache=", cache: false").replace(
            f"csv:{source}", f"csv:head-{source}"))
        subprocess.run([sys.executable, "-m", "dlc", "train", "spec.yaml", "--out", f"run-{name}",
                        "--force", "-q", "--device", "cpu"], cwd=work, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        (work / f"run-{name}" / "model.onnx").replace(model)
    return out


def _export(commit: str | None, where: Path) -> Path | None:
    """dlc at `commit`, exported by git archive into `where`; None for none."""
    if commit in (None, "none"):
        return None
    where.mkdir()
    subprocess.run(f"git archive {commit} | tar -x -C {where}", shell=True, check=True, cwd=ROOT)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dir", default="/tmp/dlc-big")
    ap.add_argument("--old", default="f497edb", help="a commit with the old reader, or none")
    ap.add_argument("--before", default=None, help="a commit to compare build/reuse with")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json-only", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated variants (baseline always)")
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    csv = work / "big.csv"
    if not csv.exists():
        write_csv(csv, args.rows)
    if not (work / "columns.csv").exists():
        write_columns_csv(work / "columns.csv", args.rows)
    train = ["train", "spec.yaml", "--out", "run", "--force", "-q", "--device", "cpu"]
    models = _models(work)
    predict = {name: ["predict", models[table], f"{table}.csv", "-o", f"pred.{suffix}"]
               for name, table, suffix in (("predict", "big", "csv"), ("predict-npz", "big", "npz"),
                                           ("columns-predict", "columns", "csv"),
                                           ("columns-predict-npz", "columns", "npz"))}
    evaluate = ["evaluate", models["columns"], "--data", "columns.csv"]
    numeric = ["evaluate", models["big"], "--data", "big.csv"]  # its spec: data.cache false
    results: dict[str, list] = {}
    with ForeignLoad(children=True) as fl, tempfile.TemporaryDirectory() as tmp:
        old, before = _export(args.old, Path(tmp) / "old"), _export(args.before, Path(tmp) / "b")
        for _ in range(args.repeats):  # interleaved, so that a busy spell hits every variant
            cache, cache_before = Path(tempfile.mkdtemp(dir=tmp)), Path(tempfile.mkdtemp(dir=tmp))
            variants = [("baseline", ROOT, ["baseline"], SPEC, "", cache),
                        ("old", old, train, SPEC, "", cache),
                        ("before-build", before, train, SPEC, ", cache: true", cache_before),
                        ("before-reuse", before, train, SPEC, ", cache: true", cache_before),
                        ("memory", ROOT, train, SPEC, ", cache: false", cache),
                        ("build", ROOT, train, SPEC, ", cache: true", cache),
                        ("reuse", ROOT, train, SPEC, ", cache: true", cache),
                        ("before-columns", before, train, COLUMNS_SPEC, "", cache_before),
                        ("columns-memory", ROOT, train, COLUMNS_SPEC, ", cache: false", cache),
                        ("columns-build", ROOT, train, COLUMNS_SPEC, ", cache: true", cache),
                        ("columns-reuse", ROOT, train, COLUMNS_SPEC, ", cache: true", cache),
                        *((name, ROOT, argv, SPEC, "", cache) for name, argv in predict.items()),
                        ("columns-evaluate", ROOT, evaluate, SPEC, "", cache),
                        ("evaluate", ROOT, numeric, SPEC, "", cache),
                        ("before-evaluate", before, numeric, SPEC, "", cache),
                        ("before-predict-npz", before, predict["predict-npz"], SPEC, "", cache),
                        ("before-columns-predict-npz", before, predict["columns-predict-npz"],
                         SPEC, "", cache),
                        ("before-columns-evaluate", before, evaluate, SPEC, "", cache)]
            for name, src, argv, spec, setting, folder in variants:
                if src is None or (args.only and name not in args.only.split(",") + ["baseline"]):
                    continue
                text = spec.format(cache=setting)
                (work / "spec.yaml").write_text(text)
                results.setdefault(name, []).append(run(src, argv, work, folder))
    base = min(r["peak_mib"] for r in results["baseline"])
    for rows in results.values():
        for r in rows:
            if "peak_mib" in r:
                r["above_base_mib"] = r["peak_mib"] - base
    out = {"bench": "big_table", "rows": args.rows, "cores": cores(),
           "feature_mib": round(args.rows * 8 * 4 / 2**20, 1), "csv_mib": round(
               csv.stat().st_size / 2**20), "threads": "onnxruntime default",
           "foreign_cpu_share": None if fl.value is None else round(fl.value, 3),
           "results": results}
    print(json.dumps(out), flush=True)
    if not args.json_only:
        for name, rows in results.items():
            for r in rows:
                print(f"# {name:<9} " + "  ".join(f"{k} {v}" for k, v in r.items()),
                      file=sys.stderr)
        print(f"# features {out['feature_mib']} MiB float32, csv {out['csv_mib']} MiB, "
              f"foreign CPU share {out['foreign_cpu_share']}", file=sys.stderr)


if __name__ == "__main__":
    main()
