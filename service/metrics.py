"""Prometheus metrics, in a registry per app (tests start many). `fastpath.py` counts and
times every request by endpoint, model, version and status code."""

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service.batching import BatchObserver

MODEL_HEADER = b"x-model-name"
VERSION_HEADER = b"x-model-version"

# Sub-millisecond buckets too: a linear model answers in well under a millisecond.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics(BatchObserver):
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["endpoint", "model", "version", "code"]
        self.requests = Counter(
            "mlscale_requests", "HTTP requests answered.", labels, registry=self.registry
        )
        self.latency = Histogram(
            "mlscale_request_duration_seconds",
            "Time from request start to the end of the response.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # A plain counter read at scrape time: no lock on the request path.
        self.in_flight = 0
        Gauge(
            "mlscale_requests_in_flight", "Requests being handled now.", registry=self.registry
        ).set_function(lambda: self.in_flight)
        self._series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self.batch_requests = Histogram(
            "mlscale_batch_requests", "Requests merged into one predict call.",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "mlscale_batch_rows", "Rows in one predict call.",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_queue = Histogram(
            "mlscale_batch_queue_seconds", "Time a request waited for its batch to start.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.load_seconds = Gauge(
            "mlscale_model_load_seconds", "Time to verify, load and warm up a model version.",
            ["model", "version"], registry=self.registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "mlscale_model_info", "Loaded model versions (value 1); default=true on the one "
            "unversioned paths use.", ["model", "version", "sha256", "sklearn_version", "default"],
            registry=self.registry,
        )  # fmt: skip

    def request(self, labels: tuple[str, str, str, str], seconds: float) -> None:
        """Count and time one request (labels: endpoint, model, version, code)."""
        series = self._series.get(labels)
        if series is None:  # resolving labelled children is the costly part: do it once
            series = self._series[labels] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        series[0].inc()
        series[1].observe(seconds)

    def batch(self, requests: int, rows: int, queue_seconds: list[float]) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)
        for seconds in queue_seconds:
            self.batch_queue.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
