"""`python -m mlscale.loadtest` (also `mlscale loadtest`): step the load up, hold, step down; sample
the cluster while it runs; write reports/<time>/ with timeline.csv, summary.json, report.png
and report.md.

Examples:
  python -m mlscale.loadtest --url http://127.0.0.1:8080 --model iris --users 20
  python -m mlscale.loadtest --url http://127.0.0.1:30090 --cluster --rollout-version 2  # kind
  python -m mlscale.loadtest --url http://127.0.0.1:30090 --cluster --rollout-version 2 \
      --canary-steps 1,5,25,50 --steps 1 --hold-seconds 240   # shares through the gateway
"""

# Locust patches the standard library for gevent on import: it goes first.
from mlscale.loadtest.runner import Plan, run  # isort: skip

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mlscale.service.contract import PROG_ENV
from mlscale.service.helptext import unwrap_help

console = Console()


def main(
    url: Annotated[str, typer.Option(help="Server to load.")] = "http://127.0.0.1:8080",
    model: Annotated[str, typer.Option(help="Model to send requests to.")] = "iris",
    users: Annotated[int, typer.Option(help="Users at the peak.")] = 50,
    steps: Annotated[int, typer.Option(help="Steps up to the peak.")] = 5,
    step_seconds: Annotated[float, typer.Option(help="Length of each step.")] = 20,
    hold_seconds: Annotated[float, typer.Option(help="Time at the peak.")] = 60,
    down_seconds: Annotated[float, typer.Option(help="Ramp-down time.")] = 10,
    sample_seconds: Annotated[float, typer.Option(help="Sampling interval.")] = 2,
    out: Annotated[Path, typer.Option(help="Reports folder.")] = Path("reports"),
    cluster: Annotated[bool, typer.Option(help="Sample the release on the cluster.")] = False,
    release: Annotated[str, typer.Option(help="Helm release (with --cluster).")] = "mlscale",
    namespace: Annotated[str, typer.Option(help="Namespace (with --cluster).")] = "mlscale",
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    rollout_version: Annotated[
        str | None,
        typer.Option(help="Roll this model version out during the hold (needs --cluster)."),
    ] = None,
    rollout_at: Annotated[
        float | None,
        typer.Option(
            help="Seconds after the start to begin the rollout (default: 10 s into the hold)."
        ),
    ] = None,
    canary_steps: Annotated[
        str,
        typer.Option(
            help="Roll out as a canary of these weights, e.g. 1,5,25,50 (default: a rolling "
            "update); the report plots the canary's share of answers against its weight."
        ),
    ] = "",
    canary_interval: Annotated[float, typer.Option(help="Seconds per canary step.")] = 30,
) -> None:
    """Load test: step the load up, hold, step down; sample the cluster while it runs; write
    reports/<time>/ with timeline.csv, summary.json, report.png and report.md.

    Examples:
      a server on this machine:
        mlscale loadtest --url http://127.0.0.1:8080 --model iris --users 20
      the kind cluster, a rollout at the hold:
        mlscale loadtest --url http://127.0.0.1:30090 --cluster --rollout-version 2
      canary shares through the gateway:
        mlscale loadtest --url http://127.0.0.1:30090 --cluster --rollout-version 2 \\
            --canary-steps 1,5,25,50 --steps 1 --hold-seconds 240
    """
    sampler = target = None
    if cluster:
        from mlscale.loadtest.sampler import ClusterSampler
        from mlscale.rollout.kube import Kube, RolloutError, Target
        from mlscale.rollout.release import Release

        try:
            target = Release(Kube(Target(namespace=namespace, context=context)), release)
            target.stable()
        except RolloutError as exc:
            console.print(f"[red]no cluster:[/] {exc}")
            raise typer.Exit(3) from None
        sampler = ClusterSampler(target)
    elif rollout_version:
        raise typer.BadParameter("--rollout-version needs --cluster")
    try:
        weights = tuple(int(w) for w in canary_steps.split(",") if w.strip())
    except ValueError:
        raise typer.BadParameter("--canary-steps are percentages, e.g. 1,5,25,50") from None
    plan = Plan(
        url,
        model,
        users,
        steps,
        step_seconds,
        hold_seconds,
        down_seconds,
        sample_seconds,
        out,
        rollout_version,
        rollout_at,
        weights,
        canary_interval,
    )
    folder = run(plan, sampler, target)
    summary = json.loads((folder / "summary.json").read_text())
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "plot"}))
    console.print(f"report: [bold]{folder / 'report.md'}[/] (plot {folder / 'report.png'})")
    if summary["failures"] or summary["errors"] or not summary["requests"]:
        console.print("[red]the load test failed:[/] " + ("; ".join(summary["errors"][:3])
                      or "no request was answered"))  # fmt: skip
        raise typer.Exit(1)


app = typer.Typer(add_completion=False)
app.command()(main)
unwrap_help(app)
# Started by `mlscale loadtest`, its help names that command, not `python -m mlscale.loadtest`.
app(prog_name=os.environ.pop(PROG_ENV, None))
