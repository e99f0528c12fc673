"""`mlscale rollout …` (also `python -m mlscale.rollout …`): move a release between model versions.

Exit codes: 0 done (or nothing to do), 1 the rollout failed and was rolled back or aborted,
2 refused before changing anything, 3 the cluster could not be reached or refused a call,
130 interrupted.
"""

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from mlscale.rollout.release import Release

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
out = Console()


class Ctx:
    def __init__(
        self,
        release: str,
        namespace: str | None,
        context: str | None,
        kubeconfig: str | None,
        server: str | None,
        output: str,
    ) -> None:
        self.release_name, self.output = release, output
        self.target = (namespace, context, kubeconfig, server)

    def release(self) -> "Release":
        from mlscale.rollout.kube import Kube, Target
        from mlscale.rollout.release import Release

        namespace, context, kubeconfig, server = self.target
        return Release(Kube(Target(namespace, context, kubeconfig, server)), self.release_name)

    def say(self, message: str) -> None:
        if self.output == "text":
            console.print(message)


@app.callback()
def main(
    ctx: typer.Context,
    release: Annotated[str, typer.Option("--release", "-r", help="Helm release name.")] = "mlscale",
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace [default: the context's, else mlscale]."),
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="kubeconfig file.")] = None,
    server: Annotated[
        str | None, typer.Option(help="API server URL, bypassing kubeconfig.", hidden=True)
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """Rolling and canary model upgrades with automatic rollback, via the Kubernetes API."""
    ctx.obj = Ctx(release, namespace, context, kubeconfig, server, output)


def run(ctx: typer.Context, action: Callable[[Ctx], Any]) -> None:
    """Run an action; print its result; turn failures into a message and an exit code."""
    from mlscale.rollout.kube import RolloutError

    c: Ctx = ctx.obj
    try:
        result = action(c)
    except RolloutError as exc:
        if c.output == "json":
            out.print_json(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
        else:
            console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted.[/] The cluster is consistent: a rolling update "
            "goes on by itself (see `mlscale rollout status`; `mlscale rollout "
            "rollback` undoes it); a canary was removed."
        )
        raise typer.Exit(130) from None
    if c.output == "json":
        out.print_json(json.dumps(result, default=lambda o: asdict(o)))
    elif isinstance(result, dict) and "tracks" in result:
        _print_status(result)
    elif isinstance(result, list):
        _print_history(result)
    else:
        out.print(
            f"{result.outcome}: version {result.version} (was {result.previous}) "
            f"{result.detail}".rstrip()
        )


@app.command()
def status(ctx: typer.Context) -> None:
    """Versions served, replicas per track, HPA state, and the node of every pod."""
    from mlscale.rollout.status import status as get

    run(ctx, lambda c: get(c.release()))


@app.command()
def deploy(
    ctx: typer.Context,
    version: Annotated[
        str | None, typer.Option(help="Model version to roll out [default: the model image's].")
    ] = None,
    model_image: Annotated[
        str | None,
        typer.Option(
            help="Model image holding the version (mlscale package), for releases "
            "installed with model.image."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the rollout to its end.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the rollout.")] = 600,
    dry_run: Annotated[bool, typer.Option(help="Print the patch; change nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Skip the store and quality checks.")] = False,
    max_regression: Annotated[
        float,
        typer.Option(help="Refuse a version whose offline metrics are worse than this fraction."),
    ] = 0.05,
) -> None:
    """Rolling upgrade to VERSION; rolls back by itself if it fails.

    Examples:  mlscale rollout deploy --version 2
               mlscale rollout deploy --model-image mlscale-model/flowers:2
    """
    from mlscale.rollout.deploy import deploy as do

    run(
        ctx,
        lambda c: do(
            c.release(),
            version,
            say=c.say,
            timeout=timeout,
            wait=wait,
            dry_run=dry_run,
            force=force,
            max_regression=max_regression,
            model_image=model_image,
        ),
    )


@app.command()
def canary(
    ctx: typer.Context,
    version: Annotated[
        str | None, typer.Option(help="Model version to try [default: the model image's].")
    ] = None,
    model_image: Annotated[
        str | None, typer.Option(help="Model image holding the version (mlscale package).")
    ] = None,
    steps: Annotated[
        str, typer.Option(help="Canary replicas as % of stable, per step.")
    ] = "10,50,100",
    interval: Annotated[float, typer.Option(help="Seconds of traffic judged per step.")] = 60,
    max_error_rate: Annotated[float, typer.Option(help="Most 5xx per request.")] = 0.01,
    max_p99_ms: Annotated[float, typer.Option(help="Highest canary p99 latency.")] = 250,
    max_p99_ratio: Annotated[float, typer.Option(help="Highest canary/stable p99.")] = 1.5,
    min_requests: Annotated[int, typer.Option(help="Fewest canary requests per step.")] = 20,
    max_intervals: Annotated[
        int,
        typer.Option(min=1, help="Intervals a step may take to see --min-requests requests."),
    ] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each scaling.")] = 600,
    force: Annotated[bool, typer.Option(help="Skip the store and quality checks.")] = False,
) -> None:
    """Canary VERSION beside stable; promote it or abort on the pods' own metrics.

    Example:  mlscale rollout canary --version 2 --steps 10,50,100 --interval 60
    """
    from mlscale.rollout.canary import CanaryPolicy, run_canary

    try:
        percents = tuple(int(s) for s in steps.split(","))
    except ValueError:
        raise typer.BadParameter("steps are percentages, e.g. 10,50,100") from None
    policy = CanaryPolicy(
        percents, interval, max_error_rate, max_p99_ms, max_p99_ratio, min_requests, timeout,
        max_intervals,
    )  # fmt: skip
    run(
        ctx,
        lambda c: run_canary(
            c.release(), version, policy, say=c.say, force=force, model_image=model_image
        ),
    )


@app.command()
def history(ctx: typer.Context) -> None:
    """Versions deployed, when, how, and how it ended (kept on the cluster)."""
    from mlscale.rollout.history import History

    run(ctx, lambda c: [asdict(e) for e in History(c.release().kube, c.release_name).read()])


@app.command()
def rollback(
    ctx: typer.Context,
    to: Annotated[
        str | None, typer.Option(help="Version to return to (default: previous).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the rollout.")] = 600,
) -> None:
    """Roll back to the previous version in the history, or to --to VERSION."""
    from mlscale.rollout.deploy import rollback as do

    run(ctx, lambda c: do(c.release(), to, say=c.say, timeout=timeout))


def _print_status(s: dict[str, Any]) -> None:
    out.print(f"release [bold]{s['release']}[/] in {s['namespace']}, model {s['model']}")
    images = any(t["model_image"] for t in s["tracks"])
    columns = ["track", "version", *(["model image"] if images else [])]
    table = Table(*columns, "desired", "updated", "ready", "available", "rollout")
    for t in s["tracks"]:
        table.add_row(
            t["track"],
            t["version"],
            *([t["model_image"] or ""] if images else []),
            str(t["desired"]),
            str(t["updated"]),
            str(t["ready"]),
            str(t["available"]),
            t["rollout"],
        )
    out.print(table)
    if s["hpa"]:
        h = s["hpa"]
        out.print(
            f"HPA {h['name']}: {h['current']} -> {h['desired']} replicas "
            f"({h['min']}-{h['max']}), CPU {h['cpu_percent']}%"
        )
    pods = Table("pod", "track", "version", "node", "ready")
    for t in s["tracks"]:
        for p in t["pods"]:
            pods.add_row(
                p["name"], t["track"], p["version"] or "", p["node"] or "", str(p["ready"])
            )
    out.print(pods)


def _print_history(entries: list[dict[str, Any]]) -> None:
    table = Table("started", "version", "from", "strategy", "outcome", "seconds", "detail")
    for e in entries:
        table.add_row(
            e["started"],
            e["version"],
            e["previous"],
            e["strategy"],
            e["outcome"],
            str(e["seconds"]),
            e["detail"],
        )
    out.print(table if entries else "no rollouts recorded yet")


if __name__ == "__main__":
    sys.exit(app())
