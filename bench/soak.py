"""`make soak`: ten minutes at about 80% of what three pods serve, the HPA on, on the kind
cluster of `make kind-up` with the demo release (`make deploy`).

1. Capacity: wrk through the Service's NodePort for 15 s with the HPA holding 3 pods.
2. The soak: wrk paced to `--share` of that (each connection waits between its requests, the
   wait set from a 10 s trial, as an answer's latency is part of each request's period), for
   `--minutes`; every 10 s, each pod's working set (from its node's container runtime) and
   the replica count.
3. Figures: requests, failed (non-2xx and socket errors), p99, the rate held against the
   capacity, and each pod's memory growth from the end of the first minute (a pod the HPA
   added, from the end of its own first minute) to the end. The goal: 0 failed, every pod
   under 5%.

Leaves the release as k8s/values-kind.yaml has it. Writes bench/results/soak-<time>.json.
"""

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.cluster import (
    ROOT,
    failed,
    helm_demo_values,
    p99_ms,
    pods,
    requests_per_second,
    wrk,
)
from bench.faults import three_pods, working_sets

console = Console()
SAMPLE_EVERY = 10.0


def growth(samples: list[tuple[float, dict[str, float]]], settle: float) -> dict[str, float]:
    """Each pod's memory growth, in %, from its first sample `settle` seconds or more after
    its first sample, to its last."""
    seen: dict[str, list[tuple[float, float]]] = {}
    for t, sets in samples:
        for pod, used in sets.items():
            seen.setdefault(pod, []).append((t, used))
    grown = {}
    for pod, series in seen.items():
        later = [used for t, used in series if t - series[0][0] >= settle]
        if len(later) >= 2:
            grown[pod] = round((later[-1] - later[0]) / later[0] * 100, 2)
    return grown


def pace_for(connections: int, rate: float, latency_ms: float) -> int:
    """Milliseconds each connection waits between requests for `rate` req/s in all, when an
    answer takes `latency_ms`: a connection sends one request per pause plus latency."""
    return max(1, round(connections * 1000 / rate - latency_ms))


def calibrated_pace(connections: int, rate: float) -> int:
    """The pace for `rate`, from a 10 s trial at the pace that ignores latency: what that trial
    held tells how long an answer takes at about this load."""
    first = pace_for(connections, rate, 0)
    out, _ = wrk(10, connections, pace_ms=first).communicate()
    latency_ms = connections * 1000 / requests_per_second(out) - first
    return pace_for(connections, rate, latency_ms)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--share", type=float, default=0.8, help="of the measured capacity")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    result: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"), **vars(args)}
    result["out"] = str(args.out)
    try:
        three_pods()
        out, _ = wrk(15, args.connections).communicate()
        capacity = result["capacity_rps"] = requests_per_second(out)
        pace = calibrated_pace(args.connections, args.share * capacity)
        console.print(f"capacity {capacity:.0f} req/s; soaking at {args.share:.0%} of it "
                      f"({args.connections} connections, {pace} ms apart) for "
                      f"{args.minutes:g} min")  # fmt: skip
        start = time.monotonic()
        load = wrk(args.minutes * 60, args.connections, pace_ms=pace)
        samples: list[tuple[float, dict[str, float]]] = []
        replicas: list[int] = []
        while load.poll() is None:
            samples.append((time.monotonic() - start, working_sets()))
            replicas.append(len(pods()))
            time.sleep(SAMPLE_EVERY)
        out, _ = load.communicate()
        grown = growth(samples, settle=60)
        result.update({
            "rps": requests_per_second(out), "failed": failed(out), "p99_ms": p99_ms(out),
            "requests": round(requests_per_second(out) * args.minutes * 60),
            "replicas": [min(replicas), max(replicas)], "memory_growth_pct": grown,
            "memory_mb": {pod: round(sets / 2**20, 1) for pod, sets in samples[-1][1].items()},
        })  # fmt: skip
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")  # whatever was measured
        helm_demo_values()
    table = Table(title=f"soak: {args.minutes:g} min at {args.share:.0%} of 3 pods' capacity")
    for column in ("capacity req/s", "held req/s", "requests", "failed", "p99 ms", "replicas",
                   "largest memory growth after 1 min"):  # fmt: skip
        table.add_column(column)
    table.add_row(f"{capacity:.0f}", f"{result['rps']:.0f} ({result['rps'] / capacity:.0%})",
                  str(result["requests"]), str(result["failed"]), f"{result['p99_ms']:.1f}",
                  "{}-{}".format(*result["replicas"]),
                  f"{max(grown.values(), default=0):.2f}%")  # fmt: skip
    console.print(table)
    console.print(f"written: {path}")


if __name__ == "__main__":
    main()
