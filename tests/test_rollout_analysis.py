"""Canary analysis math, with hand-computed expectations."""

import math

import pytest

from mlscale.rollout.analysis import Snapshot, judge, output_drift
from mlscale.rollout.canary import Scrape, traffic
from mlscale.service.contract import failed

INFER = 'endpoint="/v2/models/{name}/infer",model="iris",version="2"'
HEALTH = 'endpoint="/v2/health/ready",model="",version=""'


def scrape(ok: float, errors: float, buckets: dict[str, float], health: float = 0) -> str:
    """Prometheus text as the server exposes it (cumulative buckets)."""
    lines = [
        f'mlscale_requests_total{{code="200",{INFER}}} {ok}',
        f'mlscale_requests_total{{code="500",{INFER}}} {errors}',
        f'mlscale_requests_total{{code="400",{INFER}}} 7',  # client errors: not the server's
        f'mlscale_requests_total{{code="200",{HEALTH}}} {health}',
    ]
    for le, count in buckets.items():
        lines.append(
            f'mlscale_request_duration_seconds_bucket{{code="200",{INFER},le="{le}"}} {count}'
        )
    return "# TYPE mlscale_requests_total counter\n" + "\n".join(lines) + "\n"


def snap(text: str) -> Snapshot:
    s = Snapshot()
    s.add_scrape(text)
    return s


def test_rates_come_from_counter_deltas_of_inference_only():
    before = snap(scrape(100, 0, {"0.01": 100, "+Inf": 100}, health=50))
    after = snap(scrape(280, 20, {"0.01": 300, "+Inf": 300}, health=500))
    delta = after - before
    assert delta.requests == 200  # (280 + 20 + 7) - (100 + 0 + 7); health probes excluded
    assert delta.errors == 20
    assert delta.error_rate == pytest.approx(0.1)


def test_inputs_the_model_refused_count_against_the_version():
    """A 422 (errors.ModelRefused) is a request the version could not answer, unlike a 400."""
    text = scrape(90, 0, {"+Inf": 90}) + f'mlscale_requests_total{{code="422",{INFER}}} 10\n'
    assert snap(text).errors == 10 and snap(text).requests == 107
    assert failed("422") and failed("503") and not failed("400") and not failed("200")


def test_p99_interpolates_inside_the_bucket():
    # 100 observations: 90 under 10 ms, 8 in (10, 50], 2 in (50, 100] ms.
    s = snap(scrape(100, 0, {"0.01": 90, "0.05": 98, "0.1": 100, "+Inf": 100}))
    # rank 99 falls in (0.05, 0.1]: 1 of that bucket's 2 -> halfway: 75 ms
    assert s.quantile(0.99) == pytest.approx(0.075)
    # rank 50 in the first bucket, from 0: 50/90 of 10 ms
    assert s.quantile(0.5) == pytest.approx(0.01 * 50 / 90)


def test_p99_beyond_the_last_bucket_is_that_bound():
    s = snap(scrape(10, 0, {"0.01": 5, "0.1": 5, "+Inf": 10}))
    assert s.quantile(0.99) == pytest.approx(0.1)


def test_no_traffic_has_no_quantile():
    assert math.isnan(Snapshot().quantile(0.99))


def test_a_restarted_pod_counts_from_zero():
    before = snap(scrape(1000, 10, {"+Inf": 1010}))
    after = snap(scrape(40, 0, {"+Inf": 40}))  # counters reset by a restart
    delta = after - before
    assert delta.requests == 47 and delta.errors == 0


def test_judge_passes_and_fails_with_reasons():
    good = snap(scrape(1000, 1, {"0.01": 1001, "+Inf": 1001}))
    stable = snap(scrape(1000, 0, {"0.01": 1000, "+Inf": 1000}))
    verdict = judge(
        good, stable, max_error_rate=0.01, max_p99_ms=50, max_p99_ratio=1.5, min_requests=20
    )
    assert verdict.passed and verdict.reasons == []
    bad = snap(scrape(800, 200, {"0.01": 10, "0.5": 1000, "+Inf": 1000}))
    verdict = judge(
        bad, stable, max_error_rate=0.01, max_p99_ms=50, max_p99_ratio=1.5, min_requests=2000
    )
    assert not verdict.passed
    text = " ".join(verdict.reasons)
    assert "fewer than 2000" in text
    assert "error rate 19.86%" in text  # 200 / (800 + 200 + 7)
    assert "p99 495.1 ms > 50.0 ms" in text  # rank 990: 980/990 of the way through (10, 500] ms
    assert "x stable p99" not in text  # stable saw too few requests to compare against
    verdict = judge(
        bad, stable, max_error_rate=1, max_p99_ms=1000, max_p99_ratio=1.5, min_requests=20
    )
    # stable: rank 990 of 1000, 990/1000 of the way through (0, 10] ms -> 9.9 ms
    assert verdict.reasons == ["canary p99 495.1 ms > 1.5 x stable p99 9.9 ms"]


