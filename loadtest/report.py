"""The report: timeline.csv, summary.json, report.png and report.md in one folder."""

import csv
import json
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

FIGSIZE, DPI = (12, 12), 100  # report.png is 1200 x 1200 pixels


@dataclass
class Row:
    t: float
    users: int
    rps: float
    failures_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rollout: bool = False
    hpa_current: int | None = None
    hpa_desired: int | None = None
    cpu_percent: float | None = None
    request_rate: float | None = None  # requests/s per pod, as the HPA's request metric read it
    ready_pods: int | None = None
    pods_per_node: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)  # since the last row, per version
    canary_weight: int | None = None  # the running canary's share of requests, in %


def write_timeline(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            record = dict(row.__dict__)
            record["pods_per_node"] = json.dumps(row.pods_per_node, sort_keys=True)
            record["versions"] = json.dumps(row.versions, sort_keys=True)
            record["answers"] = json.dumps(row.answers, sort_keys=True)
            writer.writerow(record)


def _mark_rollout(ax: Any, rows: list[Row]) -> None:
    times = [r.t for r in rows if r.rollout]
    if times:
        ax.axvspan(min(times), max(times), color="orange", alpha=0.2, label="rollout")


def plot(rows: list[Row], path: Path, title: str, cluster: bool, canary: str | None = None) -> None:
    t = [r.t for r in rows]
    panels = 5 if canary else 4
    fig, axes = plt.subplots(panels, 1, figsize=(FIGSIZE[0], FIGSIZE[1] * panels / 4), dpi=DPI,
                             sharex=True)  # fmt: skip
    fig.suptitle(title)
    ax = axes[0]
    ax.plot(t, [r.rps for r in rows], label="requests/s")
    ax.plot(t, [r.failures_per_s for r in rows], label="failures/s", color="red")
    ax2 = ax.twinx()
    ax2.plot(t, [r.users for r in rows], label="users", color="gray", linestyle=":")
    ax2.set_ylabel("users")
    ax.set_ylabel("per second")
    ax = axes[1]
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax.plot(t, [getattr(r, key) for r in rows], label=label)
    ax.set_ylabel("latency ms")
    ax = axes[2]
    ax3 = axes[3]
    if cluster:
        ax.step(t, [r.hpa_desired for r in rows], where="post", label="HPA desired")
        ax.step(t, [r.hpa_current for r in rows], where="post", label="HPA current")
        ax.step(t, [r.ready_pods for r in rows], where="post", label="ready pods")
        # What the HPA scales on, beside the replicas it asked for: CPU and requests/s per pod,
        # each against its own axis.
        cpu = ax.twinx()
        cpu.plot(t, [r.cpu_percent for r in rows], color="gray", linestyle=":", label="CPU %")
        cpu.set_ylabel("CPU % of request")
        if any(r.request_rate is not None for r in rows):
            rate = ax.twinx()
            rate.spines.right.set_position(("axes", 1.06))
            rate.plot(t, [r.request_rate for r in rows], color="purple", linestyle="--",
                      label="requests/s per pod (HPA)")  # fmt: skip
            rate.set_ylabel("requests/s per pod")
            rate.legend(loc="upper right", fontsize="small")
        cpu.legend(loc="upper center", fontsize="small")
        nodes = sorted({n for r in rows for n in r.pods_per_node})
        for node in nodes:
            ax3.step(t, [r.pods_per_node.get(node, 0) for r in rows], where="post", label=node)
    else:
        for a, what in ((ax, "replicas"), (ax3, "pods per node")):
            a.text(
                0.5,
                0.5,
                f"no cluster: {what} not sampled (local server)",
                ha="center",
                va="center",
                transform=a.transAxes,
                color="gray",
            )
    ax.set_ylabel("replicas")
    ax3.set_ylabel("ready pods per node")
    if canary:
        ax = axes[4]
        ax.step(t, [r.canary_weight for r in rows], where="post", label="canary weight %")
        ax.plot(t, [share(r, canary) for r in rows], marker=".", linestyle="",
                label=f"answers from version {canary}, %")  # fmt: skip
        ax.set_ylabel("canary %")
    axes[-1].set_xlabel("seconds")
    for a in axes:
        _mark_rollout(a, rows)
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="upper left", fontsize="small")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass(frozen=True)
class Totals:
    """What Locust counted over the whole run."""

    requests: int
    failures: int
    failure_ratio: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass
