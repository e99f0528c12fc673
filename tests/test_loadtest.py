"""The load-test runner against a really started server, and the cluster sampler against a
real API server (tests/control_plane.py). Locust runs in a subprocess: it patches the standard
library."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from kubernetes.client import (
    V2CrossVersionObjectReference,
    V2HorizontalPodAutoscaler,
    V2HorizontalPodAutoscalerCondition,
    V2HorizontalPodAutoscalerSpec,
    V2HorizontalPodAutoscalerStatus,
    V2MetricIdentifier,
    V2MetricSpec,
    V2MetricStatus,
    V2MetricTarget,
    V2MetricValueStatus,
    V2PodsMetricSource,
    V2PodsMetricStatus,
    V2ResourceMetricSource,
    V2ResourceMetricStatus,
)
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from examples import flowers
from mlscale.loadtest.bodies import infer_body
from mlscale.loadtest.report import DPI, FIGSIZE
from mlscale.loadtest.sampler import ClusterSampler
from mlscale.rollout import autoscaler
from mlscale.rollout.kube import Kube, Target
from mlscale.rollout.release import Release
from mlscale.service.contract import REQUEST_RATE
from mlscale.service.publish import publish
from tests.apiproxy import FaultProxy
from tests.conftest import ROOT, Envtest, run_server
from tests.control_plane import ADMIN_TOKEN
from tests.kubelet import Tenant


def test_runner_against_a_local_server_writes_a_real_report(model_dir: Path, tmp_path: Path):
    with run_server(model_dir, model_name="iris") as server:
        cmd = [sys.executable, "-m", "mlscale.loadtest", "--url", server.url, "--model", "iris",
               "--users", "8", "--steps", "2", "--step-seconds", "4", "--hold-seconds", "8",
               "--down-seconds", "2", "--sample-seconds", "1", "--out", str(tmp_path)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = tmp_path.iterdir()
    with (folder / "timeline.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 10 and max(float(r["rps"]) for r in rows) > 0
    assert max(int(r["users"]) for r in rows) == 8
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0
    assert summary["cluster"] is False and list(summary["answers_by_version"]) == ["2"]
    with Image.open(folder / "report.png") as png:
        assert png.format == "PNG"
        assert png.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
        shades = png.convert("L").getcolors(maxcolors=256) or []
        assert len(shades) > 10  # a drawn plot, not a blank canvas
    assert "![timeline](report.png)" in (folder / "report.md").read_text()


def test_users_send_a_valid_body_to_a_column_model_and_a_text_model(tmp_path: Path):
    """Bodies built from the metadata: the flowers pipeline's typed columns, a text model's
    documents. Users used to read a [N, features] shape from any model and raised for these
    (the run then reported 0 requests and 0 failures)."""
    pipe, x_train, _, _ = flowers.train()
    text = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(["good", "bad"], [1, 0])
    store = tmp_path / "models"
    publish(pipe, "flowers", model_dir=store, sample=x_train.head(), runtime="sklearn")
    publish(text, "reviews", model_dir=store)
    with run_server(store, model_name="flowers", models="reviews") as server:
        for model in ("flowers", "reviews"):
            meta = httpx.get(f"{server.url}/v2/models/{model}").json()
            body = infer_body(meta, 3)
            answer = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["shape"] == [3]
        cmd = [sys.executable, "-m", "mlscale.loadtest", "--url", server.url, "--model", "flowers",
               "--users", "4", "--steps", "1", "--step-seconds", "2", "--hold-seconds", "3",
               "--down-seconds", "1", "--sample-seconds", "1",
               "--out", str(tmp_path / "reports")]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = (tmp_path / "reports").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0 and not summary["errors"]


LABELS = {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "model-server",
          "mlscale.dev/track": "stable"}  # fmt: skip


def pod(name: str, node: str, version: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {**LABELS, "mlscale.dev/model-version": version}},
        "spec": {"nodeName": node, "containers": [{"name": "server", "image": "mlscale"}]},
    }  # fmt: skip


def test_cluster_sampler_reads_replicas_and_pods_per_node(control_plane: Envtest):
    """On the real API server and HPA controller: pods placed on nodes by hand, one never
    ready, and a paused Deployment of 4 replicas that the HPA watches."""
    plane = control_plane.plane
    ns = plane.namespace("sampler")
    control_plane.kubelet.tenants[ns] = Tenant(
        lambda p: "never" if p["metadata"]["name"] == "d" else "ready", lambda p, path: None
    )
    plane.admin.create({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "demo-mlscale", "labels": LABELS},
        "spec": {"replicas": 4, "paused": True, "selector": {"matchLabels": LABELS},
                 "template": {"metadata": {"labels": LABELS}, "spec": {
                     "containers": [{"name": "server", "image": "mlscale"}]}}}}, ns)  # fmt: skip
    plane.admin.create({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "demo-mlscale"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "demo-mlscale"}, "minReplicas": 1, "maxReplicas": 6,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                     "type": "Utilization", "averageUtilization": 70}}}]}}, ns)  # fmt: skip
    for name, node, version in [("a", "worker-1", "1"), ("b", "worker-2", "1"),
                                ("c", "worker-2", "2"), ("d", "worker-3", "2")]:  # fmt: skip
        plane.admin.create(pod(name, node, version), ns)
    faults = FaultProxy(plane.url, ADMIN_TOKEN, str(plane.ca))
    try:
        with faults.serve() as url:
            sampler = ClusterSampler(Release(Kube(Target(namespace=ns, host=url)), "demo"))
            deadline = time.monotonic() + 20
            while (sample := sampler.sample()).hpa_current != 4 or sample.ready_pods != 3:
                assert time.monotonic() < deadline, sample
                time.sleep(0.1)
    finally:
        control_plane.kubelet.tenants.pop(ns)
    assert sample.cpu_percent is None  # no metrics API here: the HPA has no reading
    assert sample.pods_per_node == {"worker-1": 1, "worker-2": 2}
    assert sample.versions == {"1": 2, "2": 1}


def test_the_hpas_readings_are_its_metrics_now_against_their_targets():
    cpu = V2MetricSpec(
        type="Resource",
        resource=V2ResourceMetricSource(
            name="cpu", target=V2MetricTarget(type="Utilization", average_utilization=50)
        ),
    )
    in_flight = V2MetricSpec(type="Pods", pods=V2PodsMetricSource(
        metric=V2MetricIdentifier(name=REQUEST_RATE),
        target=V2MetricTarget(type="AverageValue", average_value="4")))  # fmt: skip

    def hpa(
        *metrics: V2MetricStatus, conditions: tuple[V2HorizontalPodAutoscalerCondition, ...] = ()
    ) -> V2HorizontalPodAutoscaler:
        status = V2HorizontalPodAutoscalerStatus(desired_replicas=5, current_metrics=list(metrics),
                                                 conditions=list(conditions))  # fmt: skip
        target = V2CrossVersionObjectReference(kind="Deployment", name="demo-mlscale")
        spec = V2HorizontalPodAutoscalerSpec(max_replicas=6, scale_target_ref=target,
                                             metrics=[cpu, in_flight])  # fmt: skip
        return V2HorizontalPodAutoscaler(spec=spec, status=status)

    cpu_now = V2MetricStatus(
        type="Resource",
        resource=V2ResourceMetricStatus(
            name="cpu", current=V2MetricValueStatus(average_utilization=83)
        ),
    )
    in_flight_now = V2MetricStatus(type="Pods", pods=V2PodsMetricStatus(
        metric=V2MetricIdentifier(name=REQUEST_RATE),
        current=V2MetricValueStatus(average_value="12500m")))  # fmt: skip

    both = hpa(cpu_now, in_flight_now)
    assert autoscaler.readings(both) == [
        autoscaler.Reading("cpu", 83, 50, "%"),
        autoscaler.Reading(REQUEST_RATE, 12.5, 4, ""),
    ]
    assert autoscaler.reading(both, "cpu") == 83 and autoscaler.problem(both) is None
    # A metric nobody serves: the HPA scales on the others, and says so.
    cpu_only = hpa(cpu_now)
    assert autoscaler.reading(cpu_only, REQUEST_RATE) is None
    assert f"no value for {REQUEST_RATE}" in autoscaler.problem(cpu_only)
    # One missing and the others suggesting fewer pods: Kubernetes keeps its replicas.
    blind = hpa(cpu_now, conditions=(V2HorizontalPodAutoscalerCondition(
        type="ScalingActive", status="False", reason="FailedGetPodsMetric",
        message=f"unable to get metric {REQUEST_RATE}"),))  # fmt: skip
    assert autoscaler.problem(blind).startswith(
        f"the HPA has no value for {REQUEST_RATE} (FailedGetPodsMetric): it keeps its replicas"
    )
    # None left: it holds its replicas, and its condition says why.
    stuck = hpa(conditions=(V2HorizontalPodAutoscalerCondition(
        type="ScalingActive", status="False", reason="FailedGetPodsMetric",
        message="unable to get metric mlscale_nope"),))  # fmt: skip
    assert autoscaler.problem(stuck) == (
        "the HPA cannot scale (FailedGetPodsMetric): unable to get metric mlscale_nope"
    )
    # Before its first reading, nothing to say.
    assert autoscaler.problem(V2HorizontalPodAutoscaler(spec=both.spec)) is None


def test_a_canarys_share_of_answers_is_counted_only_where_its_weight_held():
    from mlscale.loadtest.report import Row, canary_shares

    def row(t: float, weight: int | None, canary: int, stable: int) -> Row:
        return Row(t=t, users=10, rps=0, failures_per_s=0, p50_ms=0, p95_ms=0, p99_ms=0,
                   answers={"2": canary, "1": stable}, canary_weight=weight)  # fmt: skip

    rows = [row(0, None, 0, 100), row(2, 5, 50, 50),  # the first row at 5%: partly before
            row(4, 5, 5, 95), row(6, 5, 6, 94), row(8, 50, 0, 100), row(10, 50, 49, 51),
            row(12, None, 100, 0)]  # fmt: skip
    assert canary_shares(rows, "2") == {
        5: {"share_pct": 5.5, "answers": 200},
        50: {"share_pct": 49.0, "answers": 100},
    }
