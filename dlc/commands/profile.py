"""`dlc profile SPEC`: where a train step's time goes, per spec layer (like `caffe time`).

The spec's train step runs `steps` times on synthetic data of its input shape (no data file), in
a session made as training makes it, with onnxruntime's profiler on (`enable_profiling`); the
first run is a warm-up and not counted. Each kernel's time goes to the layer its node is named
after: node names carry the spec path (`fc1/Gemm`), backward nodes a `.grad` scope
(`fc1/Gemm.grad/Gemm`). The optimizer's work on the flat vectors (parameter views, gradient
flattening, clipping, the update) is one elementwise pass over every trainable parameter, so its
time is split between layers by their share of those parameters. The loss and what no layer owns
(output renames, nodes onnxruntime made) get rows of their own; the shares add up to 100 %.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlc.model.layers.base import numel
from dlc.model.names import suffixed, x_names
from dlc.model.network import Network, build_network
from dlc.model.spec import load_spec
from dlc.runtime.session import choose_device, make_session
from dlc.runtime.stepper import BoundStepper
from dlc.train.step import LR, build_train_step, persistent_values, target_spec

OPTIMIZER = ("params", "grad", "clip", "update")  # scopes of the flat-vector work
LOSS, OTHER = "(loss)", "(other)"


@dataclass
class Row:
    name: str
    kind: str
    forward: float = 0.0  # microseconds per step
    backward: float = 0.0
    update: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.update


@dataclass
class Profile:
    rows: list[Row]
    steps: int
    batch: int
    run_us: float  # wall time of one run (model_run), microseconds
    notes: list[str] = field(default_factory=list)


def synthetic_feeds(net: Network, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """x and y of the spec's shapes: normal floats, token/category ids in [1, smallest
    vocabulary), class indices of each output's range."""
    vocab = min([n.layer.cfg["vocab_size"] for n in net.graph if "vocab_size" in n.layer.cfg],
                default=2)
    feeds = {}
    for name, graph_name in x_names(net).items():
        shape, dtype = net.inputs[name]
        feeds[graph_name] = (rng.integers(1, max(vocab, 2), (batch, *shape)) if dtype == "int64"
                             else rng.normal(size=(batch, *shape)).astype(np.float32))
    for head in net.heads:
        dtype, shape = target_spec(head)
        shape = [batch, *shape[1:]]
        y = (rng.integers(0, head.shape[-1], shape) if dtype == "int64" else
             rng.integers(0, 2, shape).astype(np.float32) if head.kind == "binary" else
             rng.normal(size=shape).astype(np.float32))
        feeds[suffixed("y", head.name)] = y
    return feeds


def _owner(node: str, layers: dict[str, str], heads: set[str]) -> tuple[str, bool]:
    """(row, backward?) of a kernel by its node name. An output's loss is scoped by the
    output's name (`species/loss/...`), which may also name a layer."""
    scope = node.split("/")
    backward = any(part.endswith(".grad") for part in scope)
    if "loss" in scope[:2] or (scope[0] in heads and scope[0] not in layers):
        return LOSS, backward
    if scope[0] in layers:
        return scope[0], backward
    return ("update", False) if scope[0] in OPTIMIZER else (OTHER, backward)


def _kernels(events: list[dict]) -> tuple[dict[str, float], float, int]:
    """Kernel microseconds by node name and mean model_run microseconds, both over every run
    after the first; and how many runs that is."""
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")
    start = runs[0][0] + runs[0][1] if len(runs) > 1 else 0
    by_node: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            name = e["name"][:-len("_kernel_time")]
            by_node[name] = by_node.get(name, 0.0) + e["dur"]
    timed = runs[1:] or runs
    return by_node, sum(d for _, d in timed) / max(len(timed), 1), max(len(timed), 1)


