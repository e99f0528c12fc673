"""The Helm chart, rendered by real helm and validated against Kubernetes' schemas."""

import os
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from mlscale.rollout.resource import Traffic
from mlscale.rollout.traffic import Split, resend, resend_name, rules
from mlscale.service.settings import BatchingSettings, ModelSettings, ServerSettings, Settings
from tests.conftest import ROOT
from tests.helpers import (
    CHART,
    K8S_VERSION,
    SERVICE_MONITOR_API,
    VALUE_SETS,
    by_kind,
    kubernetes_kinds,
    pod_specs,
    render,
    run_helm,
    server_deployment,
)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(helm: str, tmp_path: Path, name: str):
    result = run_helm(helm, "lint", "--strict", str(CHART), values=VALUE_SETS[name],
                      tmp_path=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_validates_against_kubernetes_schemas(helm: str, tmp_path: Path, name: str):
    docs = render(helm, tmp_path, VALUE_SETS[name], "--api-versions", SERVICE_MONITOR_API)
    for doc in kubernetes_kinds(docs):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_really_rejects_unknown_fields(helm: str, tmp_path: Path):
    deployment = server_deployment(render(helm, tmp_path, {}))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_restricted_pod_security_everywhere(helm: str, tmp_path: Path, name: str):
    for spec in pod_specs(render(helm, tmp_path, VALUE_SETS[name])):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_deployment_shape(helm: str, tmp_path: Path):
    docs = render(helm, tmp_path, {"model": {"name": "iris", "version": "2"}})
    deployment = server_deployment(docs)
    spec = deployment["spec"]
    assert "replicas" not in spec, "the HPA owns the replica count"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["revisionHistoryLimit"] >= 1
    pod = spec["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLSCALE_MODEL_NAME"] == "iris" and env["MLSCALE_MODEL_VERSION"] == "2"
    assert pod["metadata"]["annotations"]["mlscale.dev/model-version"] == "2"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    delay = int(env["MLSCALE_SHUTDOWN_DELAY_S"])
    grace = int(env["MLSCALE_GRACE_PERIOD_S"])
    assert delay > 0, "endpoints must drop the pod before it stops listening"
    assert pod["spec"]["terminationGracePeriodSeconds"] > delay + grace
    spread = pod["spec"]["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= spec["selector"]["matchLabels"].items()


def test_labels_selectors_and_targets_fit_together(helm: str, tmp_path: Path):
    docs = render(helm, tmp_path, {})
    deployment = server_deployment(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert selector["mlscale.dev/track"] == "stable"  # a canary Deployment never overlaps
    service = by_kind(docs, "Service")[0]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert "mlscale.dev/track" not in service["spec"]["selector"]  # serves both tracks
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }  # fmt: skip
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    pdb = by_kind(docs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # A budget that can block every eviction at minReplicas would stall node drains.
    assert "minAvailable" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] >= 1
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by", "component", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], key)


def test_autoscaling_off_sets_replicas(helm: str, tmp_path: Path):
    docs = render(helm, tmp_path, VALUE_SETS["autoscaling-off"])
    assert by_kind(docs, "HorizontalPodAutoscaler") == []
    assert server_deployment(docs)["spec"]["replicas"] == 3


def test_optional_objects(helm: str, tmp_path: Path):
    assert by_kind(render(helm, tmp_path, VALUE_SETS["networkpolicy-off"]), "NetworkPolicy") == []
    ingress = by_kind(render(helm, tmp_path, VALUE_SETS["ingress-on"]), "Ingress")[0]
    assert ingress["spec"]["tls"][0]["secretName"] == "mlscale-tls"
    metrics = by_kind(render(helm, tmp_path, VALUE_SETS["memory-and-pods-metrics"]),
                      "HorizontalPodAutoscaler")[0]["spec"]["metrics"]  # fmt: skip
    assert [m["type"] for m in metrics] == ["Resource", "Resource", "Pods"]


def test_service_monitor_only_where_its_api_exists(helm: str, tmp_path: Path):
    values = VALUE_SETS["servicemonitor-on"]
    assert by_kind(render(helm, tmp_path, values), "ServiceMonitor") == []
    monitor = by_kind(render(helm, tmp_path, values, "--api-versions", SERVICE_MONITOR_API),
                      "ServiceMonitor")[0]  # fmt: skip
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_helm_test_pod_runs_a_real_inference(helm: str, tmp_path: Path):
    pod = by_kind(render(helm, tmp_path, {"model": {"name": "iris", "version": "2"}}), "Pod")[0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["mlscale", "check", "iris"]
    assert "--expect-version" not in command  # checks what is live, not what was installed
    assert command[command.index("--url") + 1] == "http://demo-mlscale:80"


def test_a_model_set_is_served_checked_and_filled_from_its_images(helm: str, tmp_path: Path):
    docs = render(helm, tmp_path, VALUE_SETS["model-set-images"])
    spec = server_deployment(docs)["spec"]["template"]
    env = {e["name"]: e["value"] for e in spec["spec"]["containers"][0]["env"]}
    assert (env["MLSCALE_MODEL_NAME"], env["MLSCALE_MODELS"]) == ("flowers", "wine:3")
    assert spec["metadata"]["annotations"]["mlscale.dev/models"] == "wine:3"
    images = {c["name"]: c["image"] for c in spec["spec"]["initContainers"]}
    assert images == {"model": "mlscale-model/flowers:2", "model-wine": "mlscale-model/wine:3"}
    command = by_kind(docs, "Pod")[0]["spec"]["containers"][0]["command"]
    assert command[:4] == ["mlscale", "check", "flowers", "wine"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"autoscaling": {"minReplicas": "two"}}, "minReplicas"),
        ({"autoscaling": {"minReplicas": -1}}, "minReplicas"),
        ({"autoscaling": {"maxReplicas": 0}}, "maxReplicas"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
         "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (2)"),
        ({"replicas": 3}, "replicas"),
        ({"autoscaling": {"targetCPUUtilizationPercentage": 70},
          "resources": {"requests": {"cpu": None, "memory": "256Mi"}}},
         "set resources.requests.cpu"),
        ({"model": {"name": "iris", "version": -1}}, "version"),
        ({"model": {"name": "iris", "version": "2 beta"}}, "version"),
        ({"pdb": {"maxUnavailable": 0}}, "maxUnavailable"),
        ({"service": {"port": 70000}}, "port"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"model": {"others": [{"name": "iris", "version": "1"}]}},
         "model.others names iris twice"),
        ({"model": {"others": [{"name": "wine", "version": "1",
                                "image": {"repository": "mlscale-model/wine", "tag": "1"}}]}},
         "every model of the set comes from an image, or none does"),
        ({"model": {"others": [{"name": "wine"}]}}, "version"),
        ({"image": {"slim": True}}, "image.slim holds no models: ship them as model images"),
    ],
)  # fmt: skip
def test_bad_values_are_rejected_with_a_readable_message(
    helm: str, tmp_path: Path, values, message
):
    result = run_helm(helm, "template", "demo", str(CHART), values=values, tmp_path=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_chart_versions_follow_the_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project
    # 0.2.0 changed the Deployment's selector (immutable): a new chart version, never the same.
    assert tuple(map(int, chart["version"].split("."))) >= (0, 2, 0)


def test_every_value_is_documented_where_declared():
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented = {line.split()[2] for line in lines if line.strip().startswith("## @param")}
    values = yaml.safe_load("\n".join(lines))

    def leaves(node: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in documented:
                out.add(path)
            elif isinstance(value, dict):
                out |= leaves(value, path + ".")
            else:
                out.add(path)
        return out

    undocumented = leaves(values) - documented
    assert not undocumented, f"values without a ## @param line: {sorted(undocumented)}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_server_accepts_every_setting_the_chart_passes(
    helm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
):
    """The chart's MLSCALE_* environment, as rendered, read by the server's own settings."""
    deployment = server_deployment(render(helm, tmp_path, VALUE_SETS[name]))
    spec = deployment["spec"]["template"]["spec"]
    # Service links would add MLSCALE_PORT=tcp://... for the Service named after the release.
    assert spec["enableServiceLinks"] is False
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    known = {
        group.model_config["env_prefix"] + field.upper()
        for group in (ModelSettings, BatchingSettings, ServerSettings)
        for field in group.model_fields
    }
    assert set(env) <= known, f"the server reads no {set(env) - known}"
    for key in [k for k in os.environ if k.startswith("MLSCALE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        settings = Settings()
    except ValidationError as exc:
        pytest.fail(f"the server rejects the chart's environment: {exc}")
    assert settings.server.max_body_bytes == 8 * 1024 * 1024


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_a_default_install_has_a_network_policy_for_every_server_pod(helm: str, tmp_path: Path):
    """What a policy scanner asks (checkov CKV2_K8S_6): ingress to the serving port from the
    release's own test and labelled clients only, egress for DNS only."""
    docs = render(helm, tmp_path, {})
    (policy,) = by_kind(docs, "NetworkPolicy")
    deployment = server_deployment(docs)
    assert matches(
        policy["spec"]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo",
                                         "app.kubernetes.io/component": "test"}}},
        {"podSelector": {"matchLabels": {"demo-mlscale-client": "true"}}},
    ]  # fmt: skip
    assert policy["spec"]["egress"] == [{"ports": [{"port": 53, "protocol": "UDP"},
                                                  {"port": 53, "protocol": "TCP"}]}]  # fmt: skip


