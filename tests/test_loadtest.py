"""The load-test runner against a really started server, and the cluster sampler against the
Kubernetes API emulator. Locust runs in a subprocess: it patches the standard library."""

import csv
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from mlscale.loadtest.report import DPI, FIGSIZE
from mlscale.loadtest.sampler import ClusterSampler
from mlscale.rollout.kube import Kube, Target
from mlscale.rollout.release import Release
from tests.conftest import ROOT, run_server
from tests.kube_emulator import Emulator


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


def pod(name: str, node: str, version: str, ready: bool = True) -> dict:
    return {
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "model-server",
            "mlscale.dev/track": "stable", "mlscale.dev/model-version": version}},
        "spec": {"nodeName": node, "containers": [{"name": "server", "image": "mlscale"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "server", "ready": ready, "restartCount": 0, "image": "mlscale",
            "imageID": "x"}]},
    }  # fmt: skip


def test_cluster_sampler_reads_replicas_and_pods_per_node():
    api = Emulator()
    labels = {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "model-server",
              "mlscale.dev/track": "stable"}  # fmt: skip
    api.put("deployments", "ml", {
        "metadata": {"name": "demo-mlscale", "labels": labels},
        "spec": {"replicas": 4, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "server", "image": "mlscale"}]}}}})  # fmt: skip
    api.put("horizontalpodautoscalers", "ml", {
        "metadata": {"name": "demo-mlscale"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "demo-mlscale"}, "maxReplicas": 6},
        "status": {"currentReplicas": 4, "desiredReplicas": 5, "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {
                "averageUtilization": 83}}}]}})  # fmt: skip
    for name, node, version, ready in [
        ("a", "worker-1", "1", True),
        ("b", "worker-2", "1", True),
        ("c", "worker-2", "2", True),
        ("d", "worker-3", "2", False),
    ]:
        api.put("pods", "ml", pod(name, node, version, ready))
    with api.serve() as url:
        sample = ClusterSampler(Release(Kube(Target(namespace="ml", host=url)), "demo")).sample()
    assert (sample.hpa_current, sample.hpa_desired, sample.cpu_percent) == (4, 5, 83)
    assert sample.ready_pods == 3
    assert sample.pods_per_node == {"worker-1": 1, "worker-2": 2}
    assert sample.versions == {"1": 2, "2": 1}
