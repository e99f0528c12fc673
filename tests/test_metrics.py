"""The lock-free request metrics expose what prometheus_client's own types would."""

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mlscale.service.metrics import LATENCY_BUCKETS, Metrics


def samples(exposition: bytes, prefix: str) -> set[str]:
    return {
        line
        for line in exposition.decode().splitlines()
        if line.startswith(prefix) and "_created" not in line
    }


def test_request_stats_match_prometheus_client_counter_and_histogram():
    rng = random.Random(5)
    labelsets = [("/v2/models/{name}/infer", "iris", "2", code) for code in ("200", "400")]
    values = [*LATENCY_BUCKETS, 0.0, 1e-7, 99.0] + [rng.expovariate(200) for _ in range(500)]

    ours = Metrics()
    registry = CollectorRegistry()
    names = ["endpoint", "model", "version", "code"]
    counter = Counter("mlscale_requests", "HTTP requests answered.", names, registry=registry)
    histogram = Histogram(
        "mlscale_request_duration_seconds", "Time from request start to the end of the response.",
        names, buckets=LATENCY_BUCKETS, registry=registry,
    )  # fmt: skip
    for value in values:  # bucket bounds themselves included: le means <=
        labels = rng.choice(labelsets)
        ours.request(labels, value)
        counter.labels(*labels).inc()
        histogram.labels(*labels).observe(value)

    for prefix in ("mlscale_requests_total", "mlscale_request_duration_seconds_"):
        expected = samples(generate_latest(registry), prefix)
        assert expected and samples(ours.render(), prefix) == expected
