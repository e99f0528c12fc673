"""`mlscale rollout …` (also `python -m mlscale.rollout …`): move a release between model versions.

Each command edits the release's ModelRollout and follows its status; the rollout controller in
the cluster does the rollout. Ctrl-C stops the following, not the rollout.

Exit codes: 0 done (or nothing to do), 1 the rollout failed and was rolled back or aborted,
2 refused (nothing changed), 3 the cluster could not be reached or refused a call,
130 stopped following.
"""

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mlscale.rollout import options

if TYPE_CHECKING:
    from mlscale.rollout.kube import Kube
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

    def kube(self) -> "Kube":
        from mlscale.rollout.kube import Kube, Target

        namespace, context, kubeconfig, server = self.target
        return Kube(Target(namespace, context, kubeconfig, server))

    def release(self) -> "Release":
        from mlscale.rollout.release import Release

        return Release(self.kube(), self.release_name)

    def say(self, message: str) -> None:
        if self.output == "text":
            console.print(message)


@app.callback()
def main(
    ctx: typer.Context,
    release: Annotated[str, typer.Option("--release", "-r", help="Helm release name.")] = "mlscale",
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace (default: the context's, else mlscale)."),
    ] = None,
    context: options.Context = None,
    kubeconfig: options.Kubeconfig = None,
    server: options.Server = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """Rolling and canary model upgrades with automatic rollback: a client of the release's
    ModelRollout, which the rollout controller in the cluster reconciles."""
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
            "[yellow]stopped following.[/] The rollout goes on in the cluster: "
            "`mlscale rollout status` shows it, `mlscale rollout abort` stops it."
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
    """The rollout's phase and why, versions served, replicas per track, HPA, and pods' nodes."""
    from mlscale.rollout.status import status as get

    run(ctx, lambda c: get(c.release()))


def _version(c: Ctx, version: str | None, model_image: str | None) -> str:
    """The version asked for, or the one the model image holds (read from its label in the
    local container engine); a version the release's server image cannot run is refused."""
    if model_image is not None:
        from mlscale.rollout.modelimage import image_version, read_manifest, refuse_onto_slim

        manifest = read_manifest(model_image)
        if manifest is not None:
            refuse_onto_slim(manifest, c.release().stable())
        return version if version is not None else image_version(model_image, manifest)
    if version is None:
        from mlscale.rollout.kube import Refused

        raise Refused("say which version to roll out: --version V (or --model-image IMAGE)")
    return version


VersionOpt = Annotated[
    str | None, typer.Option(help="Model version to roll out (default: the model image's).")
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        help="Model image holding the version (mlscale package), for releases "
        "installed with model.image."
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Which model of the release's set to move (the chart's model.others); default: "
        "its first (model.name). The others keep serving what they serve."
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option(help="Seconds to follow the rollout (and for each step's pods).")
]
ForceOpt = Annotated[bool, typer.Option(help="Skip the store and quality checks.")]
RegressionOpt = Annotated[
    float,
    typer.Option(help="Refuse a version whose offline metrics are worse than this fraction."),
]


@app.command()
def deploy(
    ctx: typer.Context,
    version: VersionOpt = None,
    model: ModelOpt = None,
    model_image: ImageOpt = None,
    wait: Annotated[bool, typer.Option(help="Follow the rollout to its end.")] = True,
    timeout: TimeoutOpt = 600,
    dry_run: Annotated[bool, typer.Option(help="Print the change; change nothing.")] = False,
    force: ForceOpt = False,
    max_regression: RegressionOpt = 0.05,
) -> None:
    """Rolling upgrade to VERSION; the controller rolls back by itself if it fails.

    Examples:
      mlscale rollout deploy --version 2
      mlscale rollout deploy --model-image mlscale-model/flowers:2
      mlscale rollout deploy --model linear --version 2   (one model of a set)
    """
    from mlscale.rollout.client import roll, spec_for

    def act(c: Ctx) -> Any:
        spec = spec_for(_version(c, version, model_image), model_image, force=force,
                        strategy={"type": "Rolling"}, max_regression=max_regression,
                        timeout=timeout, model=model)  # fmt: skip
        return roll(c.kube(), c.release_name, spec, say=c.say, timeout=timeout, wait=wait,
                    dry_run=dry_run)  # fmt: skip

    run(ctx, act)