def attribute(net: Network, layout, by_node: dict[str, float], runs: int) -> list[Row]:
    """Rows by cost, microseconds per step."""
    layers = {n.name: n.layer.cfg["type"] for n in net.graph}
    rows = {name: Row(name, kind) for name, kind in layers.items()}
    rows[LOSS], rows[OTHER] = Row(LOSS, "loss"), Row(OTHER, "")
    update = 0.0
    heads = {h.name for h in net.heads if h.name}
    for node, us in by_node.items():
        owner, backward = _owner(node, layers, heads)
        if owner == "update":
            update += us / runs
        elif backward:
            rows[owner].backward += us / runs
        else:
            rows[owner].forward += us / runs
    total = sum(numel(shape) for _, _, shape in layout) or 1
    for param, _, shape in layout:  # the flat update, split by parameter count
        owner = max((n for n in layers if param.startswith(n + ".")), key=len, default=OTHER)
        rows[owner].update += update * numel(shape) / total
    if not layout:
        rows[OTHER].update += update
    return sorted((r for r in rows.values() if r.total > 0 or r.name in layers),
                  key=lambda r: -r.total)


def run(spec, steps: int = 20, batch: int | None = None, device: str = "cpu") -> Profile:
    net = build_network(spec)
    batch = batch or spec.data.get("train", {}).get("batch_size", 32)
    step = build_train_step(net)
    kind, index, info = choose_device(device)
    rng = np.random.default_rng(0)
    params = net.init_params(0)
    with tempfile.TemporaryDirectory() as tmp:
        sess = make_session(step.model, kind, index, profile=str(Path(tmp) / "dlc"))
        stepper = BoundStepper(sess, persistent_values(net, step, params), kind, index,
                               {n: params[n] for n in step.frozen})
        feeds = {**synthetic_feeds(net, batch, rng), LR: np.array(1e-6, np.float32)}
        for i in range(steps + 1):  # the first is a warm-up
            noise = {n: rng.random((batch, *s), dtype=np.float32) for n, s in step.noise}
            stepper.run({**feeds, **noise, "step": np.array(i + 1, np.float32)})
            stepper.commit()
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_node, run_us, runs = _kernels(events)
    return Profile(attribute(net, step.layout, by_node, runs), runs, batch, run_us,
                   [info] if info else [])


def render(prof: Profile) -> list[str]:
    """The table, most expensive first: milliseconds per step and each row's share."""
    total = sum(r.total for r in prof.rows) or 1.0
    w = max([len(r.name) for r in prof.rows] + [5])
    k = max([len(r.kind) for r in prof.rows] + [4])
    lines = [f"{'layer':<{w}}  {'type':<{k}}  {'forward ms':>10}  {'backward ms':>11}  "
             f"{'update ms':>9}  {'total ms':>8}  {'share':>6}"]
    for r in prof.rows:
        lines.append(f"{r.name:<{w}}  {r.kind:<{k}}  {r.forward / 1e3:10.3f}  "
                     f"{r.backward / 1e3:11.3f}  {r.update / 1e3:9.3f}  {r.total / 1e3:8.3f}  "
                     f"{100 * r.total / total:5.1f}%")
    lines.append(f"{'total':<{w}}  {'':<{k}}  {sum(r.forward for r in prof.rows) / 1e3:10.3f}  "
                 f"{sum(r.backward for r in prof.rows) / 1e3:11.3f}  "
                 f"{sum(r.update for r in prof.rows) / 1e3:9.3f}  {total / 1e3:8.3f}  100.0%")
    lines.append(f"{prof.steps} steps of batch {prof.batch} on synthetic data (after one "
                 f"warm-up); a run took {prof.run_us / 1e3:.3f} ms under the profiler, "
                 f"{min(total / prof.run_us, 1.0) if prof.run_us else 0:.0%} of it in kernels. "
                 "update: the optimizer's pass over the flat parameters, split by parameter "
                 "count. The profiler slows kernels: read the shares.")
    return prof.notes + lines


def command(spec: str, steps: int, batch_size: int | None, device: str, overrides: list) -> None:
    print("\n".join(render(run(load_spec(spec, overrides), steps, batch_size, device))))
