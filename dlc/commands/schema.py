"""`dlc schema`: the spec language's JSON Schema, as editors use it."""

from __future__ import annotations

import sys

from dlc.model.spec import schema_path


def command() -> None:
    sys.stdout.write(schema_path().read_text())
