"""The rollout operator against a real kube-apiserver, etcd and kube-controller-manager
(`tests/control_plane.py`), over real HTTP, through the official client, as the service account
of k8s/rollout-rbac.yaml (RBAC on: a call the Role does not allow fails the test). Nodes and pods
are simulated (`tests/kubelet.py`); failures are injected in front of the real server
(`tests/apiproxy.py`). The release is the real chart, rendered by helm and created as is."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlscale.cli import app as mlscale
from mlscale.rollout.canary import CanaryPolicy, run_canary
from mlscale.rollout.deploy import deploy, rollback, set_version
from mlscale.rollout.history import History
from mlscale.rollout.kube import Forbidden, Kube, NotFound, Refused, RolloutError, Target
from mlscale.rollout.release import Release
from mlscale.service.contract import MANIFEST_LABEL, TRACK_LABEL
from mlscale.service.store import Manifest
from tests.apiproxy import FaultProxy
from tests.conftest import ROOT, Envtest
from tests.control_plane import Admin
from tests.kubelet import Tenant
from tests.test_chart import render

# Version 4 was published without holdout data: no offline metrics.
STORE = {"1": {"accuracy": 0.95}, "2": {"accuracy": 0.97}, "3": {"accuracy": 0.80}, "4": {}}
PodAnswer = Callable[[dict, str], tuple[int, str] | None]


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
class Cluster:
    admin: Admin
    faults: FaultProxy
    ns: str
    url: str = ""
    fates: dict[str, str] = field(default_factory=lambda: defaultdict(lambda: "ready"))
    reported: dict[str, str] = field(default_factory=dict)  # version -> what its pods claim
    error_rate: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    slow: set[str] = field(default_factory=set)
    served: Counter[str] = field(default_factory=Counter)  # pod -> requests so far
    said: list[str] = field(default_factory=list)
    respond: PodAnswer | None = None  # how the pods answer HTTP; `pod_answers` unless replaced

    def tenant(self) -> Tenant:
        return Tenant(lambda pod: self.fates[pod_version(pod)],
                      lambda pod, path: (self.respond or self.pod_answers)(pod, path))  # fmt: skip

    def release(self) -> Release:
        return Release(Kube(Target(namespace=self.ns, host=self.url)), "demo")

    def say(self, message: str) -> None:
        self.said.append(message)

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
            return 200, "\n".join(
                [
                    f'mlscale_requests_total{{code="200",{labels}}} {n - errors}',
                    f'mlscale_requests_total{{code="500",{labels}}} {errors}',
                    f'mlscale_request_duration_seconds_bucket{{code="200",{labels},le="{le}"}} {n}',
                    f'mlscale_request_duration_seconds_bucket{{code="200",{labels},le="+Inf"}} {n}',
                ]
            ) + "\n"
        return 404, "{}"


def operator_identity(admin: Admin, ns: str) -> str:
    """The operator's service account, Role and RoleBinding from k8s/rollout-rbac.yaml, in `ns`;
    a token for it."""
    for doc in yaml.safe_load_all((ROOT / "k8s" / "rollout-rbac.yaml").read_text()):
        doc["metadata"]["namespace"] = ns
        for subject in doc.get("subjects", []):
            subject["namespace"] = ns
        admin.create(doc, ns)
    return admin.token(ns, "mlscale-rollout")


@contextmanager
def start_cluster(envtest: Envtest, helm: str, tmp_path: Path, model: dict) -> Iterator[Cluster]:
    """The chart rendered with these model values and created in a namespace of its own, its
    pods run by the simulated nodes; the operator reaches the server through a FaultProxy."""
    plane, admin = envtest.plane, envtest.plane.admin
    ns = plane.namespace()
    docs = render(helm, tmp_path, {"model": model, "progressDeadlineSeconds": 2})
    faults = FaultProxy(plane.url, operator_identity(admin, ns), str(plane.ca))
    c = Cluster(admin, faults, ns)
    envtest.kubelet.tenants[ns] = c.tenant()
    for doc in docs:
        if "helm.sh/hook" in doc["metadata"].get("annotations", {}):
            continue  # helm test's pod: not part of the release
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 3  # what the HPA would have set
        doc["metadata"]["namespace"] = ns
        admin.create(doc, ns)
    try:
        with faults.serve() as url:
            c.url = url
            deadline = time.monotonic() + 30
            while not settled(c.pods(), ["1", "1", "1"]):
                assert time.monotonic() < deadline, "the cluster never settled"
                time.sleep(0.05)
            yield c
        assert all(call[2] == ns for call in faults.calls), "a call outside the release's namespace"
    finally:
        for d in admin.list("deployments", ns):  # the garbage collector takes the rest
            admin.delete("deployments", ns, d["metadata"]["name"])
        envtest.kubelet.tenants.pop(ns, None)


@pytest.fixture
def cluster(control_plane: Envtest, helm: str, tmp_path: Path) -> Iterator[Cluster]:
    with start_cluster(control_plane, helm, tmp_path, {"name": "iris", "version": "1"}) as c:
        yield c


def test_rolling_deploy_moves_every_pod_and_records_history(cluster: Cluster):
    outcome = deploy(cluster.release(), "2", say=cluster.say, timeout=20)
    assert outcome.outcome == "succeeded" and outcome.previous == "1"
    assert cluster.versions() == ["2", "2", "2"]
    d = cluster.deployment()
    assert d is not None
    assert d["spec"]["template"]["metadata"]["annotations"]["mlscale.dev/model-version"] == "2"
    assert d["spec"]["template"]["metadata"]["labels"]["mlscale.dev/model-version"] == "2"
    assert d["metadata"]["generation"] == 2  # one spec change
    (entry,) = History(cluster.release().kube, "demo").read()
    assert (entry.version, entry.previous, entry.outcome) == ("2", "1", "succeeded")
    assert any("successfully rolled out" in line for line in cluster.said)


def test_deploying_the_current_version_changes_nothing(cluster: Cluster):
    assert deploy(cluster.release(), "1", say=cluster.say).outcome == "unchanged"
    verbs = {v for v, _, _ in cluster.faults.calls}
    assert verbs <= {"get", "list", "watch"}, verbs  # the operator wrote nothing at all
    assert cluster.deployment()["metadata"]["generation"] == 1


def test_dry_run_prints_the_patch_and_changes_nothing(cluster: Cluster):
    assert deploy(cluster.release(), "2", say=cluster.say, dry_run=True).outcome == "dry-run"
    assert '"MLSCALE_MODEL_VERSION"' in cluster.said[-1]
    assert cluster.stable_version() == "1"


def test_a_rollout_that_never_becomes_ready_is_rolled_back(cluster: Cluster):
    cluster.fates["2"] = "never"
    with pytest.raises(RolloutError, match=r"exceeded its progress deadline.*rolled back to 1"):
        deploy(cluster.release(), "2", say=cluster.say, timeout=30)
    assert cluster.stable_version() == "1" and cluster.versions() == ["1", "1", "1"]
    (entry,) = History(cluster.release().kube, "demo").read()
    assert entry.outcome == "rolled-back" and "deadline" in entry.detail


def test_crash_looping_pods_are_caught_before_the_deadline(cluster: Cluster):
    cluster.fates["2"] = "crash"
    with pytest.raises(RolloutError, match="crash-looping"):
        deploy(cluster.release(), "2", say=cluster.say, timeout=30)
    assert cluster.stable_version() == "1"


def test_a_pod_reporting_the_wrong_version_is_rolled_back(cluster: Cluster):
    cluster.reported["2"] = "1"  # e.g. an image whose store silently lacks version 2
    with pytest.raises(RolloutError, match="serves version '1', not '2'"):
        deploy(cluster.release(), "2", say=cluster.say, timeout=20)
    assert cluster.stable_version() == "1"


def test_quality_gate_and_unknown_versions_are_refused(cluster: Cluster):
    with pytest.raises(Refused, match=r"accuracy 0.95 -> 0.8 \(15.8% worse\)"):
        deploy(cluster.release(), "3", say=cluster.say)
    with pytest.raises(Refused, match="version 9 is not in the image's model store"):
        deploy(cluster.release(), "9", say=cluster.say)
    with pytest.raises(Refused, match=r"version 4 has no offline metrics.*nothing to compare"):
        deploy(cluster.release(), "4", say=cluster.say)
    assert cluster.stable_version() == "1"
    assert deploy(cluster.release(), "3", say=cluster.say, force=True).outcome == "succeeded"


def test_conflicting_writes_are_retried_on_a_fresh_read(cluster: Cluster):
    cluster.faults.conflicts_to_inject = 2
    assert deploy(cluster.release(), "2", say=cluster.say, timeout=20).outcome == "succeeded"
    assert cluster.faults.conflicts_to_inject == 0
    # Each attempt reads the Deployment afresh before its patch; the proxy records only the
    # calls the server answered, so: three reads, and the one patch that went through.
    calls = [v for v, r, _ in cluster.faults.calls if r == "deployments" and v in ("get", "patch")]
    assert calls == ["get", "get", "get", "patch"], calls


def test_the_watch_resumes_after_410_gone(cluster: Cluster):
    kube = cluster.release().kube
    stream = kube.watch_deployment("demo-mlscale", timeout=6)
    assert next(stream).metadata.name == "demo-mlscale"  # the list
    cluster.faults.expire()  # compaction: the list's resourceVersion is now too old
    again = next(stream)
    assert again is not None and again.metadata.name == "demo-mlscale"  # listed again
    lists = [c for c in cluster.faults.calls if c[:2] == ("list", "deployments")]
    watches = [c for c in cluster.faults.calls if c[:2] == ("watch", "deployments")]
    assert len(lists) == 2 and not watches  # the expired watch was answered by the proxy


def test_the_watch_survives_a_dropped_connection(cluster: Cluster):
    # New pods stay unready until a watch stream has been cut, so the rollout can only be
    # seen to finish by a watch that recovered from the drop.
    cluster.fates["2"] = "never"
    cluster.faults.watches_to_drop = 1

    def release_pods_after_the_drop() -> None:
        deadline = time.monotonic() + 10
        while cluster.faults.watches_to_drop and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.fates["2"] = "ready"

    helper = threading.Thread(target=release_pods_after_the_drop)
    helper.start()
    assert deploy(cluster.release(), "2", say=cluster.say, timeout=20).outcome == "succeeded"
    helper.join()
    assert cluster.faults.watches_to_drop == 0
    assert cluster.versions() == ["2", "2", "2"]


def test_a_half_open_watch_is_given_up_and_the_rollout_followed_to_its_end(cluster: Cluster):
    """The watch's connection stays up and nothing arrives: past its window plus the call
    timeout it is taken for dead, and the operator lists again instead of waiting forever."""
    cluster.faults.watches_to_stall = 1
    release = Release(Kube(Target(namespace=cluster.ns, host=cluster.url, timeout=1)), "demo")
    started = time.monotonic()
    assert deploy(release, "2", say=cluster.say, timeout=20).outcome == "succeeded"
    assert cluster.faults.watches_to_stall == 0
    assert time.monotonic() - started < 15  # well inside the deadline: the window (5 s) + 1 s


@pytest.mark.parametrize("fault", [429, 503, None], ids=["429", "503", "reset"])
def test_api_failures_after_the_patch_roll_back_and_are_recorded(cluster: Cluster, fault):
    """The server throttles, fails or drops the connection once the version is patched: the
    rollout cannot be confirmed, so it is rolled back, and the history says so."""

    def say(message: str) -> None:
        cluster.say(message)
        if "version 1 -> 2" in message:  # said just before the patch
            # Enough times that the client's own retries of a reset connection run out.
            cluster.faults.fail(fault, f"/namespaces/{cluster.ns}/pods?", 4 if fault is None else 1)

    with pytest.raises(RolloutError, match=r"could not confirm the rollout.*rolled back to 1"):
        deploy(cluster.release(), "2", say=say, timeout=20)
    assert cluster.stable_version() == "1"
    (entry,) = History(cluster.release().kube, "demo").read()
    assert entry.outcome == "rolled-back" and entry.version == "2"


def test_a_rollback_the_api_keeps_failing_is_still_recorded(cluster: Cluster):
    """The server fails every pod list from the patch on: the rollout cannot be confirmed,
    nor can its rollback; the version goes back all the same, and the history says so."""

    def say(message: str) -> None:
        cluster.say(message)
        if "version 1 -> 2" in message:
            cluster.faults.fail(503, f"/namespaces/{cluster.ns}/pods?", times=100)

    with pytest.raises(RolloutError, match=r"rolled back to 1, which did not finish: could not"):
        deploy(cluster.release(), "2", say=say, timeout=20)
    assert cluster.stable_version() == "1"
    (entry,) = History(cluster.release().kube, "demo").read()
    assert entry.outcome == "rolled-back" and "could not be confirmed" in entry.detail


def test_ctrl_c_during_a_canary_removes_it_and_says_how_to_go_on(cluster: Cluster):
    # Started as from a terminal, where Ctrl-C reaches it: a test session run as a background
    # job ignores SIGINT, and its children would inherit that.
    as_from_a_terminal = ("import runpy, signal; signal.signal(signal.SIGINT, "
                          "signal.default_int_handler); runpy.run_module('mlscale.rollout', "
                          "run_name='__main__', alter_sys=True)")  # fmt: skip
    cmd = [sys.executable, "-c", as_from_a_terminal, "--server", cluster.url, "-n", cluster.ns,
           "-r", "demo", "canary", "--version", "2", "--steps", "34,100",
           "--interval", "30"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # fmt: skip
    deadline = time.monotonic() + 20
    while not any(canary_pod(p) and ready(p) for p in cluster.pods()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.05)
    # Inside the step's traffic window once the operator has taken its first scrape of the canary.
    while not any("canary" in pod for pod in cluster.served):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler: where every thread is stuck
        pytest.fail(f"the operator did not stop on Ctrl-C:\n{proc.communicate(timeout=10)[1]}")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "mlscale rollout status" in err
    assert cluster.deployment("demo-mlscale-canary") is None
    assert cluster.stable_version() == "1"


def test_rollback_returns_to_the_previous_version(cluster: Cluster):
    deploy(cluster.release(), "2", say=cluster.say, timeout=20)
    assert rollback(cluster.release(), None, say=cluster.say, timeout=20).version == "1"
    assert cluster.versions() == ["1", "1", "1"]
    entries = History(cluster.release().kube, "demo").read()
    assert [(e.version, e.strategy) for e in entries] == [("2", "rolling"), ("1", "rollback")]


FAST = CanaryPolicy(
    steps=(34, 100), interval=0.3, max_error_rate=0.05, max_p99_ms=100, min_requests=20, timeout=20
)


def test_a_healthy_canary_is_promoted(cluster: Cluster):
    outcome = run_canary(cluster.release(), "2", FAST, say=cluster.say)
    assert outcome.outcome == "succeeded" and cluster.stable_version() == "2"
    assert cluster.deployment("demo-mlscale-canary") is None
    deadline = time.monotonic() + 5
    while cluster.versions() != ["2", "2", "2"]:  # the canary's pods are collected
        assert time.monotonic() < deadline, cluster.versions()
        time.sleep(0.02)
    steps = [line for line in cluster.said if line.startswith("step") and "->" in line]
    assert len(steps) == 2 and all(line.endswith("pass") for line in steps)
    assert History(cluster.release().kube, "demo").read()[-1].strategy == "canary"


def test_a_failing_canary_is_aborted_and_stable_is_untouched(cluster: Cluster):
    cluster.error_rate["2"] = 0.3
    with pytest.raises(RolloutError, match=r"canary error rate 30\.00% > 5\.00%"):
        run_canary(cluster.release(), "2", FAST, say=cluster.say)
    assert cluster.stable_version() == "1"
    assert cluster.deployment("demo-mlscale-canary") is None
    deadline = time.monotonic() + 5
    while cluster.versions() != ["1", "1", "1"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (entry,) = History(cluster.release().kube, "demo").read()
    assert entry.outcome == "aborted"


def test_a_slow_canary_is_aborted(cluster: Cluster):
    cluster.slow.add("2")
    with pytest.raises(RolloutError, match="p99"):
        run_canary(cluster.release(), "2", FAST, say=cluster.say)
    assert cluster.stable_version() == "1"


def test_cli_status_history_and_exit_codes(cluster: Cluster):
    runner = CliRunner()
    base = ["rollout", "--server", cluster.url, "-n", cluster.ns, "-r", "demo", "-o", "json"]
    result = runner.invoke(mlscale, [*base, "deploy", "--version", "2", "--timeout", "20"])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(mlscale, [*base, "status"]).stdout)
    (stable,) = status["tracks"]
    assert stable["version"] == "2" and stable["ready"] == 3 and stable["desired"] == 3
    assert {p["node"] for p in stable["pods"]} <= {"worker-1", "worker-2", "worker-3"}
    assert status["hpa"]["current"] == 3
    history = json.loads(runner.invoke(mlscale, [*base, "history"]).stdout)
    assert [e["version"] for e in history] == ["2"]
    refused = runner.invoke(mlscale, [*base, "deploy", "--version", "3"])
    assert refused.exit_code == 2 and "quality gate" in refused.stdout
    cluster.fates["1"] = "never"
    failed = runner.invoke(mlscale, [*base, "deploy", "--version", "1", "--force"])
    assert failed.exit_code == 1 and "rolled back to 2" in failed.stdout


def test_concurrent_deploys_of_different_versions_do_not_both_succeed(
    cluster: Cluster, monkeypatch
):
    """Both decide from the same read (version 1 live); the second to write must not go on."""
    decided = threading.Barrier(2, timeout=10)
    stable = Release.stable
    seen: set[int] = set()

    def stable_then_wait(self: Release):  # the decision read, then both have read
        found = stable(self)
        if threading.get_ident() not in seen:
            seen.add(threading.get_ident())
            decided.wait()
        return found

    monkeypatch.setattr(Release, "stable", stable_then_wait)
    results: dict[str, object] = {}

    def go(version: str) -> None:
        try:
            results[version] = deploy(cluster.release(), version, say=lambda _: None,
                                      timeout=20, force=True).outcome  # fmt: skip
        except RolloutError as exc:
            results[version] = exc

    threads = [threading.Thread(target=go, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, r in results.items() if r == "succeeded"]
    assert len(winners) == 1, results
    (loser,) = {"2", "3"} - set(winners)
    assert isinstance(results[loser], Refused) and "changed" in str(results[loser])
    assert cluster.stable_version() == winners[0]


def test_a_failed_promotion_removes_the_canary_and_says_so(cluster: Cluster, monkeypatch):
    def promotion_fails(*args, **kwargs):
        raise RolloutError("rollout of version 2 failed (injected); rolled back to 1")

    monkeypatch.setattr("mlscale.rollout.canary.deploy", promotion_fails)
    with pytest.raises(RolloutError, match="passed its analysis, but promoting it failed"):
        run_canary(cluster.release(), "2", FAST, say=cluster.say)
    assert cluster.deployment("demo-mlscale-canary") is None
    assert cluster.stable_version() == "1"
    assert cluster.release().canary() is None  # the next canary is not blocked


def test_canary_steps_follow_the_live_stable_replica_count(cluster: Cluster):
    """The HPA moves the stable Deployment during the analysis: each step reads it again."""
    release = cluster.release()

    def say(message: str) -> None:
        cluster.say(message)
        if message.startswith("step 34%:") and "->" in message:  # the HPA scales out
            release.kube.apps.patch_namespaced_deployment(
                "demo-mlscale", cluster.ns, {"spec": {"replicas": 6}}
            )

    run_canary(release, "2", FAST, say=say)
    step = next(line for line in cluster.said if line.startswith("step 100%:"))
    assert step.startswith("step 100%: 6 canary replica(s), ~50% of traffic"), step


def test_restarts_before_the_rollout_do_not_fail_its_rollback(cluster: Cluster):
    """Old, healthy pods that restarted long ago are not crash-looping now."""
    for pod in cluster.pods():
        status = pod["status"]
        status["containerStatuses"][0]["restartCount"] = 7  # e.g. a node reboot last week
        cluster.admin.patch("pods", cluster.ns, pod["metadata"]["name"], {"status": status},
                            sub="status")  # fmt: skip
    cluster.fates["2"] = "never"
    with pytest.raises(RolloutError) as failed:
        deploy(cluster.release(), "2", say=cluster.say, timeout=20)
    assert "rolled back to 1" in str(failed.value)
    assert "did not finish" not in str(failed.value), failed.value
    assert cluster.stable_version() == "1"


def test_a_pod_proxy_failure_after_the_patch_still_rolls_back_and_records(cluster: Cluster):
    """Once the version is patched, failing to confirm it is a failed rollout, not a crash."""
    answers = cluster.pod_answers

    def broken(pod: dict, path: str) -> tuple[int, str] | None:
        if pod_version(pod) == "2" and path == "/v2/models/iris":
            return 503, "{}"  # runs but does not listen yet, or the proxy fails
        return answers(pod, path)

    cluster.respond = broken
    with pytest.raises(RolloutError, match="rolled back to 1"):
        deploy(cluster.release(), "2", say=cluster.say, timeout=20)
    assert cluster.stable_version() == "1"
    (entry,) = History(cluster.release().kube, "demo").read()
    assert entry.outcome == "rolled-back" and entry.version == "2"


def test_a_hung_pod_proxy_call_times_out_and_the_rollout_rolls_back(cluster: Cluster):
    answers = cluster.pod_answers
    hung = threading.Event()

    def hangs(pod: dict, path: str) -> tuple[int, str] | None:
        if pod_version(pod) == "2" and path == "/v2/models/iris":
            hung.wait(10)  # a pod that accepted the connection and never answers
        return answers(pod, path)

    cluster.respond = hangs
    release = Release(Kube(Target(namespace=cluster.ns, host=cluster.url, timeout=1)), "demo")
    started = time.monotonic()
    try:
        with pytest.raises(RolloutError, match=r"could not confirm the rollout.*rolled back to 1"):
            deploy(release, "2", say=cluster.say, timeout=20)
    finally:
        hung.set()
    assert time.monotonic() - started < 9  # well before the hung call would have returned
    assert cluster.stable_version() == "1"


def test_api_errors_are_typed_and_only_conflicts_are_retried(cluster: Cluster):
    kube = cluster.release().kube
    with pytest.raises(NotFound, match="404"):
        kube.call(kube.apps.read_namespaced_deployment, "nope", cluster.ns)
    attempts = []

    def missing() -> None:
        attempts.append(1)
        kube.call(kube.apps.read_namespaced_deployment, "nope", cluster.ns)

    with pytest.raises(NotFound):
        kube.retry_on_conflict(missing)
    assert len(attempts) == 1  # a missing object does not appear by retrying
    with pytest.raises(NotFound, match="deployment nope"):
        set_version(cluster.release(), "nope", "2", expected="1")


def test_rbac_holds_the_operator_to_its_role(cluster: Cluster):
    """The API server checks every call against k8s/rollout-rbac.yaml: outside it, 403."""
    kube = cluster.release().kube
    pod = cluster.pods()[0]["metadata"]["name"]
    with pytest.raises(Forbidden, match="403"):
        kube.call(kube.core.delete_namespaced_pod, pod, cluster.ns)
    with pytest.raises(Forbidden, match="403"):
        kube.call(kube.apps.list_namespaced_deployment, "default")
    assert len(cluster.pods()) == 3
    assert cluster.faults.refused == [("delete", "pods", cluster.ns),
                                      ("list", "deployments", "default")]  # fmt: skip


def test_the_cli_says_what_went_wrong_and_exits_3_on_api_errors(cluster: Cluster):
    cluster.admin.delete("deployments", cluster.ns, "demo-mlscale")
    runner = CliRunner()
    base = ["rollout", "--server", cluster.url, "-n", cluster.ns, "-r", "demo"]
    result = runner.invoke(mlscale, [*base, "deploy", "--version", "2", "--force"])
    said = " ".join(result.output.split())  # as one line: the console wraps at its width
    assert result.exit_code == 2 and "not found" in said  # refused: no release
    unreachable = ["rollout", "--server", "http://127.0.0.1:9", "-n", cluster.ns, "-r", "demo"]
    result = runner.invoke(mlscale, [*unreachable, "status"])
    said = " ".join(result.output.split())
    assert result.exit_code == 3 and "cannot reach the API server" in said, said
    assert result.exception is None or isinstance(result.exception, SystemExit)


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
    """The HPA scales stable pods away while the canary is judged: one that no longer answers
    its scrape is left out of the sample, not taken for a failed analysis."""
    gone = sorted(p["metadata"]["name"] for p in cluster.pods())[0]
    answer_metrics(cluster, lambda pod: pod["metadata"]["name"] == gone, lambda n: (503, "{}"))
    assert run_canary(cluster.release(), "2", FAST, say=cluster.say).outcome == "succeeded"


def test_a_canary_short_of_requests_is_judged_over_a_longer_window(cluster: Cluster):
    """Few long-lived client connections can miss a new canary pod for a while: too few
    requests is a reason to look longer, not to abort a healthy canary."""
    # The first two scrapes of each canary pod find no requests served.
    answer_metrics(cluster, canary_pod, lambda n: (200, "") if n <= 2 else None)
    assert run_canary(cluster.release(), "2", FAST, say=cluster.say).outcome == "succeeded"
    step = [line for line in cluster.said if line.startswith("step 34%: canary")]
    assert len(step) == 2, cluster.said
    assert step[0].startswith("step 34%: canary 0 req in ") and "fewer than 20: judging" in step[0]
    assert step[1].endswith("pass"), step


def test_a_canary_that_never_gets_traffic_fails_after_its_longest_window(cluster: Cluster):
    answer_metrics(cluster, canary_pod, lambda n: (200, ""))
    with pytest.raises(RolloutError, match="canary saw 0 requests, fewer than 20; stable still"):
        run_canary(cluster.release(), "2", FAST, say=cluster.say)
    judged = [line for line in cluster.said if line.startswith("step 34%: canary")]
    assert len(judged) == FAST.max_intervals and "FAIL" in judged[-1], cluster.said
    assert cluster.stable_version() == "1" and cluster.deployment("demo-mlscale-canary") is None


def test_a_canary_whose_metrics_cannot_be_read_is_not_taken_for_one_without_traffic(
    cluster: Cluster,
):
    """Unread is not zero: the message says the canary's counters could not be read."""
    answer_metrics(cluster, canary_pod, lambda n: (503, "{}"))
    with pytest.raises(RolloutError, match=r"fewer than 20 \(2 of 2 pods unreadable\)"):
        run_canary(cluster.release(), "2", FAST, say=cluster.say)
    assert cluster.stable_version() == "1"