@app.command()
def canary(
    ctx: typer.Context,
    version: VersionOpt = None,
    model: ModelOpt = None,
    model_image: ImageOpt = None,
    steps: Annotated[
        str,
        typer.Option(
            help="The canary's share in %, per step: of requests through a gateway (0: only "
            "requests pinned with the x-model-version header), else a replica ratio."
        ),
    ] = "10,50,100",
    shadow: Annotated[
        int,
        typer.Option(
            min=0,
            max=100,
            help="First a shadow step: copy this % of requests to the canary, discard its "
            "answers, and compare them with stable's (needs a gateway; 0: none).",
        ),
    ] = 0,
    interval: Annotated[int, typer.Option(min=1, help="Seconds of traffic judged per step.")] = 60,
    max_error_rate: Annotated[float, typer.Option(help="Most 5xx per request.")] = 0.01,
    max_p99_ms: Annotated[float, typer.Option(help="Highest canary p99 latency.")] = 250,
    max_p99_ratio: Annotated[float, typer.Option(help="Highest canary/stable p99.")] = 1.5,
    p99_slack_ms: Annotated[
        float,
        typer.Option(min=0, help="A p99 over the ratio fails only this many ms above stable's."),
    ] = 10,
    min_requests: Annotated[int, typer.Option(help="Fewest canary requests per step.")] = 20,
    max_intervals: Annotated[
        int,
        typer.Option(min=1, help="Intervals a step may take to see --min-requests requests."),
    ] = 3,
    max_output_drift: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Largest total-variation distance of the canary's answers from stable's "
            "(1: not checked).",
        ),
    ] = 0.2,
    wait: Annotated[bool, typer.Option(help="Follow the rollout to its end.")] = True,
    timeout: TimeoutOpt = 600,
    force: ForceOpt = False,
    max_regression: RegressionOpt = 0.05,
) -> None:
    """Canary VERSION beside stable; the controller promotes it or aborts on live metrics.

    Examples:
      mlscale rollout canary --version 2 --steps 10,50,100 --interval 60
      mlscale rollout canary --version 2 --shadow 50 --steps 5,50,100   (gateway)
    """
    from mlscale.rollout.client import read, roll, spec_for
    from mlscale.rollout.kube import Refused
    from mlscale.rollout.resource import Traffic

    try:
        weights = [int(s) for s in steps.split(",")]
    except ValueError:
        raise typer.BadParameter("steps are percentages, e.g. 10,50,100") from None
    if any(not 0 <= w <= 100 for w in weights) or weights != sorted(set(weights)):
        raise typer.BadParameter("steps are strictly increasing percentages from 0 to 100")
    if shadow and weights[0] == 0:
        raise typer.BadParameter("--shadow is a step of weight 0 already: start --steps above 0")

    def act(c: Ctx) -> Any:
        kube = c.kube()
        traffic = Traffic.parse(read(kube, c.release_name)["spec"].get("traffic"))
        if (shadow or 0 in weights) and not traffic.gateway:
            raise Refused(
                "a shadow step and a step of 0% need the release's traffic to go through a "
                "gateway (spec.traffic.router Gateway, the chart's gateway.enabled): without "
                "one a canary takes a share of the pods' connections, and nothing copies "
                "requests to it; nothing was changed"
            )
        steps = ([{"weight": 0, "mirror": shadow, "seconds": interval}] if shadow else []) + [
            {"weight": w, "seconds": interval} for w in weights
        ]
        spec = spec_for(_version(c, version, model_image), model_image, force=force,
                        strategy={"type": "Canary", "steps": steps},
                        max_regression=max_regression, timeout=timeout, model=model)  # fmt: skip
        spec["analysis"] = {
            "maxErrorRate": max_error_rate,
            "maxP99Ms": max_p99_ms,
            "maxP99Ratio": max_p99_ratio,
            "p99SlackMs": p99_slack_ms,
            "minRequests": min_requests,
            "maxIntervals": max_intervals,
            "maxOutputDrift": max_output_drift,
        }
        # A whole run's worth of following: every step, its retries, and the promotion.
        follow = max(timeout, len(steps) * interval * max_intervals + timeout)
        return roll(kube, c.release_name, spec, say=c.say, timeout=follow, wait=wait)

    run(ctx, act)


@app.command()
def abort(
    ctx: typer.Context, timeout: Annotated[float, typer.Option(help="Seconds to follow.")] = 300
) -> None:
    """Abort the running rollout: the canary goes, stable returns to its version."""
    from mlscale.rollout.client import request
    from mlscale.rollout.resource import ABORT

    run(ctx, lambda c: request(c.kube(), c.release_name, ABORT, say=c.say, timeout=timeout))


