"""The `synthface` Typer application: one module per command group registers itself here."""

from __future__ import annotations

import importlib

import typer

from synthface import __version__
from synthface.cli.common import example

EPILOG = example(
    """
python -c "from synthface.testing import tiny_native_model; tiny_native_model('runs/tiny')"
synthface generate --model runs/tiny --recipe recipes/quickstart-native.yaml --out runs/quickstart
synthface inspect runs/quickstart
synthface COMMAND --help
"""
)

app = typer.Typer(
    name="synthface",
    help="Generate synthetic face-recognition datasets and prove whether they are any good.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Each module defines register(app). Keep this list in the order commands appear in --help.
COMMAND_MODULES = [
    "generate",
    "train",
    "evaluate",
    "align",
    "embed",
    "verify",
    "inspect_cmd",
    "export",
    "doctor",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"synthface {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Generate synthetic face-recognition datasets and prove whether they are any good."""


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"synthface.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command group not built yet
        if exc.name != f"synthface.cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()
