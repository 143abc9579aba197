"""`dlc summary`: one row per spec layer (output shape, parameters, FLOPs per sample), like Keras,
and an estimate of the memory a batch of the spec's size needs, checked against the device's."""

from __future__ import annotations

import math
import os
import subprocess
import sys

from dlc.model.names import spec_heads, spec_inputs
from dlc.model.network import build_network
from dlc.model.spec import load_spec
from dlc.runtime.session import parse_device
from dlc.train.step import build_eval_step, build_train_step


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


def _tensor_bytes(model, batch: int) -> dict[str, int]:
    """Bytes of each tensor of `model` whose shape onnx's shape inference finds, at `batch`
    samples (the one symbolic dimension a tensor may have is the batch)."""
    from onnx import TensorProto, helper, shape_inference

    graph = shape_inference.infer_shapes(model).graph
    sizes = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.HasField("shape") and dims.count(None) <= 1 and t.elem_type != TensorProto.UNDEFINED:
            item = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            sizes[vi.name] = math.prod(batch if d is None else d for d in dims) * item
    return sizes


def _peak_alive(model, sizes: dict[str, int]) -> int:
    """The most bytes alive at once when the nodes run in graph order: inputs throughout, each
    node's outputs from the node to their last reader (graph outputs to the end)."""
    nodes = model.graph.node
    last = {name: len(nodes) for name in [o.name for o in model.graph.output] +
            [i.name for i in model.graph.input]}
    for k, node in enumerate(nodes):
        for name in node.input:
            last[name] = max(last.get(name, k), k)
    alive = {i.name: sizes.get(i.name, 0) for i in model.graph.input}
    peak = total = sum(alive.values())
    for k, node in enumerate(nodes):
        for name in node.output:
            alive[name] = sizes.get(name, 0)
            total += alive[name]
        peak = max(peak, total)
        for name in [n for n in (*node.input, *node.output) if last.get(n, k) <= k]:
            total -= alive.pop(name, 0)
    return peak


def memory(spec) -> dict[str, int]:
    """Bytes for a batch of train.batch_size, from the graphs dlc runs: `training` the train
    step (parameters, optimizer states, every activation the backward pass keeps, gradients),
    `inference` the forward pass with its loss; each the most tensors alive at once in graph
    order. onnxruntime's reuse of buffers lowers it and its arena rounding raises it."""
    net = build_network(spec)
    batch = (spec.data.get("train") or {}).get("batch_size", 32)
    graphs = {"training": build_train_step(net).model, "inference": build_eval_step(net).model}
    out = {name: _peak_alive(m, _tensor_bytes(m, batch)) for name, m in graphs.items()}
    return {"batch": batch, **out}


def device_memory(device: str) -> tuple[int | None, str]:
    """(bytes, what) of the device a spec would train on: host RAM for cpu, the GPU's memory
    (nvidia-smi) for cuda[:N]; None when it cannot be told."""
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
    lines = [f"memory at batch {m['batch']} (tensors alive at once): training "
             f"{_size(m['training'])} (activations kept for the backward pass, parameters, "
             f"gradients, optimizer states), inference {_size(m['inference'])}"]
    have, what = device_memory(device)
    if have is None:
        return lines, None
    if m["training"] > have:
        return lines, (f"warning: training at batch {m['batch']} needs about "
                       f"{_size(m['training'])}, more than the {_size(have)} of {what}; lower "
                       "train.batch_size")
    return lines, None


def render(spec, device: str = "cpu") -> None:
    from rich.console import Console
    from rich.table import Table

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


def command(spec: str, overrides: list, device: str) -> None:
    render(load_spec(spec, overrides), device)
