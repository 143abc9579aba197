"""`dlc graph`: the layer graph as Graphviz DOT, rendered by the `dot` program when present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dlc.errors import DlcError


def _quote(text: str) -> str:
    """A DOT string literal; newlines become DOT's \n line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


def to_dot(spec) -> str:
    """One box per layer (name, type, output shape), edges along inputs, blocks as clusters."""
    from dlc.network import build_network, spec_inputs

    net = build_network(spec)
    lines = [f"digraph {_quote(spec.data['name'])} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];']
    for name, cfg in spec_inputs(spec.data).items():
        lines.append(f"  {_quote(name)} [label={_quote(name + chr(10) + str(list(cfg['shape'])))}, "
                     'fillcolor="#ffffff"];')
    clusters: dict[str, list[str]] = {}
    for node in net.graph:
        label = f"{node.name}\n{node.layer.cfg['type']}  {list(node.out_shape)}"
        lines.append(f"  {_quote(node.name)} [label={_quote(label)}];")
        if "." in node.name:
            clusters.setdefault(node.name.split(".", 1)[0], []).append(node.name)
        for src in node.sources:
            lines.append(f"  {_quote(src)} -> {_quote(node.name)};")
        if node.layer.cfg.get("share"):
            lines.append(f"  {_quote(node.layer.cfg['share'])} -> {_quote(node.name)} "
                         '[style=dashed, label="shares"];')
    for head in net.heads if spec.data.get("outputs") else []:  # `outputs:`: one node each
        out = f"output:{head.name}"
        lines.append(f"  {_quote(out)} [label={_quote(head.name + chr(10) + head.kind)}, "
                     'shape=ellipse, fillcolor="#ffffff"];')
        lines.append(f"  {_quote(head.task['layer'])} -> {_quote(out)};")
    for i, (block, members) in enumerate(clusters.items()):
        lines.append(f"  subgraph cluster_{i} {{ label={_quote(block)}; style=dashed; "
                     + " ".join(_quote(m) + ";" for m in members) + " }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot: str, out: Path) -> None:
    from dlc.fileio import write_bytes, write_text

    fmt = out.suffix.lstrip(".").lower()
    if fmt == "dot":
        write_text(out, dot)
        return
    if fmt not in ("svg", "png", "pdf"):
        raise DlcError(f"unknown graph format '.{fmt}'; use .dot, .svg, .png or .pdf")
    exe = shutil.which("dot")
    if exe is None:
        raise DlcError(f"drawing .{fmt} needs Graphviz's `dot` (Debian: apt-get install "
                       "graphviz); or write -o graph.dot and render it elsewhere")
    result = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True,
                            timeout=60)
    if result.returncode:
        raise DlcError(f"dot failed: {result.stderr.decode(errors='replace').strip()[:200]}")
    write_bytes(out, result.stdout)
