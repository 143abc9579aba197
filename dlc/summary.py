"""`dlc summary`: one row per spec layer (output shape, parameters, FLOPs per sample), like Keras."""

from __future__ import annotations

import math

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


def render(spec) -> None:
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
