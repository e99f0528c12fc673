"""The canary analysis read from Prometheus: the pinned Prometheus the kind cluster runs (built
by `k8s/nodeimage/build.sh control-plane`), here scraping real model servers on this machine
every second, with the `namespace` and `pod` labels Kubernetes service discovery gives them
(k8s/prometheus.yaml). The kind suite judges real canaries from it in the cluster."""

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from mlscale.rollout.prometheus import Prometheus, PrometheusError
from tests.conftest import Server, free_port, run_server
from tests.control_plane import prometheus_binary
from tests.helpers import v2, wait_for

ROW = [5.1, 3.5, 1.4, 0.2]
NAMESPACE = "shop"


@contextmanager
def prometheus(tmp_path: Path, pods: dict[str, Server]) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("no Prometheus built: k8s/nodeimage/build.sh control-plane (needs Go)")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [{"job_name": "pods", "static_configs": [
            {"targets": [server.url.removeprefix("http://")],
             "labels": {"namespace": NAMESPACE, "pod": pod}}
            for pod, server in pods.items()
        ]}],
    }))  # fmt: skip
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [str(binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url), 30, "Prometheus to be ready")
        yield Prometheus(url)
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def scraped_after(source: Prometheus, pods: set[str], moment: float) -> bool:
    """Every pod scraped since `moment` (its `up` series has a sample after it)."""
    now = time.time()
    found = source.query(f'timestamp(up{{namespace="{NAMESPACE}"}})', now)
    return {s["metric"]["pod"] for s in found if float(s["value"][1]) > moment} >= pods


def send(server: Server, ok: int, bad: int = 0) -> None:
    with server.client() as c:
        for _ in range(ok):
            assert c.post("/v2/models/iris/infer", json=v2(ROW)).status_code == 200
        for _ in range(bad):  # the client's fault: counted, not an error of the server's
            assert c.post("/v2/models/iris/infer", json=v2(ROW[:3])).status_code == 400


def test_a_window_counts_what_each_track_served_and_names_pods_whose_scrapes_failed(
    model_dir: Path, tmp_path: Path
):
    with ExitStack() as stack:
        a, b, c = (stack.enter_context(run_server(model_dir, model_name="iris")) for _ in "abc")
        source = stack.enter_context(prometheus(tmp_path, {"a": a, "b": b, "c": c}))
        send(a, 1)  # the series exist before the window, as a serving pod's do; c's do not:
        send(b, 1)  # it is a new canary, whose counters first appear in the window
        mark = time.time()
        wait_for(lambda: scraped_after(source, {"a", "b", "c"}, mark), 30, "a scrape of each")
        start = time.time()
        send(a, 60, bad=10)
        send(b, 20)
        send(c, 15)
        mark = time.time()
        wait_for(lambda: time.time() - start > 5 and scraped_after(source, {"a", "b", "c"}, mark),
                 30, "a scrape after the load, 5 s into the window")  # fmt: skip
        end = time.time()
        # Exact, from each pod's counters at the window's edges: a new pod's first sample
        # counts in full (increase() would have counted none of c's 15).
        every = source.window(NAMESPACE, {"a", "b"}, {"a", "b", "c"}, start, end)
        assert every.traffic.requests == 105 and every.traffic.errors == 0, every.traffic
        assert sum(every.traffic.labels.values()) == 95 and every.problem() == ""
        assert 0 < every.traffic.quantile(0.99) < 1  # seconds, from the latency buckets
        assert source.window(NAMESPACE, {"b"}, {"b"}, start, end).traffic.requests == 20
        assert source.window(NAMESPACE, set(), {"c"}, start, end).traffic.requests == 15
        both = {"a", "b"}
        # A pod that stops answering: its counts are missing from the sums, and the window says
        # which pod, so the step is not judged on part of its traffic.
        b.process.kill()
        b.process.wait(timeout=10)

        def failed() -> bool:
            return source.window(NAMESPACE, both, both, start, time.time()).failed == {"b"}

        wait_for(failed, 30, "the failed scrape of b to show")
        late = source.window(NAMESPACE, both, both, start, time.time())
        assert late.problem() == "scrapes failed: b"
        # A pod Ready since the start that Prometheus never scraped is named too.
        never = source.window(NAMESPACE, {"a", "d"}, {"a", "d"}, start, time.time())
        assert never.missing == {"d"} and "not scraped yet: d" in never.problem()


def test_prometheus_not_answering_is_an_error_that_says_where(tmp_path: Path):
    nobody = Prometheus(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PrometheusError, match="did not answer"):
        nobody.window(NAMESPACE, {"a"}, {"a"}, time.time() - 10, time.time())
