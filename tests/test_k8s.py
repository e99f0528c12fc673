"""k8s/: the kind cluster, namespace and RBAC manifests, and the kind end-to-end path."""

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT
from tests.test_chart import K8S_VERSION, by_kind, pod_specs, render

K8S = ROOT / "k8s"


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


@pytest.mark.parametrize("name", ["namespace.yaml", "rollout-rbac.yaml"])
def test_manifests_validate_strictly(name: str):
    for doc in manifests(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kind_cluster_has_three_workers():
    (cluster,) = manifests("kind-cluster.yaml")
    roles = [node["role"] for node in cluster["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 3


def test_namespace_enforces_restricted_pod_security():
    (namespace,) = manifests("namespace.yaml")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_rollout_rbac_is_least_privilege():
    docs = manifests("rollout-rbac.yaml")
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}
    assert all(d["metadata"]["namespace"] == "mlscale" for d in docs)
    (role,) = by_kind(docs, "Role")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["kind"] == "Role"  # never a ClusterRole


def test_kind_values_render_valid_restricted_objects(helm: str, tmp_path: Path):
    values = yaml.safe_load((K8S / "values-kind.yaml").read_text())
    docs = render(helm, tmp_path, values)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["minReplicas"] == 1 and hpa["maxReplicas"] >= 3
    assert all(spec["securityContext"]["runAsNonRoot"] for spec in pod_specs(docs))


# --- kind end to end: runs where kind, Docker and cluster images are available -------------


def run(*cmd: str, timeout: float = 600) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def cluster() -> str:
    for tool in ("kind", "docker", "kubectl", "helm"):
        if shutil.which(tool) is None and not (ROOT / ".tools" / "bin" / tool).exists():
            pytest.skip(f"kind end-to-end needs {tool}, which is not installed here")
    up = subprocess.run([ROOT / "scripts" / "kind.sh", "up"], capture_output=True, text=True,
                        timeout=900)  # fmt: skip
    if up.returncode != 0:
        pytest.skip(f"no kind cluster could be created: {up.stderr.strip()[-500:]}")
    run(str(ROOT / "scripts" / "build-image.sh"), timeout=1800)
    run(str(ROOT / "scripts" / "kind.sh"), "load")
    run(str(ROOT / "scripts" / "kind.sh"), "deploy")
    return "mlscale"


@pytest.mark.kind
def test_helm_test_passes(cluster: str):
    run("helm", "test", "mlscale", "--namespace", cluster, "--logs")


@pytest.mark.kind
def test_inference_through_a_port_forward(cluster: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    forward = subprocess.Popen(["kubectl", "-n", cluster, "port-forward", "svc/mlscale",
                                f"{port}:80"], stdout=subprocess.PIPE)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.post(url + "/v2/models/iris/infer", timeout=5, json={"inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                     "data": [5.1, 3.5, 1.4, 0.2]}]})  # fmt: skip
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "port-forward never answered"
                time.sleep(0.5)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0]
        assert r.headers["x-model-version"] == "1"
    finally:
        forward.terminate()


@pytest.mark.kind
def test_three_replicas_spread_over_workers(cluster: str):
    run("helm", "upgrade", "mlscale", "charts/mlscale", "-n", cluster, "--reuse-values",
        "--set", "autoscaling.minReplicas=3", "--wait", "--timeout", "5m")  # fmt: skip
    nodes = run("kubectl", "-n", cluster, "get", "pods", "-l", "app.kubernetes.io/instance=mlscale,"
                "app.kubernetes.io/component=model-server", "-o",
                "jsonpath={range .items[*]}{.spec.nodeName}{'\\n'}{end}").split()  # fmt: skip
    assert len(nodes) >= 3 and len(set(nodes)) >= 2, nodes


NODE_PORT = "http://127.0.0.1:30080"  # k8s/kind-cluster.yaml maps the demo NodePort here


def infer_once(client: httpx.Client) -> int:
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                        "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
    return client.post(NODE_PORT + "/v2/models/iris/infer", json=body).status_code


@contextmanager
def steady_load(threads: int = 4) -> Iterator[list]:
    """Requests in a loop until the block ends; yields the list of failures."""
    failures: list = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    if (code := infer_once(client)) != 200:
                        failures.append(code)
                except httpx.HTTPError as exc:
                    failures.append(exc)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        yield failures
    finally:
        stop.set()
        for w in workers:
            w.join()


def rollout(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rollout", "--context", "kind-mlscale", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.kind
def test_rolling_upgrade_under_load_loses_nothing(cluster: str):
    with steady_load() as failures:
        done = rollout("deploy", "--version", "2", "--timeout", "300")
    assert done.returncode == 0, done.stderr
    assert failures == []


@pytest.mark.kind
def test_a_version_that_never_becomes_ready_is_rolled_back(cluster: str):
    before = rollout("-o", "json", "status")
    failed = rollout("deploy", "--version", "9", "--force", "--timeout", "300")
    assert failed.returncode == 1 and "rolled back" in failed.stderr
    assert json.loads(rollout("-o", "json", "status").stdout)["tracks"][0]["version"] == (
        json.loads(before.stdout)["tracks"][0]["version"])  # fmt: skip


@pytest.mark.kind
def test_a_canary_is_promoted(cluster: str):
    with steady_load() as failures:
        done = rollout("canary", "--version", "1", "--steps", "50,100", "--interval", "20",
                       "--min-requests", "10", "--force")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert failures == []


@pytest.mark.kind
def test_stepped_load_scales_across_workers_and_a_rollout_loses_nothing(cluster: str, tmp_path):
    rollout("deploy", "--version", "1", "--timeout", "300", "--force")
    cmd = [sys.executable, "-m", "loadtest", "--url", NODE_PORT, "--model", "iris", "--cluster",
           "--release", "mlscale", "--namespace", cluster, "--context", "kind-mlscale",
           "--users", "60", "--steps", "4", "--step-seconds", "30", "--hold-seconds", "120",
           "--rollout-version", "2", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["min_replicas"] <= 1 and summary["peak_replicas"] >= 3, summary
    assert len([n for n in summary["nodes_used"] if "worker" in n]) >= 2, summary
    assert summary["failure_ratio"] < 0.01, summary
    assert summary["rollout_outcome"] == "succeeded", summary
    assert done.returncode == 0 and summary["failures"] == 0, done.stdout[-2000:]
