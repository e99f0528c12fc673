"""A canary step's traffic read from Prometheus, where the release has one: per track, how
far the servers' own counters rose over the step's window, pod by pod.

Not `increase()`: over a window a few scrapes long it extrapolates what it saw to the window's
edges, and it cannot count a new pod's first sample (a canary's first seconds of traffic).
Each pod's last sample at or before the window's start, against its last sample in the window,
is exact to the scrape: a pod first seen in the window counts from zero, one restarted in it
from the restart.

The pods' /metrics through the API server's pod proxy (canary.py's `scrape`) stays the way for
releases without Prometheus. Prometheus answers for pods scaled away during the window too, and
a pod whose scrapes failed in the window is named, so the step waits instead of being judged
on part of its traffic."""

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlscale.rollout.analysis import Snapshot
from mlscale.service.contract import (
    INFER_ENDPOINTS,
    LATENCY,
    PREDICTION_VALUES,
    PREDICTIONS,
    REQUESTS,
    failed,
)

TIMEOUT_S = 10.0


class PrometheusError(Exception):
    """Prometheus did not answer, or not with a result: the step cannot be judged yet."""


@dataclass
class Window:
    """What one track served over a window, and the pods whose counts it lacks: missing (Ready
    all through the window, never scraped) and failed (a scrape in the window failed)."""

    traffic: Snapshot = field(default_factory=Snapshot)
    missing: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    def problem(self) -> str:
        """Why this window cannot be judged, or "" when it can."""
        parts = []
        if self.missing:
            parts.append(f"not scraped yet: {', '.join(sorted(self.missing))}")
        if self.failed:
            parts.append(f"scrapes failed: {', '.join(sorted(self.failed))}")
        return "; ".join(parts)


def _one_of(values: Iterable[str]) -> str:
    """A PromQL regex matching exactly these values: escaped for RE2, then for the string."""
    return "|".join(re.escape(v) for v in sorted(values)).replace("\\", "\\\\")


def _matcher(namespace: str, pods: set[str]) -> str:
    return f'namespace="{namespace}",pod=~"{_one_of(pods)}"'


def _why(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(error).get("error") or error)
    except ValueError:
        return str(error)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query(self, promql: str, at: float) -> list[dict]:
        """An instant query at `at` (seconds since the epoch): its vector."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(
                f"{self.url}/api/v1/query?{params}", timeout=TIMEOUT_S
            ) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # it answered: with why, in its error shape
            raise PrometheusError(f"Prometheus at {self.url}: {_why(exc)}") from exc
        except (OSError, ValueError) as exc:  # refused, timed out, not JSON
            raise PrometheusError(f"Prometheus at {self.url} did not answer: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.url}: {body.get('error', body)}")
        return body["data"]["result"]

    def _by_pod(self, label: str, selected: str, at: float) -> dict[tuple[str, str], float]:
        promql = f"sum by (pod, {label}) ({selected})"
        return {
            (s["metric"].get("pod", ""), s["metric"].get(label, "")): float(s["value"][1])
            for s in self.query(promql, at)
        }

    def _rose(self, label: str, series: str, selector: str, start: float, end: float,
              extra: str = "") -> dict[str, float]:  # fmt: skip
        """How far a counter rose from `start` to `end`, by `label`, summed over the pods."""
        selected = f"{series}{{{selector}{extra}}}"
        seconds = max(1, round(end - start))
        then = self._by_pod(label, selected, start)
        now = self._by_pod(label, f"last_over_time({selected}[{seconds}s])", end)
        out: defaultdict[str, float] = defaultdict(float)
        for key, value in now.items():
            was = then.get(key, 0.0)
            out[key[1]] += value - was if value >= was else value  # lower: it restarted
        return out

    def window(
        self, namespace: str, at_start: set[str], at_end: set[str], start: float, end: float,
        model: str = "",
    ) -> Window:  # fmt: skip
        """What the pods Ready at the window's start or its end served from `start` to `end`
        (seconds since the epoch), for `model` (""; every model they serve), and which of them
        Prometheus lacks counts of. A pod that became Ready during the window may not have been
        scraped yet: it served little."""
        out = Window()
        pods = at_start | at_end
        if not pods:
            return out
        seconds = max(1, round(end - start))
        selector = _matcher(namespace, pods)
        of_model = f',model="{model}"' if model else ""
        infer = f',endpoint=~"{_one_of(INFER_ENDPOINTS)}"{of_model}'
        codes = self._rose("code", REQUESTS + "_total", selector, start, end, infer)
        for code, count in codes.items():
            out.traffic.requests += count
            if failed(code):
                out.traffic.errors += count
        buckets = self._rose("le", LATENCY + "_bucket", selector, start, end, infer)
        out.traffic.buckets = defaultdict(float, {float(le): n for le, n in buckets.items()})
        out.traffic.labels.update(
            self._rose("label", PREDICTIONS + "_total", selector, start, end, of_model)
        )
        values = self._rose("le", PREDICTION_VALUES + "_bucket", selector, start, end, of_model)
        out.traffic.values = defaultdict(float, {float(le): n for le, n in values.items()})
        up = self.query(f"min by (pod) (min_over_time(up{{{selector}}}[{seconds}s]))", end)
        scraped = {s["metric"].get("pod", ""): float(s["value"][1]) for s in up}
        out.missing = (at_start & at_end) - scraped.keys()
        out.failed = {pod for pod, ok in scraped.items() if ok < 1}
        return out
