"""Prometheus metrics, in a registry per app (tests start many). `rest/fastpath.py` counts and
times every request by endpoint, model, version and status code."""

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from math import inf
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mlscale.service import contract
from mlscale.service.settings import LOG_BUCKETS

# Sub-millisecond buckets too: a linear model answers in well under a millisecond.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
Labels = tuple[str, str, str, str]  # endpoint, model, version, code
# A batched request's answer of up to this many values is counted in Python: numpy's per-call
# cost (np.unique's about 8 µs) was a fifth of a compiled model's single-row request.
SMALL_ANSWER = 16


def _histogram(le: list[str], counts: list[float]) -> tuple[list[tuple[str, float]], float]:
    """Counts kept per bucket (not cumulative), then +Inf, then the sum, as a histogram's
    cumulative buckets and its sum."""
    return list(zip(le, accumulate(counts[:-1]), strict=True)), counts[-1]


class PlainHistogram(Collector):
    """A histogram without labels that takes no lock: observed and rendered on the event loop's
    thread, like RequestStats. prometheus_client's takes one per observation."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = list(buckets)
        self._le = [floatToGoString(b) for b in (*buckets, inf)]
        self._counts: list[float] = [0] * (len(self._bounds) + 2)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # the first bucket with le >= value
        self._counts[-1] += value

    def collect(self) -> Iterator[Metric]:
        buckets, total = _histogram(self._le, self._counts)
        yield HistogramMetricFamily(self.name, self.documentation, buckets, total)


class RequestStats(Collector):
    """Requests answered and their latency: `mlscale_requests_total` and
    `mlscale_request_duration_seconds`, by endpoint, model, version and code.

    Requests are counted on the event loop's thread and /metrics is rendered there too, so
    plain lists do. prometheus_client's Counter and Histogram take a lock for every update
    (four per request), which was a tenth of the Python calls an inference made.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = buckets
        self._le = [floatToGoString(b) for b in (*buckets, inf)]
        # Per label set: a count for each bucket (not cumulative), then +Inf, then the sum.
        self._series: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, seconds: float) -> None:
        counts = self._series.get(labels)
        if counts is None:
            counts = self._series[labels] = [0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, seconds)] += 1  # the first bucket with le >= seconds
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        names = list(contract.REQUEST_LABELS)
        requests = CounterMetricFamily(contract.REQUESTS, "HTTP requests answered.", labels=names)
        latency = HistogramMetricFamily(
            contract.LATENCY,
            "Time from request start to the end of the response.",
            labels=names,
        )
        for labels, counts in self._series.items():
            buckets, total = _histogram(self._le, counts)
            requests.add_metric(labels, buckets[-1][1])
            latency.add_metric(labels, buckets, total)
        yield requests
        yield latency


