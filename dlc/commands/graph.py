"""`dlc graph`: the layer graph as Mermaid (.mmd, or .md with a mermaid fence) or SVG, both written
by dlc; as Graphviz DOT, which the `dot` program renders to png/pdf when present.

One `LayerGraph` (boxes, arrows, blocks) is read from the network; each format is a writer of it.
The SVG layout is a layered drawing: a box's rank is the longest path to it from a model input,
boxes of one rank sit side by side in graph order, arrows run from a box's bottom to the next's
top, and each block of `blocks:` gets a dashed frame around its boxes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from dlc.errors import DlcError
from dlc.files.atomic import write_bytes, write_text
from dlc.model.names import spec_inputs
from dlc.model.network import build_network
from dlc.model.spec import load_spec


@dataclass
class Box:
    name: str
    lines: list[str]
    kind: str = "layer"  # layer | input | output


@dataclass
class LayerGraph:
    title: str
    boxes: list[Box] = field(default_factory=list)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (src, dst, label)
    blocks: dict[str, list[str]] = field(default_factory=dict)  # block -> its layers


def layer_graph(spec) -> LayerGraph:
    """One box per model input, layer and (for `outputs:`) output; arrows along inputs, dashed
    ones labelled `shares` for shared weights; layers named `block.x` grouped by block."""
    net = build_network(spec)
    g = LayerGraph(spec.data["name"])
    for name, cfg in spec_inputs(spec.data).items():
        g.boxes.append(Box(name, [name, str(list(cfg["shape"]))], "input"))
    for node in net.graph:
        g.boxes.append(Box(node.name, [node.name, f"{node.layer.cfg['type']}  "
                                                  f"{list(node.out_shape)}"]))
        if "." in node.name:
            g.blocks.setdefault(node.name.split(".", 1)[0], []).append(node.name)
        g.edges += [(src, node.name, "") for src in node.sources]
        if node.layer.cfg.get("share"):
            g.edges.append((node.layer.cfg["share"], node.name, "shares"))
    for head in net.heads if spec.data.get("outputs") else []:  # `outputs:`: one box each
        g.boxes.append(Box(f"output:{head.name}", [head.name, head.kind], "output"))
        g.edges.append((head.task["layer"], f"output:{head.name}", ""))
    return g


def _quote(text: str) -> str:
    """A DOT string literal; newlines become DOT's \\n line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


