"""Run Locust headless as a library against a server, sample it (and the cluster, when there
is one) while it runs, optionally roll the model out mid-hold, and write the report.

Import this module only in a process of its own: Locust patches the standard library for
gevent when it is imported.
"""

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from mlscale.loadtest.locustfile import StepShape, Tally, users_for
from mlscale.loadtest.report import (
    RolloutWindow,
    Row,
    Totals,
    plot,
    summarize,
    write_markdown,
    write_timeline,
)
from mlscale.loadtest.sampler import ClusterSampler


@dataclass(frozen=True)
class Plan:
    url: str
    model: str = "iris"
    users: int = 50
    steps: int = 5
    step_seconds: float = 20
    hold_seconds: float = 60
    down_seconds: float = 10
    sample_seconds: float = 2
    out: Path = Path("reports")
    rollout_version: str | None = None  # roll out this version during the hold
    rollout_at: float | None = None  # seconds after the start (default: hold start + 10)
    canary_steps: tuple[int, ...] = ()  # as a canary of these weights (else a rolling update)
    canary_interval: float = 30  # seconds per canary step


def run(plan: Plan, sampler: ClusterSampler | None, release: Any = None) -> Path:
    shape = StepShape(
        plan.users, plan.steps, plan.step_seconds, plan.hold_seconds, plan.down_seconds
    )
    tally = Tally()
    env = Environment(user_classes=[users_for(plan.model, tally)], shape_class=shape, host=plan.url)
    runner = env.create_local_runner()
    rows: list[Row] = []
    window = RolloutWindow(plan.rollout_version) if plan.rollout_version else None
    started = time.monotonic()

    def sample() -> None:
        # Rates from counter deltas between samples: Locust's own current_rps is a 10 s
        # moving average that lags a step change.
        last = (time.monotonic(), 0, 0)
        seen = dict(tally.versions)
        while True:
            gevent.sleep(plan.sample_seconds)
            total = env.stats.total
            now = time.monotonic()
            span = now - last[0]
            rps = (total.num_requests - last[1]) / span
            fails = (total.num_failures - last[2]) / span
            last = (now, total.num_requests, total.num_failures)
            p50, p95, p99 = (
                float(total.get_current_response_time_percentile(q) or 0) for q in (0.5, 0.95, 0.99)
            )
            row = Row(
                t=round(now - started, 1),
                users=runner.user_count,
                rps=round(rps, 1),
                failures_per_s=round(fails, 2),
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                rollout=window is not None and window.start is not None and window.end is None,
                answers={v: n - seen.get(v, 0) for v, n in tally.versions.items()},
            )
            seen = dict(tally.versions)
            if sampler is not None:
                try:
                    c = sampler.sample()
                except Exception as exc:  # a missed sample must not stop the load test
                    print(f"cluster sample failed: {exc}")
                else:
                    row.hpa_current, row.hpa_desired = c.hpa_current, c.hpa_desired
                    row.cpu_percent, row.ready_pods = c.cpu_percent, c.ready_pods
                    row.pods_per_node, row.versions = c.pods_per_node, c.versions
                    row.canary_weight, row.request_rate = c.canary_weight, c.request_rate
            rows.append(row)

    def roll_out(window: RolloutWindow) -> None:
        from mlscale.rollout.client import roll, spec_for
        from mlscale.rollout.kube import RolloutError

        at = plan.rollout_at if plan.rollout_at is not None else shape.ramp_end + 10
        gevent.sleep(at)
        window.start = round(time.monotonic() - started, 1)
        strategy: dict[str, Any] = {"type": "Rolling"}
        timeout = 600.0
        if plan.canary_steps:
            steps = [{"weight": w, "seconds": int(plan.canary_interval)} for w in plan.canary_steps]
            strategy = {"type": "Canary", "steps": steps}
            timeout += 3 * plan.canary_interval * len(steps)  # each step may take 3 intervals
        try:
            spec = spec_for(window.version, strategy=strategy, force=True, timeout=timeout)
            window.outcome = roll(release.kube, release.name, spec, say=print,
                                  timeout=timeout).outcome  # fmt: skip
        except RolloutError as exc:
            window.outcome = f"failed: {exc}"
        window.end = round(time.monotonic() - started, 1)

    runner.start_shape()
    jobs = [gevent.spawn(sample)]
    if window is not None and release is not None:
        jobs.append(gevent.spawn(roll_out, window))
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("load", total=shape.duration)
        while runner.shape_greenlet is not None or runner.user_count:
            elapsed = time.monotonic() - started
            total = env.stats.total
            progress.update(
                task,
                completed=min(elapsed, shape.duration),
                description=(
                    f"{runner.user_count:3d} users {total.current_rps:7.1f} req/s "
                    f"{total.num_failures} failed"
                ),
            )
            gevent.sleep(0.5)
            if elapsed > shape.duration + 30:
                break
    runner.quit()
    if len(jobs) > 1:
        jobs[1].join(timeout=600)
    gevent.killall(jobs[:1])
    total = env.stats.total
    totals = Totals(
        total.num_requests,
        total.num_failures,
        total.fail_ratio,
        *(total.get_response_time_percentile(q) for q in (0.5, 0.95, 0.99)),
    )
    summary = summarize(plan.url, plan.model, totals, rows, dict(tally.versions), tally.switches,
                        cluster=sampler is not None, rollout=window)  # fmt: skip
    # What failed, as Locust saw it: "count x name: error", most frequent first.
    errors = sorted(env.stats.errors.values(), key=lambda e: -e.occurrences)
    summary["errors"] = [f"{e.occurrences} x {e.name}: {e.error}" for e in errors]
    # A user that raised (in on_start or a task) stopped sending: say what it raised.
    raised = sorted(runner.exceptions.values(), key=lambda e: -e["count"])
    summary["errors"] += [f"{e['count']} x a user raised: {e['msg']}" for e in raised]
    return write_report(plan, summary, rows)


def write_report(plan: Plan, summary: dict[str, Any], rows: list[Row]) -> Path:
    folder = plan.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    write_timeline(rows, folder / "timeline.csv")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    cluster = summary["cluster"]
    title = f"{plan.model} at {plan.url}, {plan.users} users" + ("" if cluster else " (local)")
    canary = summary.get("rollout_version") if "canary_shares" in summary else None
    plot(rows, folder / "report.png", title, cluster, canary)
    write_markdown(summary, folder / "report.md")
    (folder / "plan.json").write_text(json.dumps(asdict(plan), default=str, indent=2) + "\n")
    return folder