class PredictionStats(Collector):
    """What the models answered, by model and version: `mlscale_predictions_total` counts a
    classifier's answers per label, `mlscale_prediction_value` is a histogram of a regressor's.
    The rollout's analysis compares a canary's distribution with stable's over a step.

    Only the `predict` output is counted, and only where a request computed it (the default
    output). Lock-free, like RequestStats: updated and rendered on the event loop's thread."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._bounds_list = list(buckets)
        self._le = [floatToGoString(b) for b in (*buckets, inf)]
        self._classes: dict[tuple[str, str], dict[str, int]] = {}
        # Per (model, version): a count for each bucket (not cumulative), +Inf, then the sum.
        self._values: dict[tuple[str, str], list[float]] = {}

    def observe(self, identity: tuple[str, str], classifier: bool, answers: Any) -> None:
        """Count one request's `predict` answers: a list (small requests) or an array."""
        if isinstance(answers, np.ndarray) and answers.size <= SMALL_ANSWER:
            answers = answers.ravel().tolist()
        if classifier:
            counts = self._classes.setdefault(identity, {})
            if isinstance(answers, np.ndarray):
                labels, n = np.unique(answers, return_counts=True)
                for label, k in zip(labels.tolist(), n.tolist(), strict=True):
                    counts[str(label)] = counts.get(str(label), 0) + k
            else:
                for label in answers:
                    key = str(label)
                    counts[key] = counts.get(key, 0) + 1
            return
        values = self._values.get(identity)
        if values is None:
            values = self._values[identity] = [0] * (len(self._bounds_list) + 2)
        if isinstance(answers, np.ndarray):
            flat = answers.ravel().astype(np.float64)
            flat = flat[~np.isnan(flat)]
            # side="left" puts a value equal to a bound in that bound's bucket: le means <=.
            at = np.bincount(np.searchsorted(self._bounds, flat), minlength=len(values) - 1)
            for i, k in enumerate(at.tolist()):
                values[i] += k
            values[-1] += float(flat.sum())
            return
        for value in answers:
            if isinstance(value, list):  # a multi-output regressor's row
                self.observe(identity, False, value)
            elif value == value:  # not NaN
                values[bisect_left(self._bounds_list, value)] += 1
                values[-1] += value

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            contract.PREDICTIONS, "Answers of a classifier's predict output, by label.",
            labels=["model", "version", "label"],
        )  # fmt: skip
        for (model, version), by_label in self._classes.items():
            for label, n in by_label.items():
                counts.add_metric([model, version, label], n)
        values = HistogramMetricFamily(
            contract.PREDICTION_VALUES, "Values of a regressor's predict output.",
            labels=["model", "version"],
        )  # fmt: skip
        for identity, buckets in self._values.items():
            values.add_metric(list(identity), *_histogram(self._le, buckets))
        yield counts
        yield values


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, prediction_buckets: Sequence[float] = LOG_BUCKETS) -> None:
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes, CPU seconds, open fds: what a pod's memory did under
        # bad input or a soak, read where the requests are counted.
        ProcessCollector(registry=self.registry)
        self.requests = RequestStats(LATENCY_BUCKETS)
        self.registry.register(self.requests)
        self.predictions = PredictionStats(prediction_buckets)
        self.registry.register(self.predictions)
        # A plain counter read at scrape time: no lock on the request path.
        self.in_flight = 0
        Gauge(
            contract.IN_FLIGHT,
            "Inference requests being handled now.",
            registry=self.registry,
        ).set_function(lambda: self.in_flight)
        self.batch_requests = PlainHistogram(
            "mlscale_batch_requests", "Requests merged into one predict call.", BATCH_BUCKETS
        )
        self.batch_rows = PlainHistogram(
            "mlscale_batch_rows", "Rows in one predict call.", BATCH_BUCKETS
        )
        self.batch_queue = PlainHistogram(
            "mlscale_batch_queue_seconds", "Time a request waited for its batch to start.",
            LATENCY_BUCKETS,
        )  # fmt: skip
        for histogram in (self.batch_requests, self.batch_rows, self.batch_queue):
            self.registry.register(histogram)
        self.load_seconds = Gauge(
            "mlscale_model_load_seconds", "Time to verify, load and warm up a model version.",
            ["model", "version"], registry=self.registry,
        )  # fmt: skip
        self.memory = Gauge(
            "mlscale_model_memory_bytes", "Memory a model version holds: what loading and "
            "warming it up allocated and kept (Python objects and numpy arrays).",
            ["model", "version"], registry=self.registry,
        )  # fmt: skip
        self.model_ready = Gauge(
            "mlscale_model_ready", "1 while a model of the server's set serves, 0 when it "
            "failed to load (its reason is in the log and at /v2/models/{name}/ready).",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "mlscale_model_info", "Loaded model versions (value 1); default=true on the one "
            "unversioned paths use.", ["model", "version", "sha256", "sklearn_version", "default"],
            registry=self.registry,
        )  # fmt: skip

    def request(self, labels: Labels, seconds: float) -> None:
        """Count and time one request."""
        self.requests.observe(labels, seconds)

    def batch(self, requests: int, rows: int, queue_seconds: list[float]) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)
        for seconds in queue_seconds:
            self.batch_queue.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