# --- model images -------------------------------------------------------------------------

IMAGE = "mlscale-model/iris"


def image_labels(name: str, version: str, metrics: dict[str, float]) -> str:
    manifest = Manifest(
        name=name, version=version, sha256="0" * 64, sklearn_version="1", numpy_version="1",
        python_version="3", estimator="Pipeline", inputs=[], outputs=[], metrics=metrics,
        created=datetime.now(UTC),
    )  # fmt: skip
    return json.dumps({MANIFEST_LABEL: manifest.model_dump_json()})


@pytest.fixture
def engine(tmp_path: Path, monkeypatch) -> Path:
    """A container engine CLI that knows a few model images: `image inspect` answers their
    labels as Docker does, and fails for any other image."""
    images = {
        f"{IMAGE}:1": image_labels("iris", "1", STORE["1"]),
        f"{IMAGE}:2": image_labels("iris", "2", STORE["2"]),
        f"{IMAGE}:3": image_labels("iris", "3", STORE["3"]),
        "mlscale-model/other:2": image_labels("other", "2", {}),
    }
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
def image_cluster(control_plane: Envtest, helm: str, tmp_path: Path, engine: Path
                  ) -> Iterator[Cluster]:  # fmt: skip
    model = {"name": "iris", "version": "1", "image": {"repository": IMAGE, "tag": "1"}}
    with start_cluster(control_plane, helm, tmp_path, model) as c:
        yield c