def test_the_network_policy_lets_in_the_gateway_the_nodes_and_named_peers(
    helm: str, tmp_path: Path
):
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    values = {
        **VALUE_SETS["gateway"],
        "networkPolicy": {"nodeCIDRs": ["10.0.0.0/16"], "from": [monitoring]},
    }
    (policy,) = by_kind(render(helm, tmp_path, values), "NetworkPolicy")
    peers = policy["spec"]["ingress"][0]["from"]
    gateways = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}}
    assert peers[2:] == [gateways, {"ipBlock": {"cidr": "10.0.0.0/16"}}, monitoring]
    # Any source, when asked: the egress limit stays.
    values["networkPolicy"]["allowExternal"] = True
    (policy,) = by_kind(render(helm, tmp_path, values), "NetworkPolicy")
    assert "from" not in policy["spec"]["ingress"][0] and policy["spec"]["egress"]


def test_a_node_cidr_that_is_not_one_is_refused(helm: str, tmp_path: Path):
    result = run_helm(helm, "template", "demo", str(CHART), tmp_path=tmp_path,
                      values={"networkPolicy": {"nodeCIDRs": ["10.0.0.0"]}})  # fmt: skip
    assert result.returncode != 0 and "nodeCIDRs" in result.stderr


def test_the_helm_test_pod_is_neither_selected_nor_shut_out(helm: str, tmp_path: Path):
    result = run_helm(helm, "template", "demo", str(CHART), values=VALUE_SETS["networkpolicy-from"],
                      tmp_path=tmp_path)  # fmt: skip
    test_doc = next(d for d in result.stdout.split("\n---") if "helm.sh/hook: test" in d)
    labels_block = test_doc.split("labels:", 1)[1].split("annotations:", 1)[0]
    keys = [line.split(":")[0].strip() for line in labels_block.strip().splitlines()]
    assert len(keys) == len(set(keys)), f"duplicate labels: {keys}"  # YAML keeps the last one
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (pod,) = by_kind(docs, "Pod")
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "test"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert not matches(pdb["spec"]["selector"], labels)  # a drain never waits on a test pod
    assert not matches(policy["spec"]["podSelector"], labels)  # its DNS egress stays open
    peers = policy["spec"]["ingress"][0]["from"]
    assert any("podSelector" in p and matches(p["podSelector"], labels) for p in peers)


