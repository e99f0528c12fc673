"""Canary analysis from the pods' own `/metrics`: no Prometheus server needed.

A snapshot is what one scrape of every pod of a track (stable or canary) says; the difference
of two snapshots is what happened in between. Rates come from counter deltas and the p99 from
histogram bucket deltas, interpolated inside a bucket the way PromQL's histogram_quantile does.
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from mlscale.service.contract import INFER_ENDPOINTS, LATENCY, REQUESTS


@dataclass
class Snapshot:
    """Inference requests and latency buckets, summed over the pods scraped."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx: the server's fault (4xx is the client's)
    # upper bound -> cumulative count
    buckets: defaultdict[float, float] = field(default_factory=lambda: defaultdict(float))

    def add_scrape(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("endpoint") not in INFER_ENDPOINTS:
                    continue
                if sample.name == REQUESTS + "_total":
                    self.requests += sample.value
                    if sample.labels.get("code", "").startswith("5"):
                        self.errors += sample.value
                elif sample.name == LATENCY + "_bucket":
                    self.buckets[float(sample.labels["le"])] += sample.value

    def __sub__(self, earlier: "Snapshot") -> "Snapshot":
        # A pod that restarted resets its counters; a negative delta is clamped to what the new
        # pod counted since (its current value), as Prometheus' rate() does.
        def delta(now: float, then: float) -> float:
            return now - then if now >= then else now

        return Snapshot(
            requests=delta(self.requests, earlier.requests),
            errors=delta(self.errors, earlier.errors),
            buckets=defaultdict(
                float,
                {le: delta(n, earlier.buckets.get(le, 0.0)) for le, n in self.buckets.items()},
            ),
        )

    def __add__(self, other: "Snapshot") -> "Snapshot":
        """Two pods' (or tracks') traffic together."""
        buckets = defaultdict(float, self.buckets)
        for le, n in other.buckets.items():
            buckets[le] += n
        return Snapshot(self.requests + other.requests, self.errors + other.errors, buckets)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        """Latency quantile in seconds; NaN without observations."""
        bounds = sorted(self.buckets)
        if not bounds or self.buckets[math.inf] == 0:
            return math.nan
        total = self.buckets[math.inf]
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound in bounds:
            count = self.buckets[bound]
            if count >= rank:
                if bound == math.inf:  # beyond the last finite bucket: its bound is the answer
                    return lower_bound
                inside = count - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / inside)
            lower_bound, lower_count = bound, count
        return lower_bound


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]
    # Failed only for want of canary requests: more time may settle it (a few long-lived client
    # connections can miss the canary for a while; see the server's connection lifetime).
    inconclusive: bool = False


def judge(
    canary: Snapshot,
    stable: Snapshot,
    *,
    max_error_rate: float,
    max_p99_ms: float,
    max_p99_ratio: float,
    min_requests: int,
) -> Verdict:
    """One step's canary traffic against absolute limits, and its p99 against stable's."""
    reasons = []
    too_few = canary.requests < min_requests
    if too_few:
        reasons.append(f"canary saw {canary.requests:.0f} requests, fewer than {min_requests}")
    if canary.error_rate > max_error_rate:
        reasons.append(f"canary error rate {canary.error_rate:.2%} > {max_error_rate:.2%}")
    p99, stable_p99 = canary.quantile(0.99) * 1000, stable.quantile(0.99) * 1000
    if p99 > max_p99_ms:
        reasons.append(f"canary p99 {p99:.1f} ms > {max_p99_ms:.1f} ms")
    if stable.requests >= min_requests and p99 > stable_p99 * max_p99_ratio:
        reasons.append(
            f"canary p99 {p99:.1f} ms > {max_p99_ratio:g} x stable p99 {stable_p99:.1f} ms"
        )
    return Verdict(passed=not reasons, reasons=reasons, inconclusive=too_few and len(reasons) == 1)
