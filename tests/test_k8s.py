"""k8s/: the kind cluster, namespace, metrics-server and gateway manifests (the cluster itself
is exercised in test_kind.py)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT, pins
from tests.helpers import K8S_VERSION, by_kind, kubernetes_kinds, pod_specs, render

K8S = ROOT / "k8s"


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


@pytest.mark.parametrize("name", ["namespace.yaml", "metrics-server.yaml"])
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


def test_kind_values_render_valid_restricted_objects(helm: str, tmp_path: Path):
    values = yaml.safe_load((K8S / "values-kind.yaml").read_text())
    docs = render(helm, tmp_path, values)
    for doc in kubernetes_kinds(docs):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["minReplicas"] == 1 and hpa["maxReplicas"] >= 3
    assert all(spec["securityContext"]["runAsNonRoot"] for spec in pod_specs(docs))


def test_metrics_server_trusts_kind_kubelets_and_needs_no_download():
    (deployment,) = [d for d in manifests("metrics-server.yaml") if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--kubelet-insecure-tls" in container["args"]
    # The tag the offline node image pre-imports (k8s/nodeimage/versions.env).
    assert container["image"].endswith(":" + pins()["METRICS_SERVER_VERSION"])


def test_the_gateway_is_the_pinned_traefik_serving_the_node_port_kind_maps():
    docs = manifests("gateway.yaml")
    core = [d for d in docs if not d["apiVersion"].startswith("gateway.networking.k8s.io")]
    for doc in core:  # the Gateway API's own kinds are checked by its CRDs, on the cluster
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "traefik:" + pins()["TRAEFIK_VERSION"]  # what the node holds
    assert "--global.sendAnonymousUsage=false" in container["args"]  # no calls out
    (service,) = [d for d in docs if d["kind"] == "Service"]
    (cluster,) = manifests("kind-cluster.yaml")
    mapped = {m["containerPort"] for n in cluster["nodes"] for m in n.get("extraPortMappings", [])}
    assert service["spec"]["ports"][0]["nodePort"] in mapped
    (gateway,) = [d for d in docs if d["kind"] == "Gateway"]
    values = yaml.safe_load((K8S / "values-kind.yaml").read_text())
    assert values["gateway"]["parentRefs"] == [
        {"name": gateway["metadata"]["name"], "namespace": gateway["metadata"]["namespace"]}
    ]
    port = gateway["spec"]["listeners"][0]["port"]
    assert f"--entryPoints.web.address=:{port}" in container["args"]  # Traefik's listener rule
