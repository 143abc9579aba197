"""The whole error hierarchy. The CLI's error handler maps each class to an exit code."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem at one place in a spec file: `file:line:col: path: message`."""

    file: str
    line: int  # 1-based; 0 when unknown
    col: int  # 1-based; 0 when unknown
    path: str  # e.g. "layers[2].units"; "" for the document itself
    message: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class DlcError(Exception):
    """A problem the user can fix (missing file, corrupt model, divergence): exit 1."""

    exit_code = 1


class UsageError(DlcError):
    """A bad command-line value: exit 2."""

    exit_code = 2


class SpecError(DlcError):
    """One or more problems in a spec file: exit 2. Renders every diagnostic, one per line."""

    exit_code = 2

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(set(diagnostics))
        super().__init__("\n".join(d.render() for d in self.diagnostics))


def optional_module(name: str, missing: str, what: str, error: type[DlcError] = DlcError):
    """Import the optional package or module `name` (lazily, where it is used): `error`
    `missing` (the install hint, naming the extra) when it or a package above it is not
    installed, else one line naming `what` that failed to import (a broken install)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise error(missing) from None
        raise error(f"{what}: cannot import {name}: {e}") from None
    except ImportError as e:
        raise error(f"{what}: cannot import {name}: {e}") from None