@app.command()
def promote(
    ctx: typer.Context, timeout: Annotated[float, typer.Option(help="Seconds to follow.")] = 600
) -> None:
    """Promote the running canary now, skipping its remaining steps."""
    from mlscale.rollout.client import request
    from mlscale.rollout.resource import PROMOTE

    run(ctx, lambda c: request(c.kube(), c.release_name, PROMOTE, say=c.say, timeout=timeout))


@app.command()
def pause(ctx: typer.Context) -> None:
    """Hold the canary at its step (spec.paused); it keeps its share of traffic."""
    from mlscale.rollout.client import pause as do

    run(ctx, lambda c: do(c.kube(), c.release_name, True))


@app.command()
def resume(ctx: typer.Context) -> None:
    """Go on from a pause: the step is judged afresh."""
    from mlscale.rollout.client import pause as do

    run(ctx, lambda c: do(c.kube(), c.release_name, False))


@app.command()
def history(ctx: typer.Context) -> None:
    """Versions rolled out, when, how, and how it ended (the ModelRollout's status)."""
    from mlscale.rollout.client import read

    run(ctx, lambda c: (read(c.kube(), c.release_name).get("status") or {}).get("history", []))


@app.command()
def rollback(
    ctx: typer.Context,
    to: Annotated[
        str | None, typer.Option(help="Version to return to (default: previous).")
    ] = None,
    model: ModelOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to follow the rollout.")] = 600,
) -> None:
    """Roll back to the version before the current one in the history, or to --to VERSION.

    For a release serving a set, the model the resource last moved, or --model's."""
    from mlscale.rollout.client import read, roll, spec_for
    from mlscale.rollout.kube import RolloutError

    def act(c: Ctx) -> Any:
        kube = c.kube()
        resource = read(kube, c.release_name)
        status, moved = resource.get("status") or {}, resource["spec"].get("model") or ""
        which = moved if model is None else model
        current, image, target = status.get("stableVersion", ""), None, to
        if which != moved:  # stableVersion is the other model's
            current = next(
                (
                    e["version"]
                    for e in reversed(status.get("history", []))
                    if e.get("model", "") == which and e["outcome"] == "succeeded"
                ),
                "",
            )
        if target is None:
            earlier = [e for e in reversed(status.get("history", []))
                       if e["version"] == current and e["outcome"] == "succeeded"
                       and e.get("model", "") == which]  # fmt: skip
            if not earlier:
                raise RolloutError(f"no history of how version {current} was reached; "
                                   "say where to go with --to VERSION")  # fmt: skip
            target, image = earlier[0]["previous"], earlier[0].get("previousImage") or None
        spec = spec_for(target, image, strategy={"type": "Rolling"}, force=True, timeout=timeout,
                        model=which or None)  # fmt: skip
        return roll(kube, c.release_name, spec, say=c.say, timeout=timeout)

    run(ctx, act)


def _print_status(s: dict[str, Any]) -> None:
    out.print(f"release [bold]{s['release']}[/] in {s['namespace']}, model {s['model']}")
    if len(s["models"]) > 1:  # a set: what stable serves of each
        out.print("serves " + ", ".join(f"{m} {v}" for m, v in s["models"].items()))
    if r := s["rollout"]:
        out.print(f"rollout [bold]{r['phase']}[/]: {r['message']}", markup=True)
        if r["canaryVersion"] and r["currentStep"] is not None:
            out.print(f"  canary {r['canaryVersion']} at step {r['currentStep']}: "
                      f"{r['trafficSplit']}")  # fmt: skip
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
        metrics = ", ".join(map(_reading, h["metrics"]))
        out.print(
            f"HPA {h['name']}: {h['current']} -> {h['desired']} replicas "
            f"({h['min']}-{h['max']}); now / target: {metrics}"
        )
        if h["problem"]:
            out.print(f"[yellow]warning:[/] {h['problem']}", markup=True)
    pods = Table("pod", "track", "version", "node", "ready")
    for t in s["tracks"]:
        for p in t["pods"]:
            pods.add_row(
                p["name"], t["track"], p["version"] or "", p["node"] or "", str(p["ready"])
            )
    out.print(pods)


def _reading(m: dict[str, Any]) -> str:
    """`cpu 41% / 50%`: a metric of the HPA, now against its target ("?": no value)."""
    now = "?" if m["current"] is None else f"{m['current']:g}"
    return f"{m['metric']} {now}{m['unit']} / {m['target']:g}{m['unit']}"


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
