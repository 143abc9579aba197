"""`dlc expand`: the spec with blocks expanded and every default filled."""

from __future__ import annotations

import sys

import yaml

from dlc.model.spec import load_spec


def command(spec: str, overrides: list) -> None:
    data = dict(load_spec(spec, overrides).data)
    data.pop("blocks", None)
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
