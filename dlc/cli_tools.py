"""Commands around specs and run folders: expand, graph, diff, runs, plot, env (registered on the
app when dlc.cli loads; lazy imports as there)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from dlc.cli_app import SetOpt, app, load
from dlc.errors import DlcError


@app.command()
def expand(spec: str, set_: Optional[List[str]] = SetOpt):
    """Print the spec with blocks expanded and every default filled."""
    import yaml

    data = dict(load(spec, set_).data)
    data.pop("blocks", None)
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


@app.command()
def graph(spec: str, output: str = typer.Option("graph.svg", "-o", "--output",
                                               help=".svg, .mmd (Mermaid), .md (Mermaid in "
                                                    "Markdown), .dot; .png/.pdf need Graphviz"),
          set_: Optional[List[str]] = SetOpt):
    """Draw the layer graph: SVG and Mermaid written by dlc; png/pdf through Graphviz's dot."""
    from dlc.drawing import layer_graph, render

    render(layer_graph(load(spec, set_)), Path(output))
    print(f"wrote {output}")


@app.command()
def diff(a: str, b: str):
    """Semantic difference of two specs: changed fields (defaults filled) and parameter counts."""
    from dlc.tools import diff_specs

    for line in diff_specs(load(a), load(b)):
        print(line)


@app.command()
def runs(folder: str = typer.Argument("runs", help="Folder to search for run folders.")):
    """List runs, newest first: start time, spec name, epochs, best monitored value, test
    metrics and training speed."""
    from rich.console import Console
    from rich.table import Table

    from dlc.tools import list_runs

    found, unread = list_runs(Path(folder))
    if not found:
        raise DlcError(f"no runs under {folder}" + (f" ({unread} unreadable summary.json)"
                                                   if unread else ""))
    table = Table()
    for col in ("started (UTC)", "spec", "run", "epochs", "best", "test", "samples/s"):
        table.add_column(col, overflow="fold")
    for r in found:
        best = r["best"]
        best = f"{best['column']} {best['value']:.4g} @{best['epoch']}" if best else ""
        test = "  ".join(f"{k} {v:.4g}" for k, v in r["test"].items() if isinstance(v, float))
        table.add_row(r["started"].replace("T", " ").replace("+00:00", ""), r["name"] or "",
                      r["run"], str(r["epochs"]), best, test, f"{r['samples_per_s'] or 0:,.0f}")
    Console(width=None if sys.stdout.isatty() else 400).print(table)  # piped: rows unfolded
    if unread:
        print(f"note: {unread} summary.json not readable as a dlc summary, left out")


@app.command()
def plot(run: str, output: str = typer.Option("curves.png", "-o", "--output")):
    """Plot loss and metrics per epoch (train vs val) of a run folder (needs matplotlib)."""
    from dlc.tools import plot_run

    for note in plot_run(Path(run), Path(output)):
        print(f"note: {note}")
    print(f"wrote {output}")


@app.command()
def env():
    """Versions, execution providers, and whether CUDA is usable here (and why not)."""
    from dlc.tools import environment

    for key, value in environment():
        print(f"{key + ':':22} {value}")