def model_image(cluster: Cluster, deployment: str = "demo-mlscale") -> tuple[str, str]:
    d = cluster.deployment(deployment)
    assert d is not None
    (init,) = d["spec"]["template"]["spec"]["initContainers"]
    return init["image"], d["metadata"]["annotations"]["mlscale.dev/model-image"]


def test_a_model_image_moves_with_its_version_and_back(image_cluster: Cluster):
    c = image_cluster
    outcome = deploy(c.release(), None, model_image=f"{IMAGE}:2", say=c.say, timeout=20)
    assert (outcome.outcome, outcome.version) == ("succeeded", "2")
    assert c.stable_version() == "2" and model_image(c) == (f"{IMAGE}:2", f"{IMAGE}:2")
    (entry,) = History(c.release().kube, "demo").read()
    assert (entry.image, entry.previous_image) == (f"{IMAGE}:2", f"{IMAGE}:1")
    base = ["rollout", "--server", c.url, "-n", c.ns, "-r", "demo"]
    status = json.loads(CliRunner().invoke(mlscale, [*base, "-o", "json", "status"]).stdout)
    assert [(t["version"], t["model_image"]) for t in status["tracks"]] == [("2", f"{IMAGE}:2")]
    rollback(c.release(), None, say=c.say, timeout=20)
    assert c.stable_version() == "1" and model_image(c) == (f"{IMAGE}:1", f"{IMAGE}:1")