def test_traffic_counts_new_pods_from_zero_and_leaves_out_pods_unread_at_the_start():
    served = snap(scrape(90, 0, {"+Inf": 90}))
    before = Scrape(pods={"old": snap(scrape(50, 0, {"+Inf": 50}))}, unread={"unread"})
    after = Scrape(pods={"old": served, "new": served, "unread": served})
    # old: 97 - 57 = 40; new: 97 from zero (its 7 client errors count); unread: unknown start
    assert traffic(before, after).requests == 40 + 97
    before.start_late(after)  # read at last: the unread pod counts from this read on
    later = Scrape(pods={pod: snap(scrape(190, 0, {"+Inf": 190})) for pod in after.pods})
    # the whole window for old (197 - 57) and new (from zero); unread since its first read
    assert traffic(before, later).requests == 140 + 197 + (197 - 97)


def answers(labels: dict[str, float] | None = None, values: dict[str, float] | None = None) -> str:
    """What the server exposes of its answers: class counts, or a histogram (cumulative)."""
    lines = [f'mlscale_predictions_total{{label="{k}",model="iris",version="2"}} {n}'
             for k, n in (labels or {}).items()]  # fmt: skip
    lines += [f'mlscale_prediction_value_bucket{{le="{le}",model="linear",version="2"}} {n}'
              for le, n in (values or {}).items()]  # fmt: skip
    return "\n".join(lines) + "\n"


LIMITS = {"max_error_rate": 0.01, "max_p99_ms": 50, "max_p99_ratio": 1.5, "min_requests": 20}


def test_output_drift_is_the_total_variation_distance_of_the_answers():
    # Classes: shares (.5, .3, .2) against (.6, .3, .1): (.1 + 0 + .1) / 2.
    canary = snap(answers({"setosa": 250, "versicolor": 150, "virginica": 100}))
    stable = snap(answers({"setosa": 600, "versicolor": 300, "virginica": 100}))
    assert output_drift(canary, stable) == pytest.approx(0.1)
    assert output_drift(canary, canary) == 0
    assert output_drift(snap(answers({"a": 5})), snap(answers({"b": 5}))) == 1  # nothing shared
    # A regressor's histogram: bins (<=0, <=1, <=+Inf) of 100/300/600 against 300/300/400.
    canary = snap(answers(values={"0.0": 100, "1.0": 400, "+Inf": 1000}))
    stable = snap(answers(values={"0.0": 300, "1.0": 600, "+Inf": 1000}))
    assert canary.answers() == {"<=0": 100, "<=1": 300, "<=inf": 600}
    assert output_drift(canary, stable) == pytest.approx((0.2 + 0 + 0.2) / 2)
    # Windows subtract like counters do.
    later = snap(answers({"setosa": 260, "versicolor": 150, "virginica": 140}))
    window = later - snap(answers({"setosa": 250, "versicolor": 150, "virginica": 100}))
    assert window.answers() == {"setosa": 10, "versicolor": 0, "virginica": 40}


def test_a_canary_whose_answers_drift_fails_and_too_few_are_not_compared():
    stable = snap(scrape(1000, 0, {"0.01": 1000, "+Inf": 1000}) + answers({"0": 500, "1": 500}))
    traffic_ok = scrape(300, 0, {"0.01": 300, "+Inf": 300})
    same = snap(traffic_ok + answers({"0": 151, "1": 149}))
    assert judge(same, stable, max_output_drift=0.2, **LIMITS).passed
    assert judge(same, stable, max_output_drift=0.2, **LIMITS).drift == pytest.approx(0.00333, 1e-2)
    other = snap(traffic_ok + answers({"0": 290, "1": 10}))
    verdict = judge(other, stable, max_output_drift=0.2, **LIMITS)
    assert not verdict.passed and not verdict.inconclusive
    assert verdict.reasons == ["canary answers drift 0.467 from stable's (total variation) > 0.2"]
    few = snap(traffic_ok + answers({"0": 190, "1": 9}))  # 199 answers: not compared
    assert judge(few, stable, max_output_drift=0.2, **LIMITS).passed
    # A shadow step exists to compare answers: too few of them is a want of data.
    verdict = judge(few, stable, max_output_drift=0.2, drift_required=True, **LIMITS)
    assert verdict.inconclusive and verdict.reasons == ["199 answers to compare, fewer than 200"]


def test_a_p99_over_the_ratio_fails_only_beyond_the_slack():
    # stable: 9.9 ms (rank 990 of 1000 in (0, 10] ms);
    # canary: rank 990, 980/990 of the way through (10, 20] ms -> 19.9 ms
    stable = snap(scrape(1000, 0, {"0.01": 1000, "+Inf": 1000}))
    canary = snap(scrape(1000, 0, {"0.01": 10, "0.02": 1000, "+Inf": 1000}))
    limits = {**LIMITS, "max_p99_ms": 250}
    assert judge(canary, stable, **limits, p99_slack_ms=15).passed  # 10 ms above: within
    verdict = judge(canary, stable, **limits, p99_slack_ms=5)
    assert verdict.reasons == [
        "canary p99 19.9 ms > 1.5 x stable p99 9.9 ms (and more than 5 ms above it)"
    ]
