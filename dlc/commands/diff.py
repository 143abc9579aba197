"""`dlc diff`: the field-level difference of two specs (defaults filled) and their parameter
counts."""

from __future__ import annotations

import json

from dlc.commands.summary import rows
from dlc.model.spec import load_spec

def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def diff_specs(a, b) -> list[str]:
    """Field-level differences of two resolved specs (defaults filled), then parameter counts."""
    fa, fb = _flatten(a.data), _flatten(b.data)
    lines = []
    for key in sorted(fa.keys() | fb.keys()):
        if key not in fb:
            lines.append(f"- {key}: {json.dumps(fa[key])}")
        elif key not in fa:
            lines.append(f"+ {key}: {json.dumps(fb[key])}")
        elif fa[key] != fb[key]:
            lines.append(f"~ {key}: {json.dumps(fa[key])} -> {json.dumps(fb[key])}")
    pa, pb = (sum(r[3] for r in rows(s)) for s in (a, b))
    change = f" ({(pb - pa) / pa:+.1%})" if pa else ""
    lines.append(f"parameters: {pa:,} -> {pb:,}{change}" if pa != pb else f"parameters: {pa:,}")
    return lines




def command(a: str, b: str) -> None:
    for line in diff_specs(load_spec(a, []), load_spec(b, [])):
        print(line)
