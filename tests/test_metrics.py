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


def test_batch_histograms_match_prometheus_client_histograms():
    """The batcher's three histograms, lock-free too: what prometheus_client's would expose."""
    from mlscale.service.metrics import BATCH_BUCKETS

    rng = random.Random(3)
    ours = Metrics()
    registry = CollectorRegistry()
    doc = {"requests": "Requests merged into one predict call.",
           "rows": "Rows in one predict call.",
           "queue_seconds": "Time a request waited for its batch to start."}  # fmt: skip
    theirs = {name: Histogram(f"mlscale_batch_{name}", text, registry=registry,
                              buckets=LATENCY_BUCKETS if name == "queue_seconds" else BATCH_BUCKETS)
              for name, text in doc.items()}  # fmt: skip
    batches = [(1, 1, [0.0]), (64, 64, [*LATENCY_BUCKETS[:5], 0.003])]  # bounds: le means <=
    batches += [(n, n + rng.randrange(4), [rng.expovariate(500) for _ in range(n)])
                for n in (rng.randrange(1, 2000) for _ in range(50))]  # fmt: skip
    for requests, rows, waits in batches:
        ours.batch(requests, rows, waits)
        theirs["requests"].observe(requests)
        theirs["rows"].observe(rows)
        for wait in waits:
            theirs["queue_seconds"].observe(wait)

    for name in doc:
        expected = samples(generate_latest(registry), f"mlscale_batch_{name}")
        assert expected and samples(ours.render(), f"mlscale_batch_{name}") == expected


def test_prediction_values_match_prometheus_client_histogram():
    """A regressor's answers, from small requests (lists, small arrays) and big batches alike,
    make the histogram prometheus_client would; NaN (a missing value's answer) is left out."""
    import numpy as np

    bounds = (-1.0, 0.0, 0.5, 2.0, 10.0)
    rng = random.Random(7)
    values = [*bounds, -5.0, 99.0] + [rng.uniform(-3, 12) for _ in range(300)]
    ours = Metrics(prediction_buckets=bounds)
    registry = CollectorRegistry()
    histogram = Histogram("mlscale_prediction_value", "Values of a regressor's predict output.",
                          ["model", "version"], buckets=bounds, registry=registry)  # fmt: skip
    for i in range(0, len(values), 10):
        chunk = values[i : i + 10]
        ours.predictions.observe(("linear", "1"), False, chunk if i % 20 else np.array(chunk))
        for v in chunk:
            histogram.labels("linear", "1").observe(v)
    ours.predictions.observe(("linear", "1"), False, np.array(values))  # a big batch: numpy
    for v in values:
        histogram.labels("linear", "1").observe(v)
    ours.predictions.observe(("linear", "1"), False, np.array([float("nan")]))
    ours.predictions.observe(("linear", "1"), False, [float("nan")])
    # Buckets only: with negative bounds, OpenMetrics has no _sum (nor, in prometheus_client's
    # HistogramMetricFamily, _count); the analysis reads the buckets.
    expected = samples(generate_latest(registry), "mlscale_prediction_value_bucket")
    assert expected and samples(ours.render(), "mlscale_prediction_value_bucket") == expected


def test_prediction_labels_are_counted_per_version():
    import numpy as np

    ours = Metrics()
    ours.predictions.observe(("iris", "1"), True, [0, 2, 2])
    ours.predictions.observe(("iris", "1"), True, np.array([2, 1]))
    ours.predictions.observe(("iris", "1"), True, np.array([1] * 20))  # counted by numpy
    ours.predictions.observe(("flowers", "2"), True, np.array(["setosa", "setosa"], dtype=object))
    text = ours.render().decode()
    for line in (
        'mlscale_predictions_total{label="0",model="iris",version="1"} 1.0',
        'mlscale_predictions_total{label="1",model="iris",version="1"} 21.0',
        'mlscale_predictions_total{label="2",model="iris",version="1"} 3.0',
        'mlscale_predictions_total{label="setosa",model="flowers",version="2"} 2.0',
    ):
        assert line in text, text