class RolloutWindow:
    """A model rollout during the run: when it started and ended (seconds into the run) and
    how it went."""

    version: str
    start: float | None = None
    end: float | None = None
    outcome: str | None = None


def share(row: Row, version: str) -> float | None:
    """The share of a row's answers that `version` gave, in %."""
    total = sum(row.answers.values())
    return 100 * row.answers.get(version, 0) / total if total else None


def canary_shares(rows: list[Row], version: str) -> dict[int, dict[str, float | None]]:
    """Per canary weight: the share of answers the canary gave, over the rows wholly at that
    weight (a row after a change of weight holds answers from before it too)."""
    counted: dict[int, list[int]] = {}
    for before, row in pairwise(rows):
        if row.canary_weight is None or row.canary_weight != before.canary_weight:
            continue
        canary, total = counted.setdefault(row.canary_weight, [0, 0])
        counted[row.canary_weight] = [canary + row.answers.get(version, 0),
                                      total + sum(row.answers.values())]  # fmt: skip
    return {w: {"share_pct": round(100 * c / n, 2) if n else None, "answers": n}
            for w, (c, n) in sorted(counted.items())}  # fmt: skip


def summarize(
    target: str,
    model: str,
    totals: Totals,
    rows: list[Row],
    versions: dict[str, int],
    switches: int,
    cluster: bool,
    rollout: RolloutWindow | None,
) -> dict[str, Any]:
    """summary.json: the run's figures, the cluster's where one was sampled, the rollout's."""
    summary: dict[str, Any] = {
        "target": target,
        "model": model,
        "cluster": cluster,
        "duration_s": rows[-1].t if rows else 0,
        "peak_users": max((r.users for r in rows), default=0),
        "requests": totals.requests,
        "failures": totals.failures,
        "failure_ratio": round(totals.failure_ratio, 5),
        "p50_ms": totals.p50_ms,
        "p95_ms": totals.p95_ms,
        "p99_ms": totals.p99_ms,
        "peak_rps": max((r.rps for r in rows), default=0),
        "answers_by_version": versions,
        "version_switches_seen": switches,
        "plot": "report.png",
    }
    if cluster:
        summary |= {
            "min_replicas": min((r.ready_pods or 0 for r in rows), default=0),
            "peak_replicas": max((r.ready_pods or 0 for r in rows), default=0),
            "nodes_used": sorted({n for r in rows for n in r.pods_per_node}),
            "peak_hpa_desired": max((r.hpa_desired or 0 for r in rows), default=0),
            # The HPA's request metric at its highest (None: the HPA has none).
            "peak_requests_per_s_per_pod": max(
                (r.request_rate for r in rows if r.request_rate is not None), default=None
            ),
        }
    if rollout is not None:
        if any(r.canary_weight is not None for r in rows):
            summary["canary_shares"] = canary_shares(rows, rollout.version)
        summary |= {
            "rollout_version": rollout.version,
            "rollout_outcome": rollout.outcome,
            "rollout_window_s": [rollout.start, rollout.end],
            "rollout_duration_s": (
                round(rollout.end - rollout.start, 1)
                if rollout.end is not None and rollout.start is not None
                else None
            ),
        }
    return summary


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    lines = [
        f"# mlscale load test: {summary['target']}",
        "",
        f"![timeline]({summary['plot']})",
        "",
        "| | |",
        "|---|---|",
    ]
    for key, value in summary.items():
        if key not in ("plot",):
            lines.append(f"| {key.replace('_', ' ')} | {value} |")
    lines += ["", "Data: `timeline.csv` (one row per sample), `summary.json`."]
    path.write_text("\n".join(lines) + "\n")
