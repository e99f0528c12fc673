"""`python -m bench.ab REV`: the server at git revision REV against the working tree, in one run.

Both servers run at once, pinned to core 0, and wrk (core 1) alternates between them round by
round, so the machine's drift hits both alike; the ratio is taken within each round, and the
median and range over rounds are reported. REV is checked out into a temporary git worktree and
served from there (`python -m mlscale.service`, or `python -m service` for revisions from before
the `mlscale.*` namespace).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.run import ROOT, by_column_body, publish_models, server, v2_body, wrk
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.artifacts.train import ensure_versions

MODEL = "multilinear"
console = Console()


def worktree(rev: str, into: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(into), rev],
                   check=True, capture_output=True)  # fmt: skip


def serve_command(tree: Path, into: Path) -> list[str]:
    """The server of `tree`, started from a folder where `import mlscale` finds that tree's
    package: its own modules, with the server, the operator and the load test inside, as the
    installed package lays them out. From the tree itself, `mlscale` would be its top folder,
    which has no `service`, and the working tree's editable install would answer
    `import mlscale.service`: both servers would be the working tree's. A tree from before the
    `mlscale.*` namespace runs its `service` package from its own folder."""
    if not (tree / "mlscale").is_dir():
        return ["sh", "-c", f'cd "{tree}" && exec "{sys.executable}" -m service']
    package = into / "mlscale"
    package.mkdir(parents=True)
    for module in (tree / "mlscale").iterdir():
        (package / module.name).symlink_to(module)
    for name in ("service", "rollout", "loadtest"):
        (package / name).symlink_to(tree / name)
    return ["sh", "-c", f'cd "{into}" && exec "{sys.executable}" -m mlscale.service']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev", help="the git revision to compare with the working tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--model", choices=(MODEL, "flowers"), default=MODEL,
        help=f"{MODEL}: V2 requests of 1 and 64 rows to a linear model, answered on its "
        "formula at once; flowers: single-row requests by column to the compiled flowers "
        "pipeline, answered through batching",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlscale-ab-") as tmp, ExitStack() as stack:
        store, before = Path(tmp) / "models", Path(tmp) / "before"
        if args.model == MODEL:
            ensure_versions(ModelStore(store), MODEL, 1)
            scenarios = {"1 row": v2_body(1), "64 rows": v2_body(64)}
        else:
            scenarios = {"1 row": by_column_body(publish_models(store))}
        worktree(args.rev, before)
        stack.callback(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                        str(before)], capture_output=True)  # fmt: skip
        env = {"MLSCALE_MODEL_DIR": str(store), "MLSCALE_MODEL_NAME": args.model,
               "MLSCALE_LOG_LEVEL": "warning"}  # fmt: skip
        configs = {args.rev: serve_command(before, Path(tmp) / "before-packages"),
                   "working tree": serve_command(ROOT, Path(tmp) / "after-packages")}  # fmt: skip
        running = {name: stack.enter_context(server(cmd, env, "/v2/health/ready"))
                   for name, cmd in configs.items()}  # fmt: skip
        path = f"/v2/models/{args.model}/infer"
        runs: dict[tuple[str, str], list[float]] = {}
        for round_ in range(1, args.rounds + 1):
            for scenario, body in scenarios.items():
                for name in configs:
                    console.print(f"[dim]round {round_}/{args.rounds} · {name} · {scenario}[/]")
                    rps = wrk(running[name], path, body, 64, args.seconds)["rps"]
                    runs.setdefault((name, scenario), []).append(rps)
    table = Table(f"{args.model} (c=64)", f"{args.rev} req/s", "working tree req/s",
                  "after/before", "range over rounds", title="medians over rounds")  # fmt: skip
    for scenario in scenarios:
        b, a = runs[(args.rev, scenario)], runs[("working tree", scenario)]
        ratios = [y / x for x, y in zip(b, a, strict=True)]
        table.add_row(scenario, f"{statistics.median(b):,.0f}", f"{statistics.median(a):,.0f}",
                      f"{statistics.median(ratios):.2f}x",
                      f"{min(ratios):.2f}-{max(ratios):.2f}")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
