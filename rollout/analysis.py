"""Canary analysis from the pods' own `/metrics`: no Prometheus server needed.

A snapshot is what one scrape of every pod of a track (stable or canary) says; the difference
of two snapshots is what happened in between. Rates come from counter deltas and the p99 from
histogram bucket deltas, interpolated inside a bucket the way PromQL's histogram_quantile does.

Answers are compared too: the servers count what the model predicted (labels of a classifier,
a histogram of a regressor's values), and a step fails when the canary's distribution is
further from stable's than `max_output_drift` in total-variation distance (`output_drift`).
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from mlscale.service.contract import (
    INFER_ENDPOINTS,
    LATENCY,
    PREDICTION_VALUES,
    PREDICTIONS,
    REQUESTS,
    failed,
)

# Fewest answers on each side that a distribution is compared on. Two samples of one
# distribution differ by chance: with 200 answers over ten bins, by ~0.1 in total variation.
DRIFT_MIN_SAMPLES = 200


K = TypeVar("K", str, float)


def _counts() -> defaultdict[str, float]:
    return defaultdict(float)


@dataclass
class Snapshot:
    """Inference requests and latency buckets, summed over the pods scraped."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx and refused inputs (contract.failed); other 4xx are the client's
    # upper bound -> cumulative count
    buckets: defaultdict[float, float] = field(default_factory=lambda: defaultdict(float))
    # What the model answered: label -> count (a classifier), upper bound -> cumulative count
    # (a regressor's values).
    labels: defaultdict[str, float] = field(default_factory=_counts)
    values: defaultdict[float, float] = field(default_factory=lambda: defaultdict(float))

    def add_scrape(self, text: str, model: str = "") -> None:
        """A pod's /metrics, for `model` ("": every model it serves)."""
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if model and sample.labels.get("model", model) != model:
                    continue
                if sample.name == PREDICTIONS + "_total":
                    self.labels[sample.labels["label"]] += sample.value
                elif sample.name == PREDICTION_VALUES + "_bucket":
                    self.values[float(sample.labels["le"])] += sample.value
                elif sample.labels.get("endpoint") not in INFER_ENDPOINTS:
                    continue
                elif sample.name == REQUESTS + "_total":
                    self.requests += sample.value
                    if failed(sample.labels.get("code", "")):
                        self.errors += sample.value
                elif sample.name == LATENCY + "_bucket":
                    self.buckets[float(sample.labels["le"])] += sample.value

    def __sub__(self, earlier: "Snapshot") -> "Snapshot":
        # A pod that restarted resets its counters; a negative delta is clamped to what the new
        # pod counted since (its current value), as Prometheus' rate() does.
        def delta(now: float, then: float) -> float:
            return now - then if now >= then else now

        def deltas(now: dict[K, float], then: dict[K, float]) -> defaultdict[K, float]:
            return defaultdict(float, {k: delta(n, then.get(k, 0.0)) for k, n in now.items()})

        return Snapshot(
            requests=delta(self.requests, earlier.requests),
            errors=delta(self.errors, earlier.errors),
            buckets=deltas(self.buckets, earlier.buckets),
            labels=deltas(self.labels, earlier.labels),
            values=deltas(self.values, earlier.values),
        )

    def __add__(self, other: "Snapshot") -> "Snapshot":
        """Two pods' (or tracks') traffic together."""

        def sums(a: dict[K, float], b: dict[K, float]) -> defaultdict[K, float]:
            total = defaultdict(float, a)
            for k, n in b.items():
                total[k] += n
            return total

        return Snapshot(
            self.requests + other.requests,
            self.errors + other.errors,
            sums(self.buckets, other.buckets),
            sums(self.labels, other.labels),
            sums(self.values, other.values),
        )

    def answers(self) -> dict[str, float]:
        """The answers counted, as a distribution's raw counts: per label for a classifier,
        per histogram bin (`<=bound`) for a regressor."""
        if self.labels:
            return dict(self.labels)
        bins, below = {}, 0.0
        for bound in sorted(self.values):
            bins[f"<={bound:g}"] = self.values[bound] - below
            below = self.values[bound]
        return bins

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


def output_drift(canary: Snapshot, stable: Snapshot) -> float:
    """Total-variation distance between the two tracks' answer distributions: half the sum,
    over labels (or histogram bins), of the difference in their shares; 0 when they answer
    alike, 1 when they never give the same answer. Chosen over the population stability
    index because it is bounded, symmetric and needs no smoothing of empty bins (where PSI is
    infinite), and reads the same for labels and for bins: the share of answers that would
    have to move for the two to agree."""
    a, b = canary.answers(), stable.answers()
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return math.nan
    return sum(abs(a.get(k, 0.0) / na - b.get(k, 0.0) / nb) for k in a.keys() | b.keys()) / 2


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]
    # Failed only for want of data: more time may settle it (a few long-lived client
    # connections can miss the canary for a while; see the server's connection lifetime).
    inconclusive: bool = False
    drift: float | None = None  # total-variation distance of the answers, where judged


def judge(
    canary: Snapshot,
    stable: Snapshot,
    *,
    max_error_rate: float,
    max_p99_ms: float,
    max_p99_ratio: float,
    min_requests: int,
    p99_slack_ms: float = 0.0,
    max_output_drift: float = 1.0,
    drift_required: bool = False,
) -> Verdict:
    """One step's canary traffic against absolute limits, its p99 against stable's, and its
    answers against stable's. A p99 over `max_p99_ratio` x stable's fails only when it is also
    more than `p99_slack_ms` above it: the tracks' pods rarely carry the same load per pod (at
    100% the canary's carry all of it), and on a busy node a few ms of tail is that, not the
    version. The answers are compared where both tracks gave at least
    DRIFT_MIN_SAMPLES of them; with `drift_required` (a shadow step, which exists to compare
    them) fewer is a want of data, like too few requests."""
    reasons, wanting = [], []
    if canary.requests < min_requests:
        wanting.append(f"canary saw {canary.requests:.0f} requests, fewer than {min_requests}")
    if canary.error_rate > max_error_rate:
        reasons.append(f"canary error rate {canary.error_rate:.2%} > {max_error_rate:.2%}")
    p99, stable_p99 = canary.quantile(0.99) * 1000, stable.quantile(0.99) * 1000
    if p99 > max_p99_ms:
        reasons.append(f"canary p99 {p99:.1f} ms > {max_p99_ms:.1f} ms")
    slower = p99 > stable_p99 * max_p99_ratio and p99 - stable_p99 > p99_slack_ms
    if stable.requests >= min_requests and slower:
        reasons.append(
            f"canary p99 {p99:.1f} ms > {max_p99_ratio:g} x stable p99 {stable_p99:.1f} ms"
            + (f" (and more than {p99_slack_ms:g} ms above it)" if p99_slack_ms else "")
        )
    drift = None
    answered = min(sum(canary.answers().values()), sum(stable.answers().values()))
    if answered >= DRIFT_MIN_SAMPLES:
        drift = output_drift(canary, stable)
        if drift > max_output_drift:
            reasons.append(
                f"canary answers drift {drift:.3f} from stable's (total variation) > "
                f"{max_output_drift:g}"
            )
    elif drift_required:
        wanting.append(f"{answered:.0f} answers to compare, fewer than {DRIFT_MIN_SAMPLES}")
    return Verdict(
        passed=not reasons and not wanting,
        reasons=reasons + wanting,
        inconclusive=bool(wanting) and not reasons,
        drift=drift,
    )