def test_a_failed_model_image_rollout_restores_the_old_image(image_cluster: Cluster):
    c = image_cluster
    c.fates["2"] = "never"
    with pytest.raises(RolloutError, match="rolled back to 1"):
        deploy(c.release(), "2", model_image=f"{IMAGE}:2", say=c.say, timeout=30)
    assert c.stable_version() == "1" and model_image(c) == (f"{IMAGE}:1", f"{IMAGE}:1")


def test_the_quality_gate_reads_the_model_image(image_cluster: Cluster):
    c = image_cluster
    with pytest.raises(Refused, match=r"accuracy 0.95 -> 0.8"):
        deploy(c.release(), None, model_image=f"{IMAGE}:3", say=c.say)
    with pytest.raises(Refused, match="holds model 'other'; this release serves 'iris'"):
        deploy(c.release(), None, model_image="mlscale-model/other:2", say=c.say)
    with pytest.raises(Refused, match="holds version 2, not 3"):
        deploy(c.release(), "3", model_image=f"{IMAGE}:2", say=c.say)
    with pytest.raises(Refused, match="not in the local container engine"):
        deploy(c.release(), None, model_image=f"{IMAGE}:9", say=c.say)
    assert c.stable_version() == "1" and model_image(c)[0] == f"{IMAGE}:1"
    assert not History(c.release().kube, "demo").read()


def test_a_canary_of_a_model_image_is_promoted_with_it(image_cluster: Cluster):
    c = image_cluster
    seen: list[tuple[str, str]] = []

    def say(message: str) -> None:
        if message.startswith("step 34%") and "canary" in message and "->" not in message:
            seen.append(model_image(c, "demo-mlscale-canary"))

    outcome = run_canary(c.release(), None, FAST, say=say, model_image=f"{IMAGE}:2")
    assert outcome.outcome == "succeeded" and c.stable_version() == "2"
    assert seen == [(f"{IMAGE}:2", f"{IMAGE}:2")]  # the canary ran the new image
    assert model_image(c) == (f"{IMAGE}:2", f"{IMAGE}:2")


def test_model_images_need_a_release_installed_with_one(cluster: Cluster, engine: Path):
    with pytest.raises(Refused, match=r"installed without model\.image"):
        deploy(cluster.release(), None, model_image=f"{IMAGE}:2", say=cluster.say)
