"""`dlc serve` against plain onnxruntime in-process: requests/s and latency, one row a request.

    .venv/bin/python bench/serve.py [--model MODEL] [--seconds 3] [--repeats 3]
        [--concurrency 1 32] [--max-wait-ms 0] [--max-batch 64] [--json-only]

Without --model the digits MLP (64 -> 256 -> 256 -> 10) is trained for one epoch into a
temporary folder. For each concurrency C, interleaved over --repeats rounds:
- ort: C threads in this process call `InferenceSession.run` on the model (the same session
  options as dlc), one row each time; a "request" is one run.
- http: `dlc serve MODEL` in a subprocess (CPU), C client threads each with one keep-alive
  `http.client` connection POSTing `{"inputs": {"input": [one row]}}` and reading the answer; the
  server's /health counters give the rows per onnxruntime run.
Each measurement runs for --seconds after a short warm-up; latencies are per request (ms),
reported as p50/p99 of that measurement and the median over repeats. The clients share this
machine's cores with the server (on 2 cores they take a large share: these are whole-system
figures). `foreign_cpu_share` counts neither this process nor the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ForeignLoad, cores  # noqa: E402


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hammer(call, clients: int, seconds: float) -> list[float]:
    """`clients` threads calling call(k) for `seconds`; every call's latency in ms."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            call(k)
            latencies[k].append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [v for part in latencies for v in part]


def summary(latencies: list[float], seconds: float) -> dict:
    q = np.percentile(latencies, [50, 99])
    return {"requests_per_s": len(latencies) / seconds, "p50_ms": float(q[0]),
            "p99_ms": float(q[1])}


class Client:
    """One keep-alive connection per client thread."""

    def __init__(self, host: str, port: int, clients: int, row: list[float]):
        self.conns = [http.client.HTTPConnection(host, port, timeout=60) for _ in range(clients)]
        self.body = json.dumps({"inputs": {"input": [row]}}).encode()

    def __call__(self, k: int) -> None:
        conn = self.conns[k]
        conn.request("POST", "/predict", self.body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(data.decode())

    def get(self, path: str) -> dict:
        self.conns[0].request("GET", path)
        return json.loads(self.conns[0].getresponse().read())


def start_server(model: Path, args) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "dlc", "serve", str(model), "--port", "0",
                             "--device", "cpu", "--max-batch", str(args.max_batch),
                             "--max-wait-ms", str(args.max_wait_ms)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    found = re.search(r"http://([^:/]+):(\d+)/", proc.stdout.readline())
    if not found:
        proc.kill()
        raise SystemExit("dlc serve printed no address")
    return proc, found.group(1), int(found.group(2))


def measure(name: str, call, clients: int, seconds: float, server_pid: int | None) -> dict:
    hammer(call, clients, min(0.5, seconds))  # warm-up
    cpu0 = process_cpu(server_pid) if server_pid else 0.0
    with ForeignLoad() as load:
        t0 = time.perf_counter()
        lat = hammer(call, clients, seconds)
        elapsed = time.perf_counter() - t0
        server_cpu = (process_cpu(server_pid) - cpu0) if server_pid else 0.0
    share = load.value
    if share is not None:  # ForeignLoad counts the server as foreign: take its time back out
        share = max(0.0, share - server_cpu / (elapsed * cores()))
    return {"mode": name, "concurrency": clients, **summary(lat, elapsed),
            "foreign_cpu_share": share}


def default_model(folder: Path) -> Path:
    from dlc.train.run import train
    from dlc.model.spec import load_spec

    spec = load_spec(ROOT / "specs" / "digits_mlp.yaml", ["train.epochs=1"])
    train(spec, str(folder / "run"), quiet=True)
    return folder / "run" / "model.onnx"


def run(args, model: Path) -> dict:
    from dlc.runtime.infer import load_model

    loaded = load_model(model, "cpu")
    size = int(np.prod(loaded.spec["input"]["shape"]))
    x = np.random.default_rng(0).uniform(0, 8, (1, size)).astype(np.float32)
    session = loaded.session
    rows: dict[tuple, list[dict]] = {}
    proc, host, port = start_server(model, args)
    try:
        for _ in range(args.repeats):
            for c in args.concurrency:
                rows.setdefault(("ort", c), []).append(measure(
                    "ort", lambda k: session.run(None, {"input": x}), c, args.seconds, None))
                client = Client(host, port, c, x[0].tolist())
                before = client.get("/health")
                row = measure("http", client, c, args.seconds, proc.pid)
                after = client.get("/health")
                row["rows_per_run"] = (after["rows"] - before["rows"]) / max(
                    1, after["runs"] - before["runs"])
                rows.setdefault(("http", c), []).append(row)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"model": str(model), "cores": cores(), "loadavg_1min": os.getloadavg()[0],
            "max_wait_ms": args.max_wait_ms, "max_batch": args.max_batch,
            "seconds": args.seconds, "repeats": args.repeats,
            "results": [median_row(v) for v in rows.values()]}


def median_row(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    out = {**runs[0], **{k: statistics.median(r[k] for r in runs) for k in keys}}
    out["foreign_cpu_share_max"] = max((r["foreign_cpu_share"] or 0.0) for r in runs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--json-only", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlc-bench-serve-") as tmp:
        result = run(args, args.model or default_model(Path(tmp)))
    print(json.dumps(result))
    if not args.json_only:
        for r in result["results"]:
            extra = f"  rows/run {r['rows_per_run']:.1f}" if "rows_per_run" in r else ""
            print(f"{r['mode']:>4} C={r['concurrency']:<3} {r['requests_per_s']:9,.0f} req/s  "
                  f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  foreign "
                  f"{r['foreign_cpu_share_max']:.2f}{extra}", file=sys.stderr)


if __name__ == "__main__":
    main()