def to_dot(g: LayerGraph) -> str:
    lines = [f"digraph {_quote(g.title)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];']
    style = {"input": ', fillcolor="#ffffff"', "output": ', shape=ellipse, fillcolor="#ffffff"',
             "layer": ""}
    for box in g.boxes:
        lines.append(f"  {_quote(box.name)} [label={_quote(chr(10).join(box.lines))}"
                     f"{style[box.kind]}];")
    for src, dst, label in g.edges:
        extra = f' [style=dashed, label="{label}"]' if label else ""
        lines.append(f"  {_quote(src)} -> {_quote(dst)}{extra};")
    for i, (block, members) in enumerate(g.blocks.items()):
        lines.append(f"  subgraph cluster_{i} {{ label={_quote(block)}; style=dashed; "
                     + " ".join(_quote(m) + ";" for m in members) + " }")
    return "\n".join(lines + ["}"]) + "\n"


def to_mermaid(g: LayerGraph) -> str:
    """A Mermaid flowchart (GitHub, GitLab and most Markdown viewers draw it)."""
    ids = {box.name: f"n{i}" for i, box in enumerate(g.boxes)}
    shape = {"layer": ('["', '"]'), "input": ('[/"', '"/]'), "output": ('(["', '"])')}

    def label(box: Box) -> str:
        return "<br/>".join(line.replace('"', "#quot;") for line in box.lines)

    lines = [f"%% {g.title}", "flowchart TB"]
    members = {m for ms in g.blocks.values() for m in ms}
    lines += [f"  {ids[b.name]}{shape[b.kind][0]}{label(b)}{shape[b.kind][1]}"
              for b in g.boxes if b.name not in members]
    for i, (block, names) in enumerate(g.blocks.items()):
        lines.append(f'  subgraph b{i}["{block}"]')
        lines += [f"    {ids[b.name]}[\"{label(b)}\"]" for b in g.boxes if b.name in names]
        lines.append("  end")
    lines += [f"  {ids[s]} -.->|{tag}| {ids[d]}" if tag else f"  {ids[s]} --> {ids[d]}"
              for s, d, tag in g.edges]
    return "\n".join(lines) + "\n"


def ranks(g: LayerGraph) -> dict[str, int]:
    """Longest-path layering: every box one below its lowest source; then each model input moves
    down to just above its first consumer (a side input drawn beside the branch it joins)."""
    sources: dict[str, list[str]] = {b.name: [] for b in g.boxes}
    for src, dst, label in g.edges:
        if not label:  # a `shares` arrow is no data flow
            sources[dst].append(src)
    rank: dict[str, int] = {}
    for box in g.boxes:  # graph order is topological
        rank[box.name] = 1 + max((rank[s] for s in sources[box.name] if s in rank), default=-1)
    for box in g.boxes:
        users = [rank[d] for d, srcs in sources.items() if box.name in srcs]
        if not sources[box.name] and users:
            rank[box.name] = min(users) - 1
    return rank


BOX_H, GAP_X, GAP_Y, CHAR_W, PAD = 40, 24, 36, 7.2, 16
FILL = {"layer": "#eef3fb", "input": "#ffffff", "output": "#ffffff"}


def _positions(g: LayerGraph, rank: dict[str, int], width: float):
    """Top-left corner of each box: rows by rank, each row centred."""
    rows: dict[int, list[str]] = {}
    for box in g.boxes:
        rows.setdefault(rank[box.name], []).append(box.name)
    span = max(len(r) for r in rows.values()) * (width + GAP_X) - GAP_X
    pos = {}
    for r, names in rows.items():
        left = PAD + (span - (len(names) * (width + GAP_X) - GAP_X)) / 2
        for i, name in enumerate(names):
            pos[name] = (left + i * (width + GAP_X), PAD + r * (BOX_H + GAP_Y))
    return pos, span + 2 * PAD + width / 2, PAD * 2 + (max(rows) + 1) * (BOX_H + GAP_Y) - GAP_Y


def _arrow(start: tuple[float, float], end: tuple[float, float], width: float, label: str) -> str:
    """A straight arrow between adjacent rows; one that skips rows bows out to the right of the
    boxes it passes (a cubic curve), so it is not hidden behind them."""
    x1, y1 = start[0] + width / 2, start[1] + BOX_H
    x2, y2 = end[0] + width / 2, end[1]
    if y2 - y1 <= GAP_Y + 1:
        shape = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
    else:
        bow, dy = width * 0.9, (y2 - y1) / 3
        shape = (f"M{x1:.1f},{y1:.1f} C{x1 + bow:.1f},{y1 + dy:.1f} {x2 + bow:.1f},{y2 - dy:.1f} "
                 f"{x2:.1f},{y2:.1f}")
    dash = ' stroke-dasharray="5 4"' if label else ""
    return (f'<path class="edge" d="{shape}" fill="none" stroke="#555"{dash} '
            'marker-end="url(#arrow)"/>')


def to_svg(g: LayerGraph) -> str:
    """The layered drawing as a standalone SVG document."""
    width = max(CHAR_W * max(len(line) for line in b.lines) + 20 for b in g.boxes)
    pos, total_w, total_h = _positions(g, ranks(g), width)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h:.0f}" '
           f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" font-family="Helvetica, Arial, sans-serif" '
           'font-size="12">', f"<title>{escape(g.title)}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
           "</defs>"]
    for block, members in g.blocks.items():  # dashed frames first, under the boxes
        xs, ys = [pos[m][0] for m in members], [pos[m][1] for m in members]
        x, y = min(xs) - 8, min(ys) - 8
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(xs) - min(xs) + width + 16:.1f}" '
                   f'height="{max(ys) - min(ys) + BOX_H + 16:.1f}" fill="none" stroke="#999" '
                   f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{y - 3:.1f}" '
                   f'fill="#666">{escape(block)}</text>')
    for src, dst, label in g.edges:
        out.append(_arrow(pos[src], pos[dst], width, label))
    for box in g.boxes:
        x, y = pos[box.name]
        rx = BOX_H / 2 if box.kind == "output" else 6
        out.append(f'<g class="{box.kind}"><rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
                   f'height="{BOX_H}" rx="{rx:.0f}" fill="{FILL[box.kind]}" stroke="#4a6fa5"/>')
        for i, line in enumerate(box.lines):
            out.append(f'<text x="{x + width / 2:.1f}" y="{y + 16 + 14 * i:.1f}" '
                       f'text-anchor="middle">{escape(line)}</text>')
        out.append("</g>")
    return "\n".join(out + ["</svg>"]) + "\n"


WRITERS = {"dot": to_dot, "mmd": to_mermaid, "svg": to_svg,
           "md": lambda g: f"```mermaid\n{to_mermaid(g)}```\n"}
DOT_FORMATS = ("png", "pdf")  # rendered by Graphviz's dot


def render(g: LayerGraph, out: Path) -> None:
    fmt = out.suffix.lstrip(".").lower()
    if fmt in WRITERS:
        write_text(out, WRITERS[fmt](g))
        return
    if fmt not in DOT_FORMATS:
        raise DlcError(f"unknown graph format '.{fmt}'; use .svg, .mmd, .md, .dot, .png or .pdf")
    exe = shutil.which("dot")
    if exe is None:
        raise DlcError(f"drawing .{fmt} needs Graphviz's `dot` (Debian: apt-get install "
                       "graphviz); .svg, .mmd and .md need nothing")
    result = subprocess.run([exe, f"-T{fmt}"], input=to_dot(g).encode(), capture_output=True,
                            timeout=60)
    if result.returncode:
        raise DlcError(f"dot failed: {result.stderr.decode(errors='replace').strip()[:200]}")
    write_bytes(out, result.stdout)


def command(spec: str, output: str, overrides: list) -> None:
    render(layer_graph(load_spec(spec, overrides)), Path(output))
    print(f"wrote {output}")
