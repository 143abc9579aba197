"""README command 1 on a fresh virtual environment: wall time and the venv's size.

    python3 bench/install.py [--ref HEAD] [--keep DIR] [--json-only]

Exports the commit `--ref` of this repository (git archive) into a scratch folder, then times,
as one shell command, exactly what the README's first command does: `python3 -m venv .venv`,
`pip install -e .`, `dlc train specs/digits_mlp.yaml --out runs/digits --force` and `dlc predict`
on the sample CSV. Prints the seconds, `du -sk .venv`, the largest installed packages and the
foreign CPU share. pip's own cache is used as a user's would be: a first install on a machine
downloads the wheels (network-bound), later ones do not; say which with any figure you quote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ForeignLoad, cores  # noqa: E402

COMMAND = (".venv/bin/pip install -q -e . && .venv/bin/dlc train specs/digits_mlp.yaml --out "
           "runs/digits --force && .venv/bin/dlc predict runs/digits/model.onnx "
           "specs/data/digits_sample.csv")


def kib(path: Path) -> int:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def measure(ref: str, folder: Path) -> dict:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    t0 = time.perf_counter()
    with ForeignLoad(children=True) as load:
        proc = subprocess.run(f"python3 -m venv .venv && {COMMAND}", shell=True, cwd=folder,
                              capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"README command 1 failed ({proc.returncode}): {proc.stderr[-2000:]}")
    site = next((folder / ".venv" / "lib").glob("python*/site-packages"))
    packages = sorted(((kib(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)
    return {"ref": ref, "seconds": round(seconds, 1), "venv_mib": round(kib(folder / ".venv")
                                                                         / 1024),
            "largest_mib": {name: round(k / 1024) for k, name in packages[:6]},
            "cores": cores(), "foreign_cpu_share": load.value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="HEAD")
    ap.add_argument("--keep", help="Install here (kept) instead of a temporary folder.")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=False)
        result = measure(args.ref, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="dlc-install-") as tmp:
            result = measure(args.ref, Path(tmp))
    if not args.json_only:
        print(f"{result['ref']}: {result['seconds']} s, venv {result['venv_mib']} MiB "
              f"(foreign CPU share {result['foreign_cpu_share']})", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
