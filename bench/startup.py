"""Cold-start timing of the dlc CLI, hyperfine style, plus an import check.

    .venv/bin/python bench/startup.py [--runs 20] [--warmup 2] [--spec specs/digits_mlp.yaml]
        [--via script|module] [--json-only]

For each command (`dlc --help`, `dlc validate SPEC`) it runs --warmup untimed runs (fills the OS
page cache, like hyperfine --warmup), then --runs timed runs as fresh subprocesses, and reports
mean / median / min / max / stdev wall milliseconds (fork+exec to exit, stdout/stderr discarded).
`--via script` (default) runs the venv's `dlc` console script next to sys.executable;
`--via module` runs `sys.executable -m dlc` (falls back to it when the script is missing).

Import check: `python -X importtime -m dlc validate SPEC` (and `... -m dlc --help`) once each;
stderr is parsed for the modules imported. The CLI promises that `--help` and `validate` never
load numpy or onnxruntime; the JSON says whether they (and torch, onnx, sklearn, rich, ...) were
imported, and lists the 10 slowest top-level import events grouped by root package
(cumulative ms).

Output: one JSON line on stdout (and a small table on stderr unless --json-only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SPEC, ROOT, ForeignLoad, cores  # noqa: E402

WATCH = ["numpy", "onnxruntime", "onnx", "torch", "sklearn", "scipy", "rich", "typer",
         "jsonschema", "yaml"]


def base_command(via: str) -> list[str]:
    script = Path(sys.executable).with_name("dlc")
    if via == "script" and script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dlc"]


def time_runs(cmd: list[str], runs: int, warmup: int) -> dict:
    env = {**os.environ, "NO_COLOR": "1"}

    def once() -> tuple[float, int]:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=env).returncode
        return (time.perf_counter() - t0) * 1e3, rc

    for _ in range(warmup):
        once()
    ms, codes = [], set()
    for _ in range(runs):
        t, rc = once()
        ms.append(t)
        codes.add(rc)
    return {"mean_ms": round(statistics.fmean(ms), 1), "median_ms": round(statistics.median(ms), 1),
            "min_ms": round(min(ms), 1), "max_ms": round(max(ms), 1),
            "stdev_ms": round(statistics.stdev(ms), 1) if len(ms) > 1 else 0.0,
            "exit_codes": sorted(codes)}


_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_check(cli_args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "dlc", *cli_args],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "NO_COLOR": "1"})
    modules: dict[str, int] = {}  # module -> cumulative us
    top: dict[str, int] = {}  # top-level (indent 1) package -> cumulative us
    for line in proc.stderr.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        cumulative, indent, name = int(m.group(2)), len(m.group(3)), m.group(4)
        modules[name] = cumulative
        if indent <= 1:
            root = name.split(".")[0]
            top[root] = top.get(root, 0) + cumulative
    imported = {w: any(n == w or n.startswith(w + ".") for n in modules) for w in WATCH}
    slowest = sorted(top.items(), key=lambda kv: -kv[1])[:10]
    return {"rc": proc.returncode, "modules": len(modules),
            "total_import_ms": round(sum(top.values()) / 1e3, 1),
            "imported": imported,
            "slowest_top_level_ms": {k: round(v / 1e3, 1) for k, v in slowest}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--via", choices=["script", "module"], default="script")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()

    base = base_command(args.via)
    spec = args.spec.resolve()
    commands = {"help": [*base, "--help"], "validate": [*base, "validate", str(spec)]}
    with ForeignLoad(children=True) as fl:
        results = {name: time_runs(cmd, args.runs, args.warmup) for name, cmd in commands.items()}
        baseline = time_runs([sys.executable, "-c", "pass"], args.runs, args.warmup)
    check = import_check(["validate", str(spec)])
    help_check = import_check(["--help"])
    out = {"bench": "startup", "cores": cores(), "runs": args.runs, "warmup": args.warmup,
           "via": " ".join(Path(base[0]).name if i == 0 else a for i, a in enumerate(base)),
           **{f"dlc_{k}": v for k, v in results.items()},
           "python_bare": baseline,
           "validate_imports_numpy": check["imported"]["numpy"],
           "validate_imports_onnxruntime": check["imported"]["onnxruntime"],
           "validate_import_check": check,
           "help_import_check": help_check,
           "loadavg_1min": round(os.getloadavg()[0], 2),
           "foreign_cpu_share": None if fl.value is None else round(fl.value, 3),
           "python": sys.version.split()[0]}
    print(json.dumps(out), flush=True)
    if not args.json_only:
        print(f"# {'command':<22}{'mean':>8}{'median':>8}{'min':>8}{'max':>8}"
              f"  (ms, {args.runs} runs)", file=sys.stderr)
        for name, r in [("dlc --help", results["help"]), ("dlc validate", results["validate"]),
                        ("python -c pass", baseline)]:
            print(f"# {name:<22}{r['mean_ms']:>8}{r['median_ms']:>8}{r['min_ms']:>8}"
                  f"{r['max_ms']:>8}", file=sys.stderr)
        print(f"# --help slowest: {help_check['slowest_top_level_ms']}", file=sys.stderr)
        print(f"# validate imports numpy: {check['imported']['numpy']}, onnxruntime: "
              f"{check['imported']['onnxruntime']}; slowest: {check['slowest_top_level_ms']}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
