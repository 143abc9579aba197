"""`dlc summary`: one row per spec layer (output shape, parameters, FLOPs per sample), like Keras."""

from __future__ import annotations

import math

from dlc.layers import build_layer
from dlc.network import build_network


def rows(spec) -> list[tuple[str, str, tuple, int, int]]:
    """(name, type, output shape, parameter count, FLOPs per sample) for every layer of the spec."""
    build_network(spec)  # raises SpecError with every problem first
    shape = tuple(spec.data["input"]["shape"])
    table = []
    for cfg in spec.data["layers"]:
        layer = build_layer(cfg)
        count = sum(math.prod(p.shape) for p in layer.params(shape))
        flops = layer.flops(shape)
        shape = layer.output_shape(shape)
        table.append((layer.name, cfg["type"], shape, count, flops))
    return table


def render(spec) -> None:
    from rich.console import Console
    from rich.table import Table

    data = rows(spec)
    table = Table(title=f"{spec.data['name']} ({spec.data['task']['kind']})")
    for col, justify in (("layer", "left"), ("type", "left"), ("output shape", "left"),
                         ("params", "right"), ("FLOPs/sample", "right")):
        table.add_column(col, justify=justify)
    table.add_row("input", "input", str(["N", *spec.data["input"]["shape"]]), "0", "0")
    for name, kind, shape, count, flops in data:
        table.add_row(name, kind, str(["N", *shape]), f"{count:,}", f"{flops:,}")
    total_p, total_f = sum(r[3] for r in data), sum(r[4] for r in data)
    table.add_section()
    table.add_row("total", "", "", f"{total_p:,}", f"{total_f:,}")
    Console().print(table)
    print(f"parameters: {total_p:,} ({total_p * 4 / 1024:.1f} KiB as float32)  "
          f"FLOPs per sample: {total_f:,}")