def test_probes_are_patient_with_a_busy_server(helm: str, tmp_path: Path):
    deployment = server_deployment(render(helm, tmp_path, {}))
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["timeoutSeconds"] >= 3, probe
    live = server["livenessProbe"]
    # A restart takes a loaded pod away: liveness fails only after a minute of no answer.
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


def test_a_budget_over_a_single_replica_is_refused(helm: str, tmp_path: Path):
    one = {"autoscaling": {"minReplicas": 1}}
    result = run_helm(helm, "template", "demo", str(CHART), values=one, tmp_path=tmp_path)
    assert result.returncode != 0 and "a node drain evicts the only pod" in result.stderr
    render(helm, tmp_path, {**one, "pdb": {"enabled": False}})  # accepted when said so


def test_a_model_image_reaches_the_server_through_an_emptydir(helm: str, tmp_path: Path):
    docs = render(helm, tmp_path, VALUE_SETS["model-image"])
    deployment = server_deployment(docs)
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["name"] == "model" and init["image"] == "mlscale-model/flowers:2"
    assert init["command"] == ["cp", "-R", "/models/.", "/mnt/models/"]
    server = pod["containers"][0]
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["MLSCALE_MODEL_DIR"] == "/mnt/models" and env["MLSCALE_MODEL_VERSION"] == "2"
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/mnt/models" and mounts["models"]["readOnly"]
    assert {"name": "models", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    annotations = deployment["metadata"]["annotations"]
    assert annotations["mlscale.dev/model-image"] == "mlscale-model/flowers:2"
    # Without a model image: the server image's own store, and nothing of the above.
    plain = server_deployment(render(helm, tmp_path, {}))
    assert "initContainers" not in plain["spec"]["template"]["spec"]
    assert "mlscale.dev/model-image" not in plain["metadata"]["annotations"]


def test_the_slim_image_is_one_value_and_serves_compiled_versions_only(helm: str, tmp_path: Path):
    pod = server_deployment(render(helm, tmp_path, VALUE_SETS["slim"]))["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"] == f"mlscale:{chart_app_version()}-slim"
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["MLSCALE_RUNTIME"] == "onnx"  # what `mlscale rollout` reads to refuse the rest
    full = server_deployment(render(helm, tmp_path, VALUE_SETS["model-image"]))
    full_env = {e["name"] for e in full["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MLSCALE_RUNTIME" not in full_env


def chart_app_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def test_the_crd_is_a_valid_structural_schema_with_printer_columns():
    (crd,) = yaml.safe_load_all((CHART / "crds" / "modelrollouts.mlscale.dev.yaml").read_text())
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Stable", "Canary", "Weight", "Phase", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["mro"]

    def undocumented(schema: dict, path: str) -> list[str]:
        """Fields without a description (`kubectl explain` shows it), spec and status alike."""
        missing = []
        for name, field in schema.get("properties", {}).items():
            here = f"{path}.{name}"
            if "description" not in field and path.count(".") < 3:
                missing.append(here)
            missing += undocumented(field, here)
        return missing

    schema = version["schema"]["openAPIV3Schema"]
    gaps = [g for g in undocumented(schema["properties"]["spec"], "spec")]
    assert not gaps, gaps


def test_the_chart_declares_the_rollout_from_its_values(helm: str, tmp_path: Path):
    values = {"model": {"name": "flowers", "version": "2",
                        "image": {"repository": "mlscale-model/flowers", "tag": "2"}},
              "rollout": {"strategy": "Rolling"}}  # fmt: skip
    (ro,) = by_kind(render(helm, tmp_path, values), "ModelRollout")
    assert ro["metadata"]["name"] == "demo"
    spec = ro["spec"]
    assert (spec["version"], spec["modelImage"]) == ("2", "mlscale-model/flowers:2")
    assert spec["strategy"]["type"] == "Rolling" and spec["qualityGate"]["enabled"] is True
    digest = ro["metadata"]["annotations"]["mlscale.dev/values"]  # what it was rendered from
    (again,) = by_kind(render(helm, tmp_path, values), "ModelRollout")
    assert again["metadata"]["annotations"]["mlscale.dev/values"] == digest
    (default,) = by_kind(render(helm, tmp_path, {}), "ModelRollout")
    assert "modelImage" not in default["spec"]
    assert default["metadata"]["annotations"]["mlscale.dev/values"] != digest
    assert [s["weight"] for s in default["spec"]["strategy"]["steps"]] == [10, 50, 100]


def test_the_operator_runs_with_least_privilege_and_can_be_switched_off(helm: str, tmp_path: Path):
    docs = render(helm, tmp_path, {})
    (operator,) = [d for d in by_kind(docs, "Deployment") if d is not server_deployment(docs)]
    spec = operator["spec"]
    assert spec["replicas"] == 2  # one leads, one stands by
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-mlscale-operator"
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts  # only where it is needed
    (role,) = by_kind(docs, "Role")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    rollouts = {v for r in role["rules"] if r["resources"] == ["modelrollouts"] for v in r["verbs"]}
    assert rollouts == {"get", "list", "watch"}  # it writes their status only
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "demo-mlscale-operator"}  # fmt: skip
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    off = render(helm, tmp_path, {"operator": {"enabled": False}})
    assert not [d for d in off if "operator" in d["metadata"]["name"]]


def test_with_a_gateway_each_track_has_a_service_and_the_route_sends_all_to_stable(
    helm: str, tmp_path: Path
):
    docs = render(helm, tmp_path, VALUE_SETS["gateway"])
    pods = server_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    stable, canary = by_kind(docs, "Service")
    assert stable["spec"]["selector"]["mlscale.dev/track"] == "stable"  # clients meet no canary
    assert canary["metadata"]["name"] == "demo-mlscale-canary"
    assert canary["spec"]["selector"] == {
        **stable["spec"]["selector"],
        "mlscale.dev/track": "canary",
    }
    assert stable["spec"]["selector"].items() <= pods.items()
    (route,) = by_kind(docs, "HTTPRoute")
    assert route["metadata"]["name"] == "demo-mlscale"  # the name the controller derives
    assert route["spec"]["parentRefs"] == [{"name": "shared", "namespace": "gateways"}]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "", "kind": "Service", "name": "demo-mlscale",
                                    "port": 80, "weight": 100}]  # fmt: skip
    (ro,) = by_kind(docs, "ModelRollout")
    assert ro["spec"]["traffic"] == {"router": "Gateway", "implementation": "Traefik",
                                     "pinHeader": "x-model-version", "retries": 2,
                                     "maxBodyBytes": 8388608}  # fmt: skip
    # The rules are the controller's own between rollouts (its first look changes nothing),
    # and the resend Middleware they name comes with them, as the controller would make it.
    traffic = Traffic.parse(ro["spec"]["traffic"])
    assert route["spec"]["rules"] == rules(traffic, "demo-mlscale", Split(), 80)
    (middleware,) = by_kind(docs, "Middleware")
    assert middleware["metadata"]["name"] == resend_name("demo-mlscale")
    assert middleware["spec"] == resend(traffic) == {"buffering": {
        "maxRequestBodyBytes": 16777216,  # twice the server's limit: its own 413 below that
        "retryExpression": "IsNetworkError() && Attempts() <= 2"}}  # two resends  # fmt: skip
    standard = render(
        helm,
        tmp_path,
        {
            **VALUE_SETS["gateway"],
            "gateway": {
                **VALUE_SETS["gateway"]["gateway"],
                "implementation": "Standard",
                "retries": 3,
            },
        },
    )
    (route,) = by_kind(standard, "HTTPRoute")
    traffic = Traffic.parse(by_kind(standard, "ModelRollout")[0]["spec"]["traffic"])
    assert route["spec"]["rules"] == rules(traffic, "demo-mlscale", Split(), 80)
    assert route["spec"]["rules"][0]["retry"] == {"attempts": 3}
    assert not by_kind(standard, "Middleware")
    (role,) = by_kind(docs, "Role")
    allowed = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}  # fmt: skip
    assert allowed[("gateway.networking.k8s.io", "httproutes")] == {"get", "patch"}
    assert allowed[("traefik.io", "traefikservices")] == {"get", "create", "patch"}
    assert allowed[("traefik.io", "middlewares")] == {"get", "create", "patch"}
    # Without one: one Service over both tracks, no route, the split a replica ratio.
    plain = render(helm, tmp_path, {})
    assert len(by_kind(plain, "Service")) == 1 and not by_kind(plain, "HTTPRoute")
    assert by_kind(plain, "ModelRollout")[0]["spec"]["traffic"] == {"router": "ReplicaRatio"}
    assert ("gateway.networking.k8s.io", "httproutes") not in {
        (g, r) for rule in by_kind(plain, "Role")[0]["rules"] for g in rule["apiGroups"]
        for r in rule["resources"]
    }  # fmt: skip


