"""`dlc summary`: one row per spec layer (output shape, parameters, FLOPs per sample), like Keras,
and an estimate of the memory a batch of the spec's size needs, checked against the device's."""

from __future__ import annotations

import math
import sys

from dlc.network import build_network


def rows(spec) -> list[tuple[str, str, tuple, int, int]]:
    """(name, type, output shape, parameter count, FLOPs per sample) for every layer of the
    spec, in graph order; a layer that shares another's parameters counts none of its own."""
    net = build_network(spec)  # raises SpecError with every problem first
    table = []
    for node in net.graph:
        layer = node.layer
        shapes = node.in_shapes if layer.multi else node.in_shapes[0]
        shared = bool(layer.cfg.get("share"))
        count = 0 if shared else sum(math.prod(p.shape) for p in layer.params(shapes))
        table.append((layer.name, layer.cfg["type"], node.out_shape, count, layer.flops(shapes)))
    return table


def memory(spec) -> dict[str, int]:
    """Bytes (float32) for a batch of train.batch_size. `training`: every layer output is kept for
    the backward pass, plus the largest one's gradient in flight, plus parameters, their gradient
    and the optimizer's states; `inference`: the most layer outputs alive at once (each lives from
    its layer to its last reader). Tensors inside a layer (attention scores, gates) and
    onnxruntime's own buffers come on top, so these are lower bounds."""
    from dlc.optim import STATES

    net = build_network(spec)
    train = spec.data.get("train") or {}
    batch = train.get("batch_size", 32)
    size = {n.name: math.prod(n.out_shape) * batch * 4 for n in net.graph}
    size.update({k: math.prod(shape) * batch * 4 for k, (shape, _) in net.inputs.items()})
    last = {}  # tensor -> index of its last reader
    for i, node in enumerate(net.graph):
        last.update({src if src != "input" else next(iter(net.inputs)): i
                     for src in node.sources})
    alive, peak = dict.fromkeys(net.inputs, 0), 0
    for i, node in enumerate(net.graph):
        alive[node.name] = i
        peak = max(peak, sum(size[t] for t in alive))
        alive = {t: j for t, j in alive.items() if last.get(t, len(net.graph)) > i}
    states = len(STATES.get((train.get("optimizer") or {}).get("type", "adam"), []))
    params = sum(math.prod(p.shape) for p in net.params) * 4
    return {"batch": batch, "inference": peak, "params": params,
            "training": sum(size.values()) + max(size.values()) + params * (2 + states)}


def device_memory(device: str) -> tuple[int | None, str]:
    """(bytes, what) of the device a spec would train on: host RAM for cpu, the GPU's memory
    (nvidia-smi) for cuda[:N]; None when it cannot be told."""
    import os
    import subprocess

    from dlc.runtime.session import parse_device

    kind, index = parse_device(device)
    if kind != "cuda":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host RAM"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                              "nounits", f"--id={index}"], capture_output=True, text=True,
                             timeout=10).stdout
        return int(out.split()[0]) * 2**20, f"cuda:{index} memory"
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None, f"cuda:{index} memory"


def _size(n: int) -> str:
    return next(f"{n / 2**p:.1f} {u}" for p, u in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "B"))
                if n >= 2**p or p == 0)


def memory_lines(spec, device: str = "cpu") -> tuple[list[str], str | None]:
    """The summary's memory lines, and a warning when training would not fit the device."""
    m = memory(spec)
    lines = [f"activation memory at batch {m['batch']} (lower bounds): training "
             f"{_size(m['training'])} (with parameters, gradients and optimizer states), "
             f"inference {_size(m['inference'])}"]
    have, what = device_memory(device)
    if have is None:
        return lines, None
    if m["training"] > have:
        return lines, (f"warning: training at batch {m['batch']} needs at least "
                       f"{_size(m['training'])}, more than the {_size(have)} of {what}; lower "
                       "train.batch_size")
    return lines, None


def render(spec, device: str = "cpu") -> None:
    from rich.console import Console
    from rich.table import Table

    from dlc.network import spec_heads, spec_inputs

    data = rows(spec)
    kinds = ", ".join(f"{h}: {t['kind']}" if h else t["kind"]
                      for h, t in spec_heads(spec.data).items())
    table = Table(title=f"{spec.data['name']} ({kinds})")
    for col, justify in (("layer", "left"), ("type", "left"), ("output shape", "left"),
                         ("params", "right"), ("FLOPs/sample", "right")):
        table.add_column(col, justify=justify)
    for name, cfg in spec_inputs(spec.data).items():
        table.add_row(name, "input", str(["N", *cfg["shape"]]), "0", "0")
    block = None
    for name, kind, shape, count, flops in data:
        group = name.split(".", 1)[0] if "." in name else None
        if group != block:  # layers expanded from one block copy are grouped under its name
            table.add_section()
            if group:
                table.add_row(f"[bold]{group}[/bold]", "block", "", "", "")
            block = group
        shown = f"  {name.split('.', 1)[1]}" if group else name
        table.add_row(shown, kind, str(["N", *shape]), f"{count:,}", f"{flops:,}")
    total_p, total_f = sum(r[3] for r in data), sum(r[4] for r in data)
    table.add_section()
    table.add_row("total", "", "", f"{total_p:,}", f"{total_f:,}")
    Console().print(table)
    print(f"parameters: {total_p:,} ({total_p * 4 / 1024:.1f} KiB as float32)  "
          f"FLOPs per sample: {total_f:,}")
    lines, warning = memory_lines(spec, device)
    print("\n".join(lines))
    if warning:
        print(warning, file=sys.stderr)
