"""The typer app and what its commands share: options, help that shows flags as flags. Kept
small and free of numpy/onnxruntime: `dlc --help` imports it."""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup


def _no_value_type(ctx=None) -> None:
    return None


def _flags_as_flags(params: list) -> list:
    """typer 0.29's rich help prints every option's value type, flags included (`--force <bool>`,
    `--help <bool>`), though a flag takes no value; typer <= 0.28 printed none. A flag's value type
    is hidden here, whichever typer renders it."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.display_type_rich = _no_value_type
    return params


class Command(TyperCommand):
    def get_params(self, ctx) -> list:
        return _flags_as_flags(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx) -> list:
        return _flags_as_flags(super().get_params(ctx))


app = typer.Typer(cls=Group, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dlc: YAML model specs compiled to ONNX and trained in ONNX Runtime.")


def run() -> None:
    """Run the app as `dlc` (also under `python -m dlc`: the help's usage line and the shell
    completion variable _DLC_COMPLETE); every command with typer's default class gets `Command`."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = Command
    app(prog_name="dlc")


SetOpt = typer.Option(None, "--set", help="Override a spec field: --set train.epochs=5 "
                                          "--set layers.0.units=128 (repeatable).")
DeviceOpt = typer.Option("auto", help="auto (CUDA when usable, else CPU) | cpu | cuda | cuda:N.")
BatchOpt = typer.Option(1024, min=1, help="Rows per onnxruntime run.")
