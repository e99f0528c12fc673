"""`mlscale`: the whole product's CLI, composed above its three packages.

The server's commands are always here. A command group whose extra is not installed (the
server image installs only `serve`) is listed with the extra to install, and says so when run,
instead of failing on an import.
"""

import importlib.util
import os
import sys

import typer
from rich.console import Console

from mlscale.service.cli import app as service_app
from mlscale.service.contract import PROG_ENV
from mlscale.service.helptext import unwrap_help

app = typer.Typer(
    help="Serve versioned scikit-learn models over the Open Inference Protocol.",
    no_args_is_help=True,
    add_completion=False,
)
app.registered_commands.extend(service_app.registered_commands)
console = Console()
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing_extra(name: str, extra: str) -> None:
    @app.command(
        name,
        context_settings=PASS_THROUGH,
        add_help_option=False,
        help=f"(not installed: pip install 'mlscale[{extra}]')",
    )
    def stub(ctx: typer.Context) -> None:
        console.print(
            f"mlscale {name} is not installed here. It needs the {extra} extra: "
            f"pip install 'mlscale[{extra}]'",
            style="red", markup=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(2)


def loadtest(ctx: typer.Context) -> None:
    """Load test with a report (`mlscale loadtest --help` for the options)."""
    # Locust patches the standard library when imported: it runs in a process of its own.
    os.environ[PROG_ENV] = "mlscale loadtest"
    os.execv(sys.executable, [sys.executable, "-m", "mlscale.loadtest", *ctx.args])


def operator(ctx: typer.Context) -> None:
    """The rollout controller, as its image runs it (`mlscale operator --help` for the options)."""
    # A program of its own: the controller's imports (the Kubernetes client's models, leader
    # election) would otherwise slow every `mlscale` command down by most of a second.
    os.environ[PROG_ENV] = "mlscale operator"
    os.execv(sys.executable, [sys.executable, "-m", "mlscale.rollout.operator", *ctx.args])


if installed("kubernetes"):
    from mlscale.rollout.cli import app as rollout_app

    app.add_typer(rollout_app, name="rollout")
    app.command(context_settings=PASS_THROUGH, add_help_option=False)(operator)
else:
    missing_extra("rollout", "rollout")
    missing_extra("operator", "rollout")

if installed("locust"):
    app.command(context_settings=PASS_THROUGH, add_help_option=False)(loadtest)
else:
    missing_extra("loadtest", "loadtest")


unwrap_help(app)
