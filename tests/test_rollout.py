"""The rollout controller against a real kube-apiserver, etcd and kube-controller-manager
(`tests/control_plane.py`), over real HTTP, through the official client. The controller runs as
its own process (`python -m mlscale.rollout.operator`), as the service account the chart renders
for it (RBAC on: a call its Role does not allow fails the test); the CLI's client side talks to
the server as an admin, as a person would. Nodes and pods are simulated (`tests/kubelet.py`);
failures are injected in front of the real server (`tests/apiproxy.py`). The release is the
real chart, rendered by helm and created as is, its ModelRollout validated by the real CRD."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import urllib3
import yaml
from typer.testing import CliRunner

from mlscale.cli import app as mlscale
from mlscale.rollout import client
from mlscale.rollout.kube import Forbidden, Kube, NotFound, Refused, RolloutError, Target
from mlscale.service.artifacts.manifest import ONNX, SKLEARN, Manifest
from mlscale.service.contract import MANIFEST_LABEL, TRACK_LABEL, parse_models
from tests.apiproxy import FaultProxy
from tests.conftest import ROOT, Envtest, free_port
from tests.control_plane import ADMIN_TOKEN, Admin, ApiServerError
from tests.gateway import Gateway
from tests.helpers import render, wait_for
from tests.kubelet import Tenant

# Version 4 was published without holdout data: no offline metrics.
STORE = {"1": {"accuracy": 0.95}, "2": {"accuracy": 0.97}, "3": {"accuracy": 0.80}, "4": {}}
CRD = ROOT / "charts" / "mlscale" / "crds" / "modelrollouts.mlscale.dev.yaml"
PodAnswer = Callable[[dict, str], tuple[int, str] | None]
FAST_STEPS = (34, 100)  # canary steps for tests: two, of one second each


def ready(pod: dict) -> bool:
    return bool((pod["status"].get("containerStatuses") or [{}])[0].get("ready"))


def pod_version(pod: dict) -> str:
    env = pod["spec"]["containers"][0].get("env", [])
    return next((e["value"] for e in env if e["name"] == "MLSCALE_MODEL_VERSION"), "")


def canary_pod(pod: dict) -> bool:
    return pod["metadata"]["labels"].get(TRACK_LABEL) == "canary"


def settled(pods: list[dict], versions: list[str]) -> bool:
    """Exactly these versions run, every pod Ready."""
    return sorted(map(pod_version, pods)) == versions and all(map(ready, pods))


@dataclass
class Operator:
    """One controller process, reaching the API server through its own fault proxy."""

    proc: subprocess.Popen
    faults: FaultProxy
    log: Path
    port: int
    killed: bool = False  # by the test, on purpose

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def died(self) -> str | None:
        """Why the process ended without the test killing it (a lost Lease, a crash), with
        its log's tail: a rollout that nobody reconciles would otherwise wait out its timeout."""
        if self.killed or self.proc.poll() is None:
            return None
        tail = "\n".join(self.output().splitlines()[-20:])
        return f"controller {self.log.name} exited by itself ({self.proc.returncode}):\n{tail}"

    def metrics(self) -> str:
        return urllib3.request("GET", f"http://127.0.0.1:{self.port}/metrics").data.decode()


@dataclass
class Cluster:
    admin: Admin
    faults: FaultProxy  # in front of the first controller
    ns: str
    token: str  # the controller's service account's
    ca: str
    workdir: Path
    stack: ExitStack
    url: str = ""  # the first controller's way to the server
    user_url: str = ""  # the CLI's (as an admin)
    fates: dict[str, str] = field(default_factory=lambda: defaultdict(lambda: "ready"))
    reported: dict[str, str] = field(default_factory=dict)  # version -> what its pods claim
    error_rate: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    slow: set[str] = field(default_factory=set)
    served: Counter[str] = field(default_factory=Counter)  # pod -> requests so far
    # version -> share of each label in what its pods answer (4 rows a request)
    answers: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: {"0": 0.5, "1": 0.5})
    )
    said: list[str] = field(default_factory=list)
    # The chart's Lease duration; a test of a takeover shortens it (@pytest.mark.lease).
    lease: int = 15
    respond: PodAnswer | None = None  # how the pods answer HTTP; `pod_answers` unless replaced
    operators: list[Operator] = field(default_factory=list)

    def tenant(self) -> Tenant:
        return Tenant(lambda pod: self.fates[pod_version(pod)],
                      lambda pod, path: (self.respond or self.pod_answers)(pod, path))  # fmt: skip

    def kube(self) -> Kube:
        """The CLI's client, as a person (an admin) runs it."""
        return Kube(Target(namespace=self.ns, host=self.user_url))

    def say(self, message: str) -> None:
        self.said.append(message)

    def start_operator(self, identity: str = "op-1", faults: FaultProxy | None = None,
                       *extra: str) -> Operator:  # fmt: skip
        """A controller process; the first one goes through `self.faults`. With the chart's
        timeouts: shorter ones lose the Lease on a loaded machine, and the process ends."""
        faults = faults or self.faults
        url = self.url if faults is self.faults else self.stack.enter_context(faults.serve())
        log = self.workdir / f"operator-{identity}-{len(self.operators)}.log"
        port = free_port()
        cmd = [sys.executable, "-m", "mlscale.rollout.operator", "--server", url, "-n", self.ns,
               "--identity", identity, "--lease-seconds", str(self.lease), "--port", str(port),
               *extra]  # fmt: skip
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # fmt: skip
        operator = Operator(proc, faults, log, port)
        self.operators.append(operator)
        return operator

    def start_standby(self) -> Operator:
        """A second controller, through a proxy of its own (its calls are counted apart), once
        it stands by: it has looked at the Lease and found it held."""
        standby = self.start_operator("op-2", FaultProxy(self.admin.url, self.token, self.ca))
        wait_for(lambda: "waiting to lead" in standby.output(), 60, "the standby to wait to lead")
        return standby

    def lease_holder(self) -> str | None:
        return self.admin.get("leases", self.ns, "mlscale-operator")["spec"].get("holderIdentity")

    def rollout(self) -> dict:
        found = self.admin.get("modelrollouts", self.ns, "demo")
        assert found is not None
        return found

    def status(self) -> dict:
        return self.rollout().get("status") or {}

    def events(self) -> list[tuple[str, str]]:
        """The rollout's events, in the order they were made."""
        events = sorted(self.admin.list("events", self.ns),
                        key=lambda e: int(e["metadata"]["resourceVersion"]))  # fmt: skip
        return [(e["reason"], e["message"]) for e in events
                if e["involvedObject"].get("kind") == "ModelRollout"]  # fmt: skip

    def deploy(self, version: str, timeout: float = 30, **spec: object) -> client.Outcome:
        """`mlscale rollout deploy`: a rolling update, followed to its end."""
        force = bool(spec.pop("force", False))
        image = spec.pop("model_image", None)
        body = client.spec_for(
            version,
            image,
            strategy={"type": "Rolling"},  # type: ignore[arg-type]
            force=force,
            timeout=timeout,
        )
        return client.roll(self.kube(), "demo", {**body, **spec}, say=self.say, timeout=timeout)

    def canary(self, version: str, timeout: float = 60, model_image: str | None = None,
               steps: tuple[int, ...] = FAST_STEPS, seconds: int = 1, model: str | None = None,
               **analysis: object) -> client.Outcome:  # fmt: skip
        body = client.spec_for(
            version,
            model_image,
            model=model,
            timeout=timeout,
            strategy={
                "type": "Canary",
                "steps": [{"weight": w, "seconds": seconds} for w in steps],
            },
        )
        body["analysis"] = {"maxErrorRate": 0.05, "maxP99Ms": 100, "minRequests": 20, **analysis}
        return client.roll(self.kube(), "demo", body, say=self.say, timeout=timeout)

    def pods(self) -> list[dict]:
        """The pods that are not going away."""
        return [p for p in self.admin.list("pods", self.ns)
                if not p["metadata"].get("deletionTimestamp")]  # fmt: skip

    def versions(self) -> list[str]:
        return sorted(pod_version(p) for p in self.pods())

    def deployment(self, name: str = "demo-mlscale") -> dict | None:
        return self.admin.get("deployments", self.ns, name)

    def stable_version(self) -> str:
        d = self.deployment()
        assert d is not None
        return next(
            e["value"]
            for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "MLSCALE_MODEL_VERSION"
        )

    def pod_answers(self, pod: dict, path: str) -> tuple[int, str] | None:
        version = pod_version(pod)
        if path == "/v2/models/iris":
            claimed = self.reported.get(version, version)
            return 200, json.dumps({"name": "iris", "parameters": {"version": claimed}})
        if path == "/mlscale/v1/models/iris/versions":
            return 200, json.dumps(
                {
                    "name": "iris",
                    "versions": [{"version": v, "metrics": m} for v, m in STORE.items()],
                }
            )
        if path == "/metrics":  # every scrape finds 50 more requests served
            name = pod["metadata"]["name"]
            self.served[name] += 50
            n = self.served[name]
            errors = round(n * self.error_rate[version])
            le = "0.5" if version in self.slow else "0.005"
            labels = f'endpoint="/v2/models/{{name}}/infer",model="iris",version="{version}"'
            answered = [
                f'mlscale_predictions_total{{label="{label}",model="iris",version="{version}"}} '
                f"{round(4 * n * share)}"
                for label, share in self.answers[version].items()
            ]
            return 200, "\n".join(
                [
                    f'mlscale_requests_total{{code="200",{labels}}} {n - errors}',
                    f'mlscale_requests_total{{code="500",{labels}}} {errors}',
                    f'mlscale_request_duration_seconds_bucket{{code="200",{labels},le="{le}"}} {n}',
                    f'mlscale_request_duration_seconds_bucket{{code="200",{labels},le="+Inf"}} {n}',
                    *answered,
                ]
            ) + "\n"
        return 404, "{}"


