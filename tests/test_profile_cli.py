"""`dlc profile SPEC`: per-layer forward/backward/update time from onnxruntime's profiler, mapped
back to the spec's layer names, on synthetic data (issue 14)."""

from __future__ import annotations

import re

import pytest
from conftest import SPECS

ROW = re.compile(r"^(\S+)\s+.*?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%$")


def _rows(out: str) -> dict[str, tuple[float, ...]]:
    return {m.group(1): tuple(float(g) for g in m.groups()[1:])
            for m in map(ROW.match, out.splitlines()) if m}


@pytest.mark.parametrize("spec, layers", [
    ("digits_cnn.yaml", ["conv1", "conv2", "pool", "flatten_3", "fc", "out"]),
    ("transformer_reverse.yaml", ["embed", "position", "encoder", "head"]),
])
def test_profile_names_every_layer_and_shares_add_up(cli, spec, layers):
    from dlc.model.network import build_network
    from dlc.model.spec import load_spec

    assert [n.name for n in build_network(load_spec(SPECS / spec)).graph] == layers
    r = cli("profile", SPECS / spec, "--steps", "2", "--batch-size", "16")
    assert r.code == 0, r
    rows = _rows(r.out)
    assert set(layers) <= set(rows), r.out
    body = {k: v for k, v in rows.items() if k != "total"}
    assert sum(v[4] for v in body.values()) == pytest.approx(100.0, abs=0.1 * len(body))
    for name, (fwd, bwd, upd, total, _) in body.items():  # each row's parts make its total
        assert total == pytest.approx(fwd + bwd + upd, abs=0.002), name
    totals = [v[3] for v in body.values()]
    assert totals == sorted(totals, reverse=True)  # sorted by cost
    assert rows["total"][3] == pytest.approx(sum(totals), rel=1e-3, abs=0.003)
    assert all(rows[name][1] > 0 for name in layers if name not in ("flatten_3", "position")), r.out
    assert "16" in r.out.splitlines()[-1] and "synthetic" in r.out


def test_profile_bad_input_is_one_line(cli, tmp_path):
    r = cli("profile", SPECS / "iris.yaml", "--steps", "0")
    assert r.code == 2 and "Traceback" not in r.err, r
    r = cli("profile", tmp_path / "missing.yaml")
    assert r.code in (1, 2) and "Traceback" not in r.err and r.err.strip(), r


def test_kernels_go_to_the_layer_their_node_is_named_after():
    from dlc.commands.profile import LOSS, OTHER, _owner

    layers, heads = {"fc1": "dense", "species": "dense"}, {"species", "bill_depth"}
    cases = {"fc1/Gemm": ("fc1", False), "fc1/relu/Relu.grad/Greater": ("fc1", True),
             "species/Gemm.grad/Gemm_1": ("species", True),  # a layer named like an output
             "species/loss/LogSoftmax": (LOSS, False), "loss/Mul.grad/Mul": (LOSS, True),
             "bill_depth/Sub": (LOSS, False),  # an output's target scaling
             "update/Sqrt": ("update", False), "params/Slice_3": ("update", False),
             "grad/Concat": ("update", False), "logits": (OTHER, False)}
    for node, want in cases.items():
        assert _owner(node, layers, heads) == want, node