def test_a_gateway_of_the_releases_own(helm: str, tmp_path: Path):
    values = {"gateway": {"enabled": True, "create": {"enabled": True, "className": "eg"}}}
    docs = render(helm, tmp_path, values)
    (gateway,) = by_kind(docs, "Gateway")
    assert gateway["spec"]["gatewayClassName"] == "eg"
    (route,) = by_kind(docs, "HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"name": gateway["metadata"]["name"]}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway": {"enabled": True}}, "gateway.enabled needs a Gateway to attach the route to"),
        ({"gateway": {"enabled": True, "create": {"enabled": True}}},
         "gateway.create.enabled needs gateway.create.className"),
        ({"rollout": {"steps": [{"weight": 0, "mirror": 20}, {"weight": 50}]}},
         "a step of weight 0 (pinned requests only) or one that mirrors needs a gateway"),
        ({"rollout": {"steps": [{"weight": 101}]}}, "weight"),
        ({"gateway": {"enabled": True, "parentRefs": [{"name": "g"}], "implementation": "Envoy"}},
         "implementation"),
    ],
    ids=["no-parent", "no-class", "mirror-without-gateway", "weight-over-100", "implementation"],
)  # fmt: skip
def test_gateway_values_that_cannot_work_are_refused(helm: str, tmp_path: Path, values, message):
    result = run_helm(helm, "template", "demo", str(CHART), values=values, tmp_path=tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_pods_leave_a_failed_node_after_30_s_not_five_minutes(helm: str, tmp_path: Path):
    spec = server_deployment(render(helm, tmp_path, {}))["spec"]["template"]["spec"]
    assert {(t["key"], t["tolerationSeconds"]) for t in spec["tolerations"]} == {
        ("node.kubernetes.io/not-ready", 30), ("node.kubernetes.io/unreachable", 30)
    }  # fmt: skip
    mine = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    values = {"tolerations": [mine], "nodeFailureTolerationSeconds": 0}
    spec = server_deployment(render(helm, tmp_path, values))["spec"]["template"]["spec"]
    assert spec["tolerations"] == [mine]  # and Kubernetes' 300 s


def test_versions_and_tags_given_as_numbers_render_as_the_same_strings(helm: str, tmp_path: Path):
    """`--set model.version=2`, the README's own install line, makes a number, which the
    schema refused ("got number, want string"); a tag of digits in a template's printf
    rendered as `%!s(int64=2)`. Numbers now render exactly as the strings do, the rollout's
    values digest included, so switching between the two changes nothing."""
    sets = ["model.version=2", "model.image.tag=2", "model.extraVersions={1}", "image.tag=3",
            "model.others[0].version=4", "model.others[0].image.tag=4"]  # fmt: skip
    names = ["--set", "model.name=flowers,model.image.repository=mlscale-model/flowers,"
             "model.others[0].name=iris,"
             "model.others[0].image.repository=mlscale-model/iris"]  # fmt: skip
    numbers = render(helm, tmp_path, {}, *names, *[a for s in sets for a in ("--set", s)])
    strings = render(helm, tmp_path, {}, *names, *[a for s in sets for a in ("--set-string", s)])
    assert numbers == strings
    rollout = by_kind(numbers, "ModelRollout")[0]["spec"]
    assert (rollout["version"], rollout["modelImage"]) == ("2", "mlscale-model/flowers:2")
    env = {e["name"]: e.get("value") for e in server_deployment(numbers)["spec"]["template"]
           ["spec"]["containers"][0]["env"]}  # fmt: skip
    assert (env["MLSCALE_MODELS"], env["MLSCALE_EXTRA_VERSIONS"]) == ("iris:4", "1")