@pytest.fixture(scope="module")
def crd(control_plane: Envtest) -> None:
    """The chart's CRD, installed once and Established."""
    admin = control_plane.plane.admin
    if admin.get("customresourcedefinitions", "", "modelrollouts.mlscale.dev") is None:
        admin.create(yaml.safe_load(CRD.read_text()))

    def established() -> bool:
        found = admin.get("customresourcedefinitions", "", "modelrollouts.mlscale.dev") or {}
        conditions = (found.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, 30, "the ModelRollout CRD to be established")


@contextmanager
def start_cluster(envtest: Envtest, helm: str, tmp_path: Path, model: dict,
                  operator: bool = True, lease: int = Cluster.lease, **values: object
                  ) -> Iterator[Cluster]:  # fmt: skip
    """The chart rendered with these model values (and any others) and created in a namespace
    of its own, its pods run by the simulated nodes, and (unless `operator` is False) a
    controller started."""
    plane, admin = envtest.plane, envtest.plane.admin
    ns = plane.namespace()
    docs = render(helm, tmp_path, {"model": model, "progressDeadlineSeconds": 2, **values})
    for doc in docs:
        if "helm.sh/hook" in doc["metadata"].get("annotations", {}):
            continue  # helm test's pod: not part of the release
        if doc["metadata"]["name"] == "demo-mlscale-operator" and doc["kind"] == "Deployment":
            continue  # the controller runs as a process of the test's (start_operator)
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 3  # what the HPA would have set
        doc["metadata"]["namespace"] = ns
        for subject in doc.get("subjects", []):
            subject["namespace"] = ns
        admin.create(doc, ns)
    token = admin.token(ns, "demo-mlscale-operator")
    faults = FaultProxy(plane.url, token, str(plane.ca))
    with ExitStack() as stack:
        c = Cluster(admin, faults, ns, token, str(plane.ca), tmp_path, stack, lease=lease)
        envtest.kubelet.tenants[ns] = c.tenant()
        try:
            c.url = stack.enter_context(faults.serve())
            c.user_url = stack.enter_context(
                FaultProxy(plane.url, ADMIN_TOKEN, str(plane.ca)).serve()
            )
            wait_for(lambda: settled(c.pods(), ["1", "1", "1"]), 30, "the cluster to settle")
            if operator:
                c.start_operator()
                wait_for(lambda: c.status().get("phase") == "Healthy", 30, "a Healthy rollout")
            yield c
            assert all(call[2] == ns for call in faults.calls), "a call outside the namespace"
        finally:
            died = [why for op in c.operators if (why := op.died())]
            for op in c.operators:
                op.proc.kill()
                op.proc.wait()
            for d in admin.list("deployments", ns):  # the garbage collector takes the rest
                admin.delete("deployments", ns, d["metadata"]["name"])
            envtest.kubelet.tenants.pop(ns, None)
        assert not died, "\n".join(died)


@pytest.fixture
def cluster(
    control_plane: Envtest, crd: None, helm: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    shorter = request.node.get_closest_marker("lease")
    lease = shorter.args[0] if shorter else Cluster.lease
    model = {"name": "iris", "version": "1"}
    with start_cluster(control_plane, helm, tmp_path, model, lease=lease) as c:
        yield c


# --- the resource ---------------------------------------------------------------------------


def test_the_chart_renders_a_healthy_rollout_with_its_defaults_and_conditions(cluster: Cluster):
    ro = cluster.rollout()
    assert ro["spec"]["strategy"]["type"] == "Canary" and ro["spec"]["version"] == "1"
    status = ro["status"]
    assert (status["phase"], status["stableVersion"]) == ("Healthy", "1")
    assert status["observedGeneration"] == ro["metadata"]["generation"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Healthy": ("True", "Serving"), "Progressing": ("False", "Serving"),
                          "Paused": ("False", "Serving")}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"version": "2", "strategy": {"steps": [{"weight": 101}]}},
            "should be less than or equal to 100",
        ),
        (
            {"version": "2", "strategy": {"steps": [{"weight": 0}, {"weight": 50}]}},
            "a step of weight 0 or one that mirrors needs spec.traffic.router Gateway",
        ),
        (
            {
                "version": "2",
                "traffic": {"router": "Gateway"},
                "strategy": {"steps": [{"weight": 10, "mirror": 20}]},
            },
            "a shadow step (mirror > 0) sends users nothing from the canary: its weight must be 0",
        ),
        (
            {"version": "2", "strategy": {"steps": [{"weight": 50}, {"weight": 10}]}},
            "canary step weights must strictly increase",
        ),
        (
            {"version": "2", "modelImage": "mlscale-model/iris:3"},
            "spec.modelImage's tag must be spec.version",
        ),
        ({"version": "no spaces"}, "should match"),
        (
            {"version": "2", "strategy": {"type": "Rolling"}, "paused": True},
            "a rolling update cannot be paused",
        ),
    ],
    ids=[
        "weight-101",
        "weight-0-without-gateway",
        "mirror-with-weight",
        "decreasing",
        "image-tag",
        "bad-version",
        "paused-rolling",
    ],
)
def test_a_spec_the_schema_rejects_gets_the_api_servers_message(cluster: Cluster, spec, message):
    body = {"apiVersion": "mlscale.dev/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": "other"}, "spec": spec}  # fmt: skip
    with pytest.raises(ApiServerError) as refused:
        cluster.admin.create(body, cluster.ns)
    assert refused.value.status == 422 and message in str(refused.value), refused.value


# --- rolling updates ------------------------------------------------------------------------


def test_rolling_deploy_moves_every_pod_and_records_history_and_events(cluster: Cluster):
    outcome = cluster.deploy("2")
    assert outcome.outcome == "succeeded" and outcome.previous == "1"
    assert cluster.versions() == ["2", "2", "2"]
    d = cluster.deployment()
    assert d is not None
    assert d["spec"]["template"]["metadata"]["annotations"]["mlscale.dev/model-version"] == "2"
    assert d["spec"]["template"]["metadata"]["labels"]["mlscale.dev/model-version"] == "2"
    assert d["metadata"]["generation"] == 2  # one spec change
    status = cluster.status()
    assert (status["phase"], status["stableVersion"]) == ("Healthy", "2")
    assert "rollout" not in status and "canaryVersion" not in status
    (entry,) = status["history"]
    assert (entry["version"], entry["previous"], entry["outcome"]) == ("2", "1", "succeeded")
    reasons = [r for r, _ in cluster.events()]
    assert reasons == ["RolloutStarted", "RolledOut"], cluster.events()
    assert any("Healthy: serving version 2" in line for line in cluster.said), cluster.said


def test_deploying_the_current_version_changes_nothing(cluster: Cluster):
    generation = cluster.rollout()["metadata"]["generation"]
    assert cluster.deploy("1").outcome == "unchanged"
    assert cluster.rollout()["metadata"]["generation"] == generation
    assert cluster.deployment()["metadata"]["generation"] == 1
    writes = {v for v, r, _ in cluster.faults.calls if r == "deployments"} - {
        "get",
        "list",
        "watch",
    }
    assert not writes, writes


