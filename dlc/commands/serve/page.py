"""The page `dlc serve` shows at /: a form for one sample (a field per column, or the sample as
text or JSON) and a CSV upload, both posted to /predict by a few lines of plain JavaScript; no
external assets."""

from __future__ import annotations

import html
import json
from importlib import resources
from string import Template

import numpy as np

from dlc.commands.serve.payload import Field, row_form


def _column(field: Field, column: str) -> str:
    name = html.escape(column, quote=True)
    kind = "number" if field.kind in ("number", "column_number") else "text"
    known = (field.categories or {}).get(column) or []
    options = "".join(f'<option value="{html.escape(v, quote=True)}">' for v in known)
    listed = f' list="known-{name}"><datalist id="known-{name}">{options}</datalist' if known \
        else ""
    return (f'<label><span>{html.escape(column)}</span> <input type="text" name="{name}" '
            f'data-column="1" data-kind="{kind}"{listed}></label>')


def _fields(fields: list[Field]) -> str:
    form = row_form(fields)
    if form == "text":
        return '<textarea name="text" data-kind="text" placeholder="text to classify"></textarea>'
    if form == "array":
        zeros = json.dumps(np.zeros(fields[0].shape, int).tolist())
        return (f'<label>the sample, a JSON array of shape {fields[0].shape}</label>'
                f'<textarea name="row" data-kind="json">{html.escape(zeros)}</textarea>')
    return "\n".join(_column(f, c) for f in fields for c in f.features)


def render_page(model, fields: list[Field]) -> str:
    """The HTML of /."""
    tasks = ", ".join(f"{h + ': ' if h else ''}{t['kind']}" for h, t in model.heads.items())
    template = Template(resources.files("dlc.commands.serve").joinpath("page.html").read_text())
    return template.substitute(title=html.escape(model.spec["name"]),
                               about=html.escape(f"A {tasks} model ({model.path.name})."),
                               fields=_fields(fields))
