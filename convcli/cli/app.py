"""The convcli command: a thin typer app. Each command lives in its own module."""

from __future__ import annotations

import typer

from convcli import __version__
from convcli.cli import check as check_cmd
from convcli.cli import convert as convert_cmd
from convcli.cli import debug as debug_cmd
from convcli.cli import doctor as doctor_cmd
from convcli.cli import package as package_cmd
from convcli.cli import recipe as recipe_cmd
from convcli.cli import report as report_cmd
from convcli.cli import run as run_cmd
from convcli.cli.common import STATE
from convcli.core.offline import apply_offline_env

apply_offline_env()

app = typer.Typer(
    name="convcli",
    help="Convert PyTorch/ONNX models to checked deployment artifacts, with parity, accuracy and latency "
    "side by side.\n\nExample: convcli convert model.py:build --to onnx -i x:batch=2x3x32x32:float32 -o out",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"convcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Global options."""
    STATE["debug"] = debug


app.command("convert")(convert_cmd.convert)
app.command("plan")(convert_cmd.plan_command)
app.command("check")(check_cmd.check)
app.command("debug")(debug_cmd.debug)
app.command("doctor")(doctor_cmd.doctor)
app.command("run")(run_cmd.run)
app.add_typer(recipe_cmd.recipe_app, name="recipe")
app.command("report")(report_cmd.report)
app.command("package")(package_cmd.package)


def main() -> None:
    app()