def test_dry_run_prints_the_change_and_changes_nothing(cluster: Cluster):
    spec = client.spec_for("2", strategy={"type": "Rolling"})
    outcome = client.roll(cluster.kube(), "demo", spec, say=cluster.say, dry_run=True)
    assert outcome.outcome == "dry-run" and "'version': '2'" in cluster.said[-1]
    assert cluster.rollout()["spec"]["version"] == "1" and cluster.stable_version() == "1"


def test_a_rollout_that_never_becomes_ready_is_rolled_back(cluster: Cluster):
    cluster.fates["2"] = "never"
    with pytest.raises(RolloutError, match=r"exceeded its progress deadline.*stable serves 1"):
        cluster.deploy("2")
    assert cluster.stable_version() == "1"
    wait_for(lambda: cluster.versions() == ["1", "1", "1"], 10, "version 1 pods only")
    status = cluster.status()
    assert status["phase"] == "Degraded" and status["failedGeneration"] > 0
    (entry,) = status["history"]
    assert entry["outcome"] == "rolled-back" and "deadline" in entry["detail"]
    healthy = next(c for c in status["conditions"] if c["type"] == "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("False", "RolledBack")
    assert ("RolledBack", "demo-mlscale: back to version 1") in cluster.events()


def test_a_failed_version_is_not_tried_again_until_asked(cluster: Cluster):
    cluster.fates["2"] = "never"
    with pytest.raises(RolloutError):
        cluster.deploy("2")
    generation = cluster.deployment()["metadata"]["generation"]
    time.sleep(1.5)  # the controller keeps looking (every 30 s at rest); nothing moves
    assert cluster.deployment()["metadata"]["generation"] == generation
    cluster.fates["2"] = "ready"
    assert cluster.deploy("2").outcome == "succeeded"  # the same spec again: a retry
    assert [e["outcome"] for e in cluster.status()["history"]] == ["rolled-back", "succeeded"]


def test_crash_looping_pods_are_caught_before_the_deadline(cluster: Cluster):
    cluster.fates["2"] = "crash"
    # quoting the last line the server said (the pod's termination message)
    with pytest.raises(RolloutError, match=r"crash-looping \(\d+ restarts\): cannot serve: a"):
        cluster.deploy("2")
    assert cluster.stable_version() == "1"


def test_an_image_that_cannot_be_pulled_is_named_and_rolled_back(cluster: Cluster):
    cluster.fates["2"] = "pull"
    with pytest.raises(RolloutError, match=r"cannot pull image mlscale:[^ ]+ \(ErrImagePull"):
        cluster.deploy("2")
    assert cluster.stable_version() == "1" and cluster.status()["phase"] == "Degraded"


def test_a_pod_reporting_the_wrong_version_is_rolled_back(cluster: Cluster):
    cluster.reported["2"] = "1"  # e.g. an image whose store silently lacks version 2
    with pytest.raises(RolloutError, match="serves version '1', not '2'"):
        cluster.deploy("2")
    assert cluster.stable_version() == "1"


def test_a_pod_that_cannot_say_its_version_is_rolled_back(cluster: Cluster):
    answers = cluster.pod_answers

    def broken(pod: dict, path: str) -> tuple[int, str] | None:
        if pod_version(pod) == "2" and path == "/v2/models/iris":
            return 503, "{}"  # runs but does not listen yet, or the proxy fails
        return answers(pod, path)

    cluster.respond = broken
    with pytest.raises(RolloutError, match="did not say which version it serves"):
        cluster.deploy("2")
    assert cluster.stable_version() == "1"


def test_quality_gate_and_unknown_versions_are_refused_with_a_message(cluster: Cluster):
    with pytest.raises(Refused, match=r"accuracy 0.95 -> 0.8 \(15.8% worse\)"):
        cluster.deploy("3")
    with pytest.raises(Refused, match="version 9 is not in the image's model store"):
        cluster.deploy("9")
    with pytest.raises(Refused, match=r"version 4 has no offline metrics.*nothing to compare"):
        cluster.deploy("4")
    assert cluster.stable_version() == "1" and cluster.deployment()["metadata"]["generation"] == 1
    status = cluster.status()
    assert status["phase"] == "Degraded" and "version 4 refused" in status["message"]
    assert [e["outcome"] for e in status["history"]] == ["refused"] * 3
    assert cluster.deploy("3", force=True).outcome == "succeeded"


def test_conflicting_writes_are_retried_on_a_fresh_read(cluster: Cluster):
    cluster.faults.conflicts_to_inject = 2
    assert cluster.deploy("2").outcome == "succeeded"
    assert cluster.faults.conflicts_to_inject == 0
    # Each attempt reads the Deployment afresh before its patch; the proxy records only the
    # calls the server answered: three reads, and the one patch that went through.
    calls = [v for v, r, _ in cluster.faults.calls if r == "deployments" and v in ("get", "patch")]
    assert calls[:4] == ["get", "get", "get", "patch"], calls


@pytest.mark.parametrize("fault", [429, 503, None], ids=["429", "503", "reset"])
def test_api_errors_mid_rollout_back_off_and_the_rollout_carries_on(cluster: Cluster, fault):
    """The server throttles, fails or drops the connection once the version is patched: the
    controller backs off and takes the next step from the status, as if nothing happened."""
    cluster.fates["2"] = "never"
    spec = client.spec_for("2", strategy={"type": "Rolling"})
    client.roll(cluster.kube(), "demo", spec, say=cluster.say, wait=False)
    wait_for(lambda: cluster.stable_version() == "2", 10, "the patch")
    cluster.faults.fail(fault, f"/namespaces/{cluster.ns}/pods?", 6)
    cluster.fates["2"] = "ready"
    end = client.follow(cluster.kube(), "demo", cluster.rollout()["metadata"]["generation"], 30,
                        cluster.say)  # fmt: skip
    assert end["phase"] == "Healthy" and end["stableVersion"] == "2"
    assert all(f.times == 0 for f in cluster.faults.failures)
    assert "retrying in" in cluster.operators[0].output()


def test_rollback_returns_to_the_previous_version(cluster: Cluster):
    cluster.deploy("2")
    result = CliRunner().invoke(mlscale, ["rollout", "--server", cluster.user_url, "-n",
                                          cluster.ns, "-r", "demo", "rollback"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert cluster.versions() == ["1", "1", "1"]
    history = cluster.status()["history"]
    assert [(e["version"], e["strategy"]) for e in history] == [("2", "Rolling"), ("1", "Rolling")]


# --- canaries -------------------------------------------------------------------------------


def test_a_healthy_canary_is_promoted_and_kubectl_describe_tells_the_story(cluster: Cluster):
    outcome = cluster.canary("2")
    assert outcome.outcome == "succeeded" and cluster.stable_version() == "2"
    assert cluster.deployment("demo-mlscale-canary") is None
    wait_for(lambda: cluster.versions() == ["2", "2", "2"], 5, "the canary's pods collected")
    reasons = [r for r, _ in cluster.events()]
    assert reasons == ["RolloutStarted", "CanaryCreated", "StepPassed", "StepPassed",
                       "Promoting", "CanaryRemoved", "Promoted"], cluster.events()  # fmt: skip
    passed = [m for r, m in cluster.events() if r == "StepPassed"]
    assert passed[0].startswith("step 0 (34%): canary ") and passed[0].endswith("-> pass")
    status = cluster.status()
    assert status["history"][-1]["strategy"] == "Canary"
    assert status["analysis"]["passed"] and status["analysis"]["weight"] == 100
    seen = [line for line in cluster.said if line.startswith("Progressing: step")]
    assert seen, cluster.said  # the follower printed the steps as they went


def test_a_failing_canary_is_aborted_with_its_figures_and_stable_is_untouched(cluster: Cluster):
    cluster.error_rate["2"] = 0.3
    with pytest.raises(RolloutError, match=r"canary error rate 30\.00% > 5\.00%.*errors 30"):
        cluster.canary("2")
    assert cluster.stable_version() == "1"
    assert cluster.deployment("demo-mlscale-canary") is None
    wait_for(lambda: cluster.versions() == ["1", "1", "1"], 5, "version 1 pods only")
    status = cluster.status()
    assert status["phase"] == "Aborted" and "stable serves 1" in status["message"]
    assert status["analysis"]["canaryErrorRate"] == pytest.approx(0.3, abs=0.02)
    assert status["history"][-1]["outcome"] == "aborted"


def test_a_slow_canary_is_aborted(cluster: Cluster):
    cluster.slow.add("2")
    with pytest.raises(RolloutError, match="p99"):
        cluster.canary("2")
    assert cluster.stable_version() == "1"


def test_a_failed_promotion_rolls_stable_back_and_removes_the_canary(cluster: Cluster):
    answers = cluster.pod_answers

    def stable_pods_of_2_lie(pod: dict, path: str) -> tuple[int, str] | None:
        if path == "/v2/models/iris" and pod_version(pod) == "2" and not canary_pod(pod):
            return 200, json.dumps({"name": "iris", "parameters": {"version": "1"}})
        return answers(pod, path)

    cluster.respond = stable_pods_of_2_lie
    with pytest.raises(RolloutError, match="passed its analysis, but promoting it failed"):
        cluster.canary("2")
    assert cluster.deployment("demo-mlscale-canary") is None
    assert cluster.stable_version() == "1"


def test_canary_steps_follow_the_live_stable_replica_count(cluster: Cluster):
    """The HPA moves the stable Deployment during the analysis: each look reads it again."""
    spec = client.spec_for(
        "2",
        strategy={
            "type": "Canary",
            "steps": [{"weight": 34, "seconds": 3}, {"weight": 100, "seconds": 1}],
        },
    )
    spec["analysis"] = {"minRequests": 20}
    client.roll(cluster.kube(), "demo", spec, say=cluster.say, wait=False)
    wait_for(lambda: cluster.deployment("demo-mlscale-canary"), 10, "the canary")
    cluster.admin.patch("deployments", cluster.ns, "demo-mlscale", {"spec": {"replicas": 6}})
    wait_for(lambda: (cluster.deployment("demo-mlscale-canary") or {}).get("spec", {})
             .get("replicas") in (3, 6), 10, "the canary to follow stable")  # fmt: skip
    end = client.follow(cluster.kube(), "demo", cluster.rollout()["metadata"]["generation"], 30,
                        cluster.say)  # fmt: skip
    assert end["phase"] == "Healthy"
    assert any("6 canary and 6 stable pods" in line for line in cluster.said), cluster.said


def test_the_spec_changing_mid_canary_aborts_it_and_starts_the_new_one(cluster: Cluster):
    spec = client.spec_for(
        "2", strategy={"type": "Canary", "steps": [{"weight": 50, "seconds": 30}]}
    )
    client.roll(cluster.kube(), "demo", spec, say=cluster.say, wait=False)
    wait_for(lambda: cluster.status().get("rollout", {}).get("stepStartedAt"), 15, "step 0")
    assert cluster.deploy("3", force=True).outcome == "succeeded"
    assert cluster.stable_version() == "3" and cluster.deployment("demo-mlscale-canary") is None
    history = cluster.status()["history"]
    assert [(e["version"], e["outcome"]) for e in history] == [("2", "aborted"), ("3", "succeeded")]
    assert history[0]["detail"] == "superseded by 3"
    assert any(r == "Superseded" for r, _ in cluster.events())


def test_abort_promote_pause_and_resume(cluster: Cluster):
    base = ["rollout", "--server", cluster.user_url, "-n", cluster.ns, "-r", "demo"]
    runner = CliRunner()
    long = client.spec_for(
        "2",
        strategy={
            "type": "Canary",
            "steps": [{"weight": 10, "seconds": 600}, {"weight": 100, "seconds": 600}],
        },
    )
    client.roll(cluster.kube(), "demo", long, say=cluster.say, wait=False)
    wait_for(lambda: cluster.status().get("rollout", {}).get("stepStartedAt"), 15, "step 0")
    assert runner.invoke(mlscale, [*base, "pause"]).exit_code == 0
    wait_for(lambda: cluster.status().get("phase") == "Paused", 10, "Paused")
    assert "paused at step 0" in cluster.status()["message"]
    assert runner.invoke(mlscale, [*base, "resume"]).exit_code == 0
    wait_for(lambda: cluster.status().get("phase") == "Progressing", 10, "Progressing again")
    aborted = runner.invoke(mlscale, [*base, "abort"])
    assert aborted.exit_code == 1 and "aborted by request" in aborted.output, aborted.output
    assert cluster.status()["phase"] == "Aborted" and cluster.stable_version() == "1"
    # A retry of the same spec, promoted at once by request: the remaining steps are skipped.
    client.roll(cluster.kube(), "demo", long, say=cluster.say, wait=False)
    wait_for(lambda: cluster.status().get("rollout", {}).get("stepStartedAt"), 15, "step 0")
    promoted = runner.invoke(mlscale, [*base, "promote"])
    assert promoted.exit_code == 0, promoted.output
    assert cluster.stable_version() == "2" and cluster.status()["phase"] == "Healthy"
    nothing = runner.invoke(mlscale, [*base, "abort"])
    assert nothing.exit_code == 2 and "no rollout is running" in nothing.output


def test_ctrl_c_stops_following_and_the_rollout_goes_on(cluster: Cluster):
    # Started as from a terminal, where Ctrl-C reaches it: a test session run as a background
    # job ignores SIGINT, and its children would inherit that.
    as_from_a_terminal = ("import runpy, signal; signal.signal(signal.SIGINT, "
                          "signal.default_int_handler); runpy.run_module('mlscale.rollout', "
                          "run_name='__main__', alter_sys=True)")  # fmt: skip
    cmd = [sys.executable, "-c", as_from_a_terminal, "--server", cluster.user_url, "-n",
           cluster.ns, "-r", "demo", "canary", "--version", "2", "--steps", "34,100",
           "--interval", "2", "--max-p99-ms", "100"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # fmt: skip
    wait_for(lambda: any(canary_pod(p) and ready(p) for p in cluster.pods()), 20, "the canary")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler: where every thread is stuck
        pytest.fail(f"the CLI did not stop on Ctrl-C:\n{proc.communicate(timeout=10)[1]}")
    assert proc.returncode == 130, err
    assert "stopped following" in err and "mlscale rollout abort" in err
    wait_for(lambda: cluster.status().get("phase") == "Healthy"
             and cluster.stable_version() == "2", 30, "the rollout to end by itself")  # fmt: skip
    assert cluster.deployment("demo-mlscale-canary") is None


def answer_metrics(
    cluster: Cluster, which: Callable[[dict], bool], answer: Callable[[int], tuple[int, str] | None]
) -> None:
    """The pods `which` picks answer their n-th scrape of /metrics (n from 1) with `answer(n)`,
    or as usual when that is None; everything else as usual."""
    scrapes: Counter[str] = Counter()

    def respond(pod: dict, path: str) -> tuple[int, str] | None:
        if path == "/metrics" and which(pod):
            scrapes[pod["metadata"]["name"]] += 1
            if (given := answer(scrapes[pod["metadata"]["name"]])) is not None:
                return given
        return cluster.pod_answers(pod, path)

    cluster.respond = respond


def test_a_stable_pod_that_stops_answering_does_not_abort_a_healthy_canary(cluster: Cluster):
    gone = sorted(p["metadata"]["name"] for p in cluster.pods())[0]
    answer_metrics(cluster, lambda pod: pod["metadata"]["name"] == gone, lambda n: (503, "{}"))
    assert cluster.canary("2").outcome == "succeeded"


def test_a_canary_short_of_requests_is_judged_over_a_longer_window(cluster: Cluster):
    # The first two scrapes of each canary pod find no requests served.
    answer_metrics(cluster, canary_pod, lambda n: (200, "") if n <= 2 else None)
    assert cluster.canary("2").outcome == "succeeded"
    longer = [line for line in cluster.said if "fewer than 20: judging 1 s more" in line]
    assert longer and "step 0 (34%): canary 0 req in " in longer[0], cluster.said


def test_a_canary_that_never_gets_traffic_fails_after_its_longest_window(cluster: Cluster):
    answer_metrics(cluster, canary_pod, lambda n: (200, ""))
    with pytest.raises(RolloutError, match="canary saw 0 requests, fewer than 20"):
        cluster.canary("2", maxIntervals=3)
    assert cluster.status()["analysis"]["seconds"] >= 3  # three intervals of one second
    assert cluster.stable_version() == "1" and cluster.deployment("demo-mlscale-canary") is None


def test_a_canary_whose_metrics_cannot_be_read_is_not_taken_for_one_without_traffic(
    cluster: Cluster,
):
    answer_metrics(cluster, canary_pod, lambda n: (503, "{}"))
    with pytest.raises(RolloutError, match=r"fewer than 20 \(2 of 2 pods unreadable\)"):
        cluster.canary("2")
    assert cluster.stable_version() == "1"


# --- the controller: restarts, leadership, its own health -----------------------------------


def kill_when(cluster: Cluster, operator: Operator, condition: Callable[[dict], object],
              what: str) -> None:  # fmt: skip
    wait_for(lambda: condition(cluster.status()), 30, what)
    operator.kill()


@pytest.mark.lease(3)  # the successor takes over once the dead one's Lease has run out
@pytest.mark.parametrize("where", ["mid-canary", "mid-promotion"])
def test_a_controller_killed_mid_rollout_is_followed_by_one_that_finishes_it(
    cluster: Cluster, where: str
):
    spec = client.spec_for(
        "2",
        strategy={
            "type": "Canary",
            "steps": [{"weight": 34, "seconds": 2}, {"weight": 100, "seconds": 2}],
        },
    )
    spec["analysis"] = {"maxErrorRate": 0.05, "maxP99Ms": 100}
    client.roll(cluster.kube(), "demo", spec, say=cluster.say, wait=False)
    first = cluster.operators[0]
    if where == "mid-canary":  # inside step 1's window
        kill_when(cluster, first, lambda s: s.get("rollout", {}).get("step") == 1
                  and s["rollout"].get("stepStartedAt"), "step 1's window")  # fmt: skip
    else:  # all steps passed: stable is being moved to 2
        kill_when(cluster, first, lambda s: s.get("rollout", {}).get("promoting"), "promotion")
    assert first.proc.returncode == -signal.SIGKILL
    second = cluster.start_operator("op-2")
    end = client.follow(cluster.kube(), "demo", cluster.rollout()["metadata"]["generation"], 60,
                        cluster.say)  # fmt: skip
    # On failure: what the CLI followed, and what each controller did.
    story = "\n".join([*cluster.said, first.output(), second.output()])
    assert end["phase"] == "Healthy" and end["stableVersion"] == "2", story
    assert cluster.deployment("demo-mlscale-canary") is None and cluster.stable_version() == "2"
    assert [e["outcome"] for e in end["history"]] == ["succeeded"]
    assert "leading" in second.output()


@pytest.mark.lease(3)
def test_of_two_replicas_only_the_leader_acts_and_the_other_takes_over(cluster: Cluster):
    first = cluster.operators[0]
    standby = cluster.start_standby()  # before the leader has work to do
    assert cluster.deploy("2").outcome == "succeeded"
    assert cluster.lease_holder() == "op-1"
    acted = {(v, r) for v, r, _ in standby.faults.calls if r != "leases"}
    assert not acted, acted  # the standby read nothing but the Lease, wrote nothing else
    assert "waiting to lead" in standby.output() and "leading" not in standby.output()
    first.kill()
    assert cluster.deploy("1", timeout=40, force=True).outcome == "succeeded"
    assert cluster.lease_holder() == "op-2"


def test_a_leader_stopped_with_sigterm_gives_the_lease_up_to_its_standby(cluster: Cluster):
    """A rollout of the operator itself: the leader finishes, gives the Lease up and exits 0,
    and the standby leads at its next look, well before the 15 s Lease would run out."""
    first = cluster.operators[0]
    standby = cluster.start_standby()
    first.killed = True  # stopped on purpose
    first.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert first.proc.wait(timeout=30) == 0, first.output()
    assert "gave the Lease mlscale-operator up" in first.output(), first.output()
    wait_for(lambda: cluster.lease_holder() == "op-2", 15, "the standby to take the Lease")
    assert time.monotonic() - stopped < cluster.lease  # not the Lease running out
    wait_for(lambda: "leading" in standby.output(), 15, "the standby to lead")
    assert cluster.deploy("2").outcome == "succeeded"  # and it acts


def test_a_standby_stopped_with_sigterm_exits_at_once(cluster: Cluster):
    standby = cluster.start_standby()
    standby.killed = True
    standby.proc.send_signal(signal.SIGTERM)
    assert standby.proc.wait(timeout=30) == 0, standby.output()
    assert cluster.lease_holder() == "op-1"  # the leader's Lease is left alone


def test_the_controller_exports_its_metrics(cluster: Cluster):
    cluster.deploy("2")
    operator = cluster.operators[0]
    # The controller counts once its status write is done: a moment after the CLI saw it.
    succeeded = 'mlscale_operator_rollouts_total{outcome="succeeded"} 1.0'
    wait_for(lambda: succeeded in operator.metrics(), 5, "the rollout counted")
    text = operator.metrics()
    assert 'mlscale_operator_rollout_phase{phase="Healthy",rollout="demo"} 1.0' in text
    assert "mlscale_operator_leader 1.0" in text
    ok = next(line for line in text.splitlines()
              if line.startswith('mlscale_operator_reconciles_total{result="ok"}'))  # fmt: skip
    assert float(ok.split()[-1]) >= 3


def test_a_missing_release_is_degraded_with_a_sentence(cluster: Cluster):
    cluster.admin.delete("deployments", cluster.ns, "demo-mlscale")
    with pytest.raises(RolloutError, match=r"release 'demo' not found in namespace"):
        cluster.deploy("2")
    assert cluster.status()["phase"] == "Degraded"


def test_without_a_controller_the_cli_says_none_is_running(
    control_plane: Envtest, crd: None, helm: str, tmp_path: Path, monkeypatch
):
    monkeypatch.setattr(client, "PICKUP_SECONDS", 1.0)
    model = {"name": "iris", "version": "1"}
    with (
        start_cluster(control_plane, helm, tmp_path, model, operator=False) as c,
        pytest.raises(RolloutError, match="no rollout controller took up the change"),
    ):
        c.deploy("2")


# --- the API server as the controller sees it ------------------------------------------------


def test_watches_resume_after_410_gone_and_a_dropped_connection(cluster: Cluster):
    kube = Kube(Target(namespace=cluster.ns, host=cluster.url))

    def lister(**kwargs):
        return kube.apps.list_namespaced_deployment(cluster.ns, **kwargs)

    stream = kube.watch(lister, "deployment demo-mlscale", 6, "metadata.name=demo-mlscale")
    assert next(stream).metadata.name == "demo-mlscale"  # the list
    cluster.faults.expire()  # compaction: the list's resourceVersion is now too old
    again = next(stream)
    assert again is not None and again.metadata.name == "demo-mlscale"  # listed again
    cluster.faults.watches_to_drop = 1
    assert next(s for s in stream if s is not None).metadata.name == "demo-mlscale"
    assert cluster.faults.watches_to_drop == 0


def test_a_half_open_watch_is_given_up(cluster: Cluster):
    """The watch's connection stays up and nothing arrives: past its window plus the call
    timeout it is taken for dead, and the client lists again instead of waiting forever."""
    cluster.faults.watches_to_stall = 1
    kube = Kube(Target(namespace=cluster.ns, host=cluster.url, timeout=1))

    def lister(**kwargs):
        return kube.apps.list_namespaced_deployment(cluster.ns, **kwargs)

    started = time.monotonic()
    stream = kube.watch(lister, "deployments", 20)
    listed = [next(stream)]
    while cluster.faults.watches_to_stall or len(listed) < 2:
        item = next(stream)
        if item is not None:
            listed.append(item)
    assert time.monotonic() - started < 15  # well inside: the window (5 s) + 1 s


def test_api_errors_are_typed_and_only_conflicts_are_retried(cluster: Cluster):
    kube = Kube(Target(namespace=cluster.ns, host=cluster.url))
    with pytest.raises(NotFound, match="404"):
        kube.call(kube.apps.read_namespaced_deployment, "nope", cluster.ns)
    attempts = []

    def missing() -> None:
        attempts.append(1)
        kube.call(kube.apps.read_namespaced_deployment, "nope", cluster.ns)

    with pytest.raises(NotFound):
        kube.retry_on_conflict(missing)
    assert len(attempts) == 1  # a missing object does not appear by retrying


def test_rbac_holds_the_controller_to_its_role(cluster: Cluster):
    """The API server checks every call against the chart's Role: outside it, 403."""
    kube = Kube(Target(namespace=cluster.ns, host=cluster.url))
    pod = cluster.pods()[0]["metadata"]["name"]
    with pytest.raises(Forbidden, match="403"):
        kube.call(kube.core.delete_namespaced_pod, pod, cluster.ns)
    with pytest.raises(Forbidden, match="403"):
        kube.call(kube.apps.list_namespaced_deployment, "default")
    with pytest.raises(Forbidden, match="403"):  # it writes a rollout's status, never its spec
        kube.call(kube.custom.patch_namespaced_custom_object, "mlscale.dev", "v1alpha1",
                  cluster.ns, "modelrollouts", "demo", {"spec": {"version": "2"}})  # fmt: skip
    assert len(cluster.pods()) == 3
    assert ("delete", "pods", cluster.ns) in cluster.faults.refused


def test_cli_status_history_and_exit_codes(cluster: Cluster):
    runner = CliRunner()
    base = ["rollout", "--server", cluster.user_url, "-n", cluster.ns, "-r", "demo", "-o", "json"]
    result = runner.invoke(mlscale, [*base, "deploy", "--version", "2", "--timeout", "20"])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(mlscale, [*base, "status"]).stdout)
    assert status["rollout"]["phase"] == "Healthy" and status["rollout"]["stableVersion"] == "2"
    (stable,) = status["tracks"]
    assert stable["version"] == "2" and stable["ready"] == 3 and stable["desired"] == 3
    assert {p["node"] for p in stable["pods"]} <= {"worker-1", "worker-2", "worker-3"}
    history = json.loads(runner.invoke(mlscale, [*base, "history"]).stdout)
    assert [e["version"] for e in history] == ["2"]
    refused = runner.invoke(mlscale, [*base, "deploy", "--version", "3"])
    assert refused.exit_code == 2 and "quality gate" in refused.stdout
    cluster.fates["1"] = "never"
    failed = runner.invoke(mlscale, [*base, "deploy", "--version", "1", "--force",
                                      "--timeout", "60"])  # fmt: skip
    assert failed.exit_code == 1 and "stable serves 2" in failed.stdout
    text = runner.invoke(mlscale, [*base[:-2], "status"])
    assert "rollout Degraded" in text.stdout


def test_the_cli_exits_3_when_the_cluster_cannot_be_reached(cluster: Cluster):
    unreachable = ["rollout", "--server", "http://127.0.0.1:9", "-n", cluster.ns, "-r", "demo"]
    result = CliRunner().invoke(mlscale, [*unreachable, "status"])
    said = " ".join(result.output.split())  # as one line: the console wraps at its width
    assert result.exit_code == 3 and "cannot reach the API server" in said, said


def test_explicit_flags_win_over_in_cluster_config_and_the_context_namespace_is_used(
    tmp_path: Path, monkeypatch
):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": "https://kubeconfig.example:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "team"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    # Inside a pod as well: the explicit kubeconfig still decides.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    kube = Kube(Target(kubeconfig=str(kubeconfig)))
    assert kube.apps.api_client.configuration.host == "https://kubeconfig.example:6443"
    assert kube.namespace == "team"
    assert Kube(Target(kubeconfig=str(kubeconfig), context="b")).namespace == "mlscale"
    assert Kube(Target(kubeconfig=str(kubeconfig), namespace="x")).namespace == "x"


# --- model images -------------------------------------------------------------------------

IMAGE = "mlscale-model/iris"


def image_labels(name: str, version: str, metrics: dict[str, float], runtime: str = SKLEARN
                 ) -> str:  # fmt: skip
    manifest = Manifest(
        name=name, version=version, sha256="0" * 64, sklearn_version="1", numpy_version="1",
        python_version="3", estimator="Pipeline", inputs=[], outputs=[], metrics=metrics,
        created=datetime.now(UTC), runtime=runtime,
    )  # fmt: skip
    return json.dumps({MANIFEST_LABEL: manifest.model_dump_json()})


@pytest.fixture
def engine(tmp_path: Path, monkeypatch) -> Path:
    """A container engine CLI that knows a few model images: `image inspect` answers their
    labels as Docker does, and fails for any other image."""
    images = {f"{IMAGE}:{v}": image_labels("iris", v, STORE[v]) for v in ("1", "2", "3")}
    images[f"{IMAGE}-compiled:2"] = image_labels("iris", "2", STORE["2"], runtime=ONNX)  # compiled
    folder = tmp_path / "images"
    folder.mkdir()
    for ref, labels in images.items():
        (folder / ref.replace("/", "_")).write_text(labels)
    cli = tmp_path / "docker"
    cli.write_text(
        "#!/bin/sh\n"  # image inspect --format FORMAT REF
        f'f="{folder}/$(echo "$5" | tr / _)"\n'
        '[ "$1 $2" = "image inspect" ] && [ -f "$f" ] && exec cat "$f"\n'
        'echo "Error: No such image: $5" >&2; exit 1\n'
    )
    cli.chmod(0o755)
    monkeypatch.setenv("MLSCALE_DOCKER", str(cli))
    return cli


@pytest.fixture
def image_cluster(control_plane: Envtest, crd: None, helm: str, tmp_path: Path, engine: Path
                  ) -> Iterator[Cluster]:  # fmt: skip
    model = {"name": "iris", "version": "1", "image": {"repository": IMAGE, "tag": "1"}}
    with start_cluster(control_plane, helm, tmp_path, model) as c:
        yield c


def model_image(cluster: Cluster, deployment: str = "demo-mlscale") -> tuple[str, str]:
    d = cluster.deployment(deployment)
    assert d is not None
    (init,) = d["spec"]["template"]["spec"]["initContainers"]
    return init["image"], d["metadata"]["annotations"]["mlscale.dev/model-image"]


def cli(cluster: Cluster, *args: str) -> object:
    base = ["rollout", "--server", cluster.user_url, "-n", cluster.ns, "-r", "demo"]
    return CliRunner().invoke(mlscale, [*base, *args])


def test_a_model_image_moves_with_its_version_and_back(image_cluster: Cluster):
    c = image_cluster
    moved = cli(c, "deploy", "--model-image", f"{IMAGE}:2", "--timeout", "30")  # version: its label
    assert moved.exit_code == 0, moved.output
    assert c.stable_version() == "2" and model_image(c) == (f"{IMAGE}:2", f"{IMAGE}:2")
    (entry,) = c.status()["history"]
    assert (entry["image"], entry["previousImage"]) == (f"{IMAGE}:2", f"{IMAGE}:1")
    status = json.loads(cli(c, "-o", "json", "status").stdout)
    assert [(t["version"], t["model_image"]) for t in status["tracks"]] == [("2", f"{IMAGE}:2")]
    assert cli(c, "rollback").exit_code == 0
    assert c.stable_version() == "1" and model_image(c) == (f"{IMAGE}:1", f"{IMAGE}:1")


def test_a_failed_model_image_rollout_restores_the_old_image(image_cluster: Cluster):
    c = image_cluster
    c.fates["2"] = "never"
    with pytest.raises(RolloutError, match="stable serves 1"):
        c.deploy("2", model_image=f"{IMAGE}:2")
    assert c.stable_version() == "1" and model_image(c) == (f"{IMAGE}:1", f"{IMAGE}:1")


def test_the_quality_gate_of_a_model_image_reads_its_own_pod(image_cluster: Cluster):
    c = image_cluster
    with pytest.raises(RolloutError, match=r"accuracy 0.95 -> 0.8"):
        c.canary("3", model_image=f"{IMAGE}:3")
    assert c.stable_version() == "1" and model_image(c)[0] == f"{IMAGE}:1"
    assert c.deployment("demo-mlscale-canary") is None
    unknown = cli(c, "deploy", "--model-image", f"{IMAGE}:9")
    assert unknown.exit_code == 2 and "not in the local container engine" in unknown.output


def test_a_version_on_scikit_learn_is_refused_onto_the_slim_image(
    control_plane: Envtest, crd: None, helm: str, tmp_path: Path, engine: Path
):
    """The slim image serves compiled versions only: `mlscale rollout` reads the model image's
    runtime and refuses one that runs on scikit-learn, before anything changes."""
    model = {"name": "iris", "version": "1", "image": {"repository": IMAGE, "tag": "1"}}
    with start_cluster(control_plane, helm, tmp_path, model, image={"slim": True}) as c:
        refused = cli(c, "deploy", "--model-image", f"{IMAGE}:2", "--timeout", "30")
        assert refused.exit_code == 2, refused.output
        assert "iris/2 runs on scikit-learn" in refused.output
        assert "this release runs the slim image" in refused.output
        assert c.stable_version() == "1" and not c.status().get("history")
        compiled = cli(c, "deploy", "--model-image", f"{IMAGE}-compiled:2", "--timeout", "30")
        assert compiled.exit_code == 0, compiled.output
        assert c.stable_version() == "2" and model_image(c)[0] == f"{IMAGE}-compiled:2"


def test_a_canary_of_a_model_image_is_promoted_with_it(image_cluster: Cluster):
    c = image_cluster
    assert c.canary("2", model_image=f"{IMAGE}:2").outcome == "succeeded"
    created = [m for r, m in c.events() if r == "CanaryCreated"]
    assert created and c.stable_version() == "2"
    assert model_image(c) == (f"{IMAGE}:2", f"{IMAGE}:2")


def test_model_images_need_a_release_installed_with_one(cluster: Cluster):
    with pytest.raises(Refused, match=r"installed without model\.image"):
        cluster.deploy("2", model_image=f"{IMAGE}:2")


# --- through a gateway ----------------------------------------------------------------------
# The Gateway API's CRDs and Traefik's are the real ones (k8s/nodeimage/build.sh control-plane
# gathers them); the gateway's controller is simulated (tests/gateway.py): it programs routes
# as a gateway says it has, and carries no request. test_kind.py runs the real one.

GATEWAY_STEPS = [{"weight": 0, "mirror": 50, "seconds": 1}, {"weight": 5, "seconds": 1},
                 {"weight": 50, "seconds": 1}]  # fmt: skip


@pytest.fixture(scope="module")
def gateway_crds(control_plane: Envtest) -> None:
    crds = subprocess.run([ROOT / "k8s" / "nodeimage" / "build.sh", "--gateway-crds"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not Path(crds).is_file():
        pytest.skip(f"no gateway CRDs at {crds}: run k8s/nodeimage/build.sh control-plane")
    admin = control_plane.plane.admin
    names = []
    for doc in yaml.safe_load_all(Path(crds).read_text()):
        if not doc:
            continue
        names.append(doc["metadata"]["name"])
        if admin.get("customresourcedefinitions", "", names[-1]) is None:
            admin.create(doc)

    def established() -> bool:
        found = [admin.get("customresourcedefinitions", "", n) or {} for n in names]
        conditions = [(f.get("status") or {}).get("conditions") or [] for f in found]
        return all(
            any(c["type"] == "Established" and c["status"] == "True" for c in these)
            for these in conditions
        )

    wait_for(established, 30, "the gateway CRDs to be established")


@contextmanager
def gateway_cluster(envtest: Envtest, helm: str, tmp_path: Path, implementation: str,
                    gateway: bool = True) -> Iterator[tuple[Cluster, Gateway | None]]:  # fmt: skip
    values = {"enabled": True, "parentRefs": [{"name": "shared", "namespace": "gateways"}],
              "implementation": implementation}  # fmt: skip
    with ExitStack() as stack:
        cluster = stack.enter_context(start_cluster(envtest, helm, tmp_path, {"name": "iris",
                                      "version": "1"}, operator=False, gateway=values))  # fmt: skip
        simulated = stack.enter_context(Gateway(cluster.admin, cluster.ns)) if gateway else None
        cluster.start_operator()
        wait_for(lambda: cluster.status().get("phase") == "Healthy", 30, "a Healthy rollout")
        yield cluster, simulated


def shadow_canary(cluster: Cluster, version: str, steps: list[dict] = GATEWAY_STEPS,
                  **analysis: object) -> client.Outcome:  # fmt: skip
    body = client.spec_for(version, timeout=60, strategy={"type": "Canary", "steps": steps})
    body["analysis"] = {"maxErrorRate": 0.05, "maxP99Ms": 100, "minRequests": 20, **analysis}
    return client.roll(cluster.kube(), "demo", body, say=cluster.say, timeout=60)


def default_rule(rules: list[dict]) -> dict:
    return rules[-1]


def test_through_traefik_each_step_is_a_route_and_a_shadow_step_a_mirror(
    control_plane: Envtest, crd: None, gateway_crds: None, helm: str, tmp_path: Path
):
    with gateway_cluster(control_plane, helm, tmp_path, "Traefik") as (cluster, gateway):
        assert gateway is not None
        assert shadow_canary(cluster, "2").outcome == "succeeded"
        seen = gateway.rules
        middleware = {"group": "traefik.io", "kind": "Middleware", "name": "demo-mlscale-resend"}
        retry = [{"type": "ExtensionRef", "extensionRef": middleware}]
        shadow = next(r for r in seen if len(r) == 2 and default_rule(r)["backendRefs"][0]
                      ["kind"] == "TraefikService")  # fmt: skip
        pin, rest = shadow
        assert pin["matches"][0]["headers"] == [
            {"type": "Exact", "name": "x-model-version", "value": "2"}]  # fmt: skip
        assert pin["backendRefs"][0]["name"] == "demo-mlscale-canary"
        assert pin["filters"] == rest["filters"] == retry
        weights = [{b["name"]: b["weight"] for b in default_rule(r)["backendRefs"]} for r in seen]
        assert {"demo-mlscale": 95, "demo-mlscale-canary": 5} in weights
        assert {"demo-mlscale": 50, "demo-mlscale-canary": 50} in weights
        assert weights[-1] == {"demo-mlscale": 100} and len(seen[-1]) == 1  # back to stable
        assert weights.index({"demo-mlscale": 95, "demo-mlscale-canary": 5}) < weights.index(
            {"demo-mlscale": 50, "demo-mlscale-canary": 50})  # fmt: skip
        # The mirror was there when the route first named it, and stays once the route no
        # longer does, mirroring nothing (Traefik may apply it before or after the route).
        assert [b["name"] for b in default_rule(shadow)["backendRefs"]] == ["demo-mlscale-mirror"]
        (mirror,) = gateway.traefik_services[seen.index(shadow)]
        assert mirror["spec"]["mirroring"] == {
            "name": "demo-mlscale", "port": 80,
            "mirrors": [{"name": "demo-mlscale-canary", "port": 80, "percent": 50}]}  # fmt: skip
        assert mirror["metadata"]["ownerReferences"][0]["kind"] == "ModelRollout"
        idle = cluster.admin.get("traefikservices", cluster.ns, "demo-mlscale-mirror")
        assert idle is not None and idle["spec"]["mirroring"]["mirrors"] == []
        made = cluster.admin.get("middlewares", cluster.ns, "demo-mlscale-resend")
        assert made is not None and made["spec"] == {"buffering": {
            "maxRequestBodyBytes": 16777216,  # twice the server's own limit
            "retryExpression": "IsNetworkError() && Attempts() <= 2"}}  # fmt: skip
        assert cluster.deployment("demo-mlscale-canary") is None and cluster.stable_version() == "2"
        passed = [m for r, m in cluster.events() if r == "StepPassed"]
        assert passed[0].startswith("step 0 (shadow 50%)") and "answers drift 0.000" in passed[0]
        assert "step 1 (5%)" in passed[1] and "step 2 (50%)" in passed[2]
        shares = [line for line in cluster.said if "of requests" in line]
        assert any("shadow: 50% of requests copied to the canary" in line for line in shares)
        assert any("5% of requests to the canary; x-model-version: 2 pins a request to it"
                   in line for line in shares), cluster.said  # fmt: skip


def test_a_shadow_step_whose_answers_differ_from_stables_fails_and_users_never_met_it(
    control_plane: Envtest, crd: None, gateway_crds: None, helm: str, tmp_path: Path
):
    with gateway_cluster(control_plane, helm, tmp_path, "Traefik") as (cluster, gateway):
        assert gateway is not None
        cluster.answers["2"] = {"0": 0.9, "1": 0.1}  # stable answers half and half
        with pytest.raises(RolloutError, match=r"answers drift 0\.400 from stable's"):
            shadow_canary(cluster, "2", steps=[*GATEWAY_STEPS[:1], {"weight": 100}])
        assert cluster.stable_version() == "1" and cluster.deployment("demo-mlscale-canary") is None
        analysis = cluster.status()["analysis"]
        assert (analysis["mirror"], analysis["outputDrift"]) == (50, 0.4)
        # No rule ever gave the canary a weight: users met stable only, then the route reset.
        assert all(b["name"] != "demo-mlscale-canary" for r in gateway.rules
                   for b in default_rule(r)["backendRefs"])  # fmt: skip
        (last,) = gateway.rules[-1]
        assert [b["name"] for b in last["backendRefs"]] == ["demo-mlscale"]


def test_a_standard_gateway_is_asked_for_its_own_mirror_filter(
    control_plane: Envtest, crd: None, gateway_crds: None, helm: str, tmp_path: Path
):
    with gateway_cluster(control_plane, helm, tmp_path, "Standard") as (cluster, gateway):
        assert gateway is not None
        steps = [{"weight": 0, "mirror": 20, "seconds": 1}, {"weight": 100, "seconds": 1}]
        assert shadow_canary(cluster, "2", steps=steps).outcome == "succeeded"
        shadow = next(r for r in gateway.rules if "filters" in default_rule(r))
        (mirror,) = default_rule(shadow)["filters"]
        canary = {"group": "", "kind": "Service", "name": "demo-mlscale-canary", "port": 80}
        assert mirror == {"type": "RequestMirror",
                          "requestMirror": {"percent": 20, "backendRef": canary}}  # fmt: skip
        assert cluster.admin.list("traefikservices", cluster.ns) == []  # nothing of Traefik's


def test_a_route_the_gateway_refuses_stops_the_rollout_with_the_condition(
    control_plane: Envtest, crd: None, gateway_crds: None, helm: str, tmp_path: Path
):
    with gateway_cluster(control_plane, helm, tmp_path, "Traefik") as (cluster, gateway):
        assert gateway is not None
        # Programmed now, refused once the controller writes the canary's first step.
        gateway.refuse = ("ResolvedRefs", "BackendNotFound")
        gateway.refuse_from = cluster.admin.get("httproutes", cluster.ns, "demo-mlscale")[
            "metadata"]["generation"] + 1  # fmt: skip
        with pytest.raises(RolloutError, match=r"did not program HTTPRoute demo-mlscale: "
                           r"ResolvedRefs is False \(BackendNotFound"):  # fmt: skip
            shadow_canary(cluster, "2", steps=[{"weight": 5, "seconds": 1}])
        assert cluster.stable_version() == "1" and cluster.deployment("demo-mlscale-canary") is None
        route = cluster.admin.get("httproutes", cluster.ns, "demo-mlscale")
        assert [b["name"] for b in route["spec"]["rules"][-1]["backendRefs"]] == ["demo-mlscale"]


def test_a_route_no_gateway_has_accepted_refuses_the_rollout_before_anything_moves(
    control_plane: Envtest, crd: None, gateway_crds: None, helm: str, tmp_path: Path
):
    with gateway_cluster(control_plane, helm, tmp_path, "Traefik", gateway=False) as (cluster, _):
        with pytest.raises(RolloutError, match="no gateway has taken up HTTPRoute demo-mlscale"):
            shadow_canary(cluster, "2")
        assert cluster.status()["phase"] == "Degraded"
        assert cluster.deployment("demo-mlscale-canary") is None  # not even created


def test_the_cli_refuses_a_shadow_step_without_a_gateway(cluster: Cluster):
    args = ["rollout", "--server", cluster.user_url, "-n", cluster.ns, "-r", "demo", "canary",
            "--version", "2", "--shadow", "50"]  # fmt: skip
    result = CliRunner().invoke(mlscale, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "need the release's traffic to go through a gateway" in said
    assert cluster.rollout()["spec"]["version"] == "1"  # nothing changed
    bad = CliRunner().invoke(mlscale, [*args[:-2], "--steps", "50,10"])
    assert bad.exit_code == 2 and "strictly increasing" in " ".join(bad.output.split())


def test_a_canary_users_meet_through_a_gateway_never_rests_on_one_pod():
    from mlscale.rollout.resource import Step
    from mlscale.rollout.traffic import canary_replicas

    assert canary_replicas(Step(50, 60), 2, gateway=False) == 1  # the replica ratio: its share
    assert canary_replicas(Step(5, 60), 3, gateway=True) == 2  # one pod's death: the other
    assert canary_replicas(Step(5, 60), 1, gateway=True) == 1  # as many as stable has, at most
    assert canary_replicas(Step(50, 60), 10, gateway=True) == 5
    assert canary_replicas(Step(0, 60), 10, gateway=True) == 1  # pinned requests only
    assert canary_replicas(Step(0, 60, mirror=50), 6, gateway=True) == 3  # copies of half


# --- one model of a set ------------------------------------------------------------------------


def linear_version(pod: dict) -> str:
    env = pod["spec"]["containers"][0].get("env", [])
    return parse_models(next((e["value"] for e in env if e["name"] == "MLSCALE_MODELS"), ""))[
        "linear"
    ]


@pytest.fixture
def model_set(control_plane: Envtest, crd: None, helm: str, tmp_path: Path) -> Iterator[Cluster]:
    """A release whose pods serve iris and linear (the chart's model.others). Each pod says
    which linear version it serves and counts linear's requests beside iris', whose error
    rate is `error_rate[iris version]` and linear's `error_rate["linear:" + version]`."""
    model = {"name": "iris", "version": "1", "others": [{"name": "linear", "version": "1"}]}
    with start_cluster(control_plane, helm, tmp_path, model) as c:

        def respond(pod: dict, path: str) -> tuple[int, str] | None:
            version = linear_version(pod)
            if path == "/v2/models/linear":
                return 200, json.dumps({"name": "linear", "parameters": {"version": version}})
            if path == "/mlscale/v1/models/linear/versions":
                versions = [{"version": v, "metrics": m} for v, m in STORE.items()]
                return 200, json.dumps({"name": "linear", "versions": versions})
            answer = c.pod_answers(pod, path)
            if path != "/metrics" or answer is None:
                return answer
            n = c.served[pod["metadata"]["name"]]
            errors = round(n * c.error_rate[f"linear:{version}"])
            labels = f'endpoint="/v2/models/{{name}}/infer",model="linear",version="{version}"'
            return 200, answer[1] + "\n".join([
                f'mlscale_requests_total{{code="200",{labels}}} {n - errors}',
                f'mlscale_requests_total{{code="500",{labels}}} {errors}',
                f'mlscale_request_duration_seconds_bucket{{code="200",{labels},le="0.005"}} {n}',
                f'mlscale_request_duration_seconds_bucket{{code="200",{labels},le="+Inf"}} {n}',
            ]) + "\n"  # fmt: skip

        c.respond = respond
        yield c


def server_env(deployment: dict | None) -> dict[str, str]:
    assert deployment is not None
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", "") for e in env}


def test_one_model_of_a_set_is_rolled_and_the_others_keep_their_versions(model_set: Cluster):
    outcome = model_set.deploy("2", model="linear")
    assert outcome.outcome == "succeeded" and outcome.previous == "1", outcome
    env = server_env(model_set.deployment())
    assert (env["MLSCALE_MODEL_VERSION"], env["MLSCALE_MODELS"]) == ("1", "linear:2")
    pods = model_set.pods()
    assert sorted(map(linear_version, pods)) == ["2", "2", "2"] and model_set.versions() == [
        "1", "1", "1"
    ]  # fmt: skip
    status = model_set.status()
    assert (status["phase"], status["stableVersion"]) == ("Healthy", "2")
    assert status["history"][-1]["model"] == "linear"
    shown = json.loads(CliRunner().invoke(mlscale, [
        "rollout", "--server", model_set.user_url, "-n", model_set.ns, "-r", "demo", "-o", "json",
        "status"]).output)  # fmt: skip
    assert shown["model"] == "linear" and shown["models"] == {"iris": "1", "linear": "2"}
    assert {p["version"] for p in shown["tracks"][0]["pods"]} == {"2"}


def test_a_canary_of_one_model_is_judged_on_that_models_requests_alone(model_set: Cluster):
    model_set.error_rate["1"] = 0.5  # iris fails half its requests, on both tracks
    outcome = model_set.canary("2", model="linear")
    assert outcome.outcome == "succeeded", (outcome, model_set.events())
    env = server_env(model_set.deployment())
    assert (env["MLSCALE_MODEL_VERSION"], env["MLSCALE_MODELS"]) == ("1", "linear:2")
    model_set.error_rate["linear:1"] = 0.3  # back to 1, which now fails
    with pytest.raises(RolloutError, match=r"canary error rate 30\.00% > 5\.00%"):
        model_set.canary("1", model="linear")
    assert server_env(model_set.deployment())["MLSCALE_MODELS"] == "linear:2"
    assert model_set.status()["history"][-1]["model"] == "linear"


def test_a_model_outside_the_set_is_refused_naming_the_set(model_set: Cluster):
    with pytest.raises(Refused, match="serves no model 'wine'; it serves iris, linear"):
        model_set.deploy("2", model="wine")
    assert server_env(model_set.deployment())["MLSCALE_MODELS"] == "linear:1"
