"""`dlc graph` without Graphviz: SVG (a layered drawing written by dlc) and Mermaid (.mmd, .md);
png/pdf still go through `dot` and say so when it is missing."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest
from conftest import SPECS

from dlc.commands.graph import layer_graph, ranks
from dlc.model.spec import load_spec

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def no_dot(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "dot"
                        else real(name, *a, **k))


def test_svg_is_a_layered_drawing_of_every_layer(cli, tmp_path, no_dot):
    out = tmp_path / "g.svg"
    r = cli("graph", SPECS / "digits_resnet.yaml", "-o", out)
    assert r.code == 0, r
    root = ET.parse(out).getroot()  # well-formed XML
    g = layer_graph(load_spec(SPECS / "digits_resnet.yaml"))
    boxes = {grp.find(f"{SVG}text").text: grp for grp in root.iter(f"{SVG}g")}
    assert set(boxes) == {b.name for b in g.boxes}
    assert len(root.findall(f".//{SVG}path[@class='edge']")) == len(g.edges)
    top = {name: float(grp.find(f"{SVG}rect").get("y")) for name, grp in boxes.items()}
    for src, dst, label in g.edges:  # every data arrow points down a layer or more
        assert label or top[src] < top[dst], (src, dst)
    assert "res1" in {t.text for t in root.findall(f"{SVG}text")}  # the block's frame label


def test_ranks_are_longest_paths():
    g = layer_graph(load_spec(SPECS / "digits_resnet.yaml"))
    rank = ranks(g)
    assert rank["input"] == 0 and rank["stem"] == 1
    assert rank["res1.sum"] == max(rank["stem"], rank["res1.b"]) + 1  # the skip joins below b


@pytest.mark.parametrize("suffix", [".mmd", ".md"])
def test_mermaid_has_a_node_per_box_and_an_arrow_per_edge(cli, tmp_path, no_dot, suffix):
    out = tmp_path / f"g{suffix}"
    r = cli("graph", SPECS / "penguins_multitask.yaml", "-o", out)
    assert r.code == 0, r
    text = out.read_text()
    g = layer_graph(load_spec(SPECS / "penguins_multitask.yaml"))
    body = text.split("```mermaid\n", 1)[1].rsplit("```", 1)[0] if suffix == ".md" else text
    assert "flowchart TB" in body
    assert body.count(" --> ") + body.count(" -.->") == len(g.edges)
    for box in g.boxes:
        assert f'"{box.lines[0]}<br/>' in body


def test_blocks_are_mermaid_subgraphs(cli, tmp_path):
    out = tmp_path / "g.mmd"
    assert cli("graph", SPECS / "digits_resnet.yaml", "-o", out).code == 0
    assert '  subgraph b0["res1"]' in out.read_text()


def test_png_without_dot_names_the_formats_that_need_nothing(cli, tmp_path, no_dot):
    r = cli("graph", SPECS / "iris.yaml", "-o", tmp_path / "g.png")
    assert r.code == 1 and "Graphviz" in r.err and ".svg, .mmd and .md need nothing" in r.err, r


def test_unknown_format_lists_the_known_ones(cli, tmp_path):
    r = cli("graph", SPECS / "iris.yaml", "-o", tmp_path / "g.gif")
    assert r.code == 1 and ".mmd" in r.err, r
