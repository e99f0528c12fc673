"""A canary, one look at a time: a second Deployment of the new version beside stable, given
traffic in steps (by the gateway's route, per request, or by replica ratio behind the one
Service, per connection: traffic.py), each step judged from the servers' own metrics (read from
Prometheus where the release names one: prometheus.py; else each pod's /metrics); after the
last step stable moves to the new version (a rolling update, see rolling.py).

Where a step stands lives in status.rollout (step, when its window began, how many intervals it
has taken); only the scrape that opened the window is kept in memory. A controller that
restarts mid-window has lost it, and judges the step again from a new window."""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client import V1Deployment

from mlscale.rollout import rolling
from mlscale.rollout.analysis import Snapshot, judge
from mlscale.rollout.gate import check_candidate
from mlscale.rollout.kube import NotFound, Unavailable
from mlscale.rollout.progress import (
    Done,
    Failed,
    Outcome,
    State,
    Wait,
    failing_pods,
    rollout_progress,
)
from mlscale.rollout.prometheus import Prometheus, PrometheusError
from mlscale.rollout.release import (
    TRACK,
    Release,
    canary_name,
    name_of,
    pod_ready,
    version_patch,
)
from mlscale.rollout.release import strategic_merge as merge
from mlscale.rollout.resource import Spec, Step, now_iso, seconds_since
from mlscale.rollout.traffic import Route, Split, canary_replicas, replica_ratio

TRACKS = ("canary", "stable")
PAUSED_LOOK = 5.0  # seconds between looks at a paused canary
Windows = dict[str, dict[str, "Scrape"]]  # the scrapes that opened each step's window
Say = Callable[[str, str], None]  # an event: reason, message


def canary_body(
    stable: V1Deployment, name: str, version: str, replicas: int, model: str = "",
    model_image: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The stable Deployment, renamed, relabelled track=canary and moved to `version` of
    `model` (and the model image holding it); the set's other models as stable serves them."""
    body = client.ApiClient().sanitize_for_serialization(stable)
    body.pop("status", None)
    meta = body["metadata"]
    body["metadata"] = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {**meta.get("labels", {}), TRACK: "canary"},
        "annotations": {"mlscale.dev/canary-of": meta["name"]},
    }
    spec = body["spec"]
    spec["replicas"] = replicas
    spec["selector"]["matchLabels"][TRACK] = "canary"
    spec["template"]["metadata"]["labels"][TRACK] = "canary"
    patch = version_patch(stable, version, model, model_image)
    body["metadata"]["annotations"].update(patch["metadata"]["annotations"])
    body["spec"] = merge(spec, patch["spec"])
    return body


@dataclass
class Scrape:
    """One read of every Ready pod of a track: each pod's counters, and the pods that did not
    answer (their counters are unknown, not zero)."""

    pods: dict[str, Snapshot] = field(default_factory=dict)
    unread: set[str] = field(default_factory=set)

    def note(self) -> str:
        """What a reader of the numbers should know about pods left out."""
        if not self.unread:
            return ""
        return f" ({len(self.unread)} of {len(self.unread) + len(self.pods)} pods unreadable)"

    def start_late(self, later: "Scrape") -> None:
        """Pods unread here but read `later` count from that later read on."""
        for pod in self.unread & later.pods.keys():
            self.pods[pod] = later.pods[pod]
        self.unread -= later.pods.keys()


def scrape(release: Release, track: str, model: str = "") -> Scrape:
    """Every serving pod's counters. Pods that are not Ready take no traffic and may not listen
    yet (the HPA keeps adding and removing stable pods); one that does not answer (scaled away
    between the listing and its scrape, or a pod-proxy error) is recorded as unread. Only
    `model`'s series count ("": every model's)."""
    result = Scrape()
    for pod in release.pods(track):
        if not pod_ready(pod):
            continue
        try:
            text = release.proxy_get(name_of(pod), "/metrics")
        except (NotFound, Unavailable):
            result.unread.add(name_of(pod))
            continue
        snapshot = Snapshot()
        snapshot.add_scrape(text, model)
        result.pods[name_of(pod)] = snapshot
    return result


def listing(release: Release, track: str, model: str = "") -> Scrape:
    """The Ready pods of a track, without reading them: where Prometheus holds their counts.
    `scrape`'s signature, as either one looks at a window; the PromQL filters by `model`."""
    return Scrape(pods={name_of(p): Snapshot() for p in release.pods(track) if pod_ready(p)})


def traffic(before: Scrape, after: Scrape) -> Snapshot:
    """What the pods of a track served between two scrapes. A pod new since the first counts
    from zero; one that did not answer the first is left out, as its starting count is unknown."""
    total = Snapshot()
    for pod, now in after.pods.items():
        if pod not in before.unread:
            total += now - before.pods.get(pod, Snapshot())
    return total


def advance(
    release: Release,
    stable: V1Deployment,
    status: dict[str, Any],
    spec: Spec,
    windows: Windows,
    say: Say,
    route: Route | None,
    promote: bool = False,
) -> Outcome:
    """One step of the canary in status.rollout: create or scale it, wait for its pods, send
    it the step's traffic (`route`: through the gateway; None: by replica ratio), judge its
    window; after the last step (or `promote`), promote it."""
    run = status["rollout"]
    if run.get("promoting"):
        outcome = rolling.advance(release, stable, run, spec.timeout, spec.max_regression)
        if isinstance(outcome, Done) and route is not None:
            # Stable serves the new version: every request goes to it before the canary goes.
            return _through(route, Split(), run, outcome)
        return outcome
    target, image = run["version"], run.get("image") or None
    i = min(run.get("step", 0), len(spec.steps) - 1)
    step = spec.steps[i]
    status.update(currentStep=i, currentWeight=step.weight, currentMirror=step.mirror)
    replicas = canary_replicas(step, stable.spec.replicas or 1, route is not None)
    canary, name = release.canary(), canary_name(stable)
    if canary is None:
        if route is not None:
            route.prepare()
        body = canary_body(stable, name, target, replicas, release.model, image)
        release.kube.call(release.kube.apps.create_namespaced_deployment, release.namespace, body)
        say(
            "CanaryCreated",
            f"canary {name}: version {target} beside stable {run['previousVersion']}",
        )
        return Wait(rolling.LOOK_AGAIN, f"step {i} ({label(step)}): starting {name}")
    if canary.spec.replicas != replicas:  # a new step, or the HPA moved stable
        release.kube.call(
            release.kube.apps.patch_namespaced_deployment,
            name,
            release.namespace,
            {"spec": {"replicas": replicas}},
        )
        return Wait(rolling.LOOK_AGAIN, f"step {i} ({label(step)}): {replicas} canary pods")
    if failure := failing_pods(release.pods("canary")):
        return Failed(failure)
    progress = rollout_progress(canary)
    if progress.state is State.FAILED:
        return Failed(f"{name} {progress.message}")
    if progress.state is State.WAITING:
        if seconds_since(run.get("waitingSince") or run["startedAt"]) > spec.timeout:
            return Failed(f"{name} not ready within {spec.timeout} s ({progress.message})")
        return Wait(rolling.LOOK_AGAIN, f"step {i} ({label(step)}): {name} {progress.message}")
    if wrong := release.wrong_version(target, "canary"):
        return Failed(wrong)
    if not check_candidate(release, run, spec.max_regression, "canary"):
        return Wait(rolling.LOOK_AGAIN)
    if route is None:
        status["trafficSplit"] = replica_ratio(release)
    else:
        split = Split(target, step.weight, step.mirror)
        on_route = route.settle(split, run)
        if on_route.state is State.FAILED:
            return Failed(on_route.message)
        if on_route.state is State.WAITING:
            return Wait(rolling.LOOK_AGAIN, f"step {i} ({label(step)}): {on_route.message}")
        status["trafficSplit"] = route.describe(split)
    if promote:
        return start_promotion(run, say, f"promoted by request at step {i}: skipping the rest")
    if spec.paused:
        run["stepStartedAt"] = None  # judged afresh once resumed
        return Wait(PAUSED_LOOK, f"paused at step {i} ({label(step)}, {status['trafficSplit']})",
                    paused=True)  # fmt: skip
    return judge_step(release, status, spec, windows, say, i)


def label(step: Step) -> str:
    """A step as people say it: its weight, or the share it mirrors."""
    return f"shadow {step.mirror}%" if step.mirror else f"{step.weight}%"


def _through(route: Route, split: Split, run: dict[str, Any], then: Outcome) -> Outcome:
    """`then`, once the route does `split`."""
    on_route = route.settle(split, run)
    if on_route.state is State.FAILED:
        return Failed(on_route.message)
    if on_route.state is State.WAITING:
        return Wait(rolling.LOOK_AGAIN, on_route.message)
    return then


def start_promotion(run: dict[str, Any], say: Say, why: str) -> Wait:
    run.update(promoting=True, waitingSince=now_iso(), stepStartedAt=None)
    say("Promoting", f"{why}; stable {run['previousVersion']} -> {run['version']}")
    return Wait(0, f"promoting: stable {run['previousVersion']} -> {run['version']}")


def judge_step(
    release: Release, status: dict[str, Any], spec: Spec, windows: Windows, say: Say, i: int
) -> Outcome:
    """Open the step's window, or judge it once its seconds have passed."""
    run, step = status["rollout"], spec.steps[i]
    name = f"step {i} ({label(step)})"
    key = f"{i}@{run.get('stepStartedAt')}"
    look = listing if spec.prometheus_url else scrape
    model = release.model_name()  # pods may serve others beside it: judged on its requests

    def open_window() -> None:
        run.update(stepStartedAt=now_iso(), intervals=1)
        windows.clear()
        windows[f"{i}@{run['stepStartedAt']}"] = {t: look(release, t, model) for t in TRACKS}

    if key not in windows:  # a new step, or a controller that restarted mid-window
        open_window()
        return Wait(step.seconds, f"{name}: judging {step.seconds} s of traffic; "
                    f"{status.get('trafficSplit')}")  # fmt: skip
    elapsed = seconds_since(run["stepStartedAt"])
    due = step.seconds * run.get("intervals", 1)
    if elapsed < due:
        return Wait(due - elapsed)
    before, after = windows[key], {t: look(release, t, model) for t in TRACKS}
    if spec.prometheus_url:
        read = from_prometheus(release, spec.prometheus_url, before, after, elapsed, model)
        if isinstance(read, str):  # never judged on part of the traffic: a window anew
            open_window()
            return Wait(step.seconds, f"{name}: not judged: {read}; judging a new window of "
                        f"{step.seconds} s")  # fmt: skip
        canary_t, stable_t = read
    else:
        canary_t, stable_t = (traffic(before[t], after[t]) for t in TRACKS)
    verdict = judge(
        canary_t,
        stable_t,
        max_error_rate=spec.max_error_rate,
        max_p99_ms=spec.max_p99_ms,
        max_p99_ratio=spec.max_p99_ratio,
        p99_slack_ms=spec.p99_slack_ms,
        min_requests=spec.min_requests,
        max_output_drift=spec.max_output_drift,
        drift_required=step.mirror > 0,  # a shadow step exists to compare the answers
    )
    drift = "not compared" if verdict.drift is None else f"{verdict.drift:.3f}"
    figures = (
        f"canary {canary_t.requests:.0f} req{after['canary'].note()} in {elapsed:.0f} s, "
        f"errors {canary_t.error_rate:.2%}, p99 {canary_t.quantile(0.99) * 1000:.1f} ms"
        f" | stable {stable_t.requests:.0f} req{after['stable'].note()}, "
        f"errors {stable_t.error_rate:.2%}, p99 {stable_t.quantile(0.99) * 1000:.1f} ms"
        f" | answers drift {drift}"
    )
    if verdict.inconclusive and run.get("intervals", 1) < spec.max_intervals:
        for t in TRACKS:
            before[t].start_late(after[t])
        run["intervals"] = run.get("intervals", 1) + 1
        return Wait(
            step.seconds,
            f"{name}: canary {canary_t.requests:.0f} req{after['canary'].note()} in "
            f"{elapsed:.0f} s; {'; '.join(verdict.reasons)}: judging {step.seconds} s more",
        )
    windows.clear()
    status["analysis"] = {
        "step": i,
        "weight": step.weight,
        "mirror": step.mirror,
        "seconds": round(elapsed, 1),
        "canaryRequests": canary_t.requests,
        "canaryErrorRate": canary_t.error_rate,
        "canaryP99Ms": nan_to_none(canary_t.quantile(0.99) * 1000),
        "stableRequests": stable_t.requests,
        "stableErrorRate": stable_t.error_rate,
        "stableP99Ms": nan_to_none(stable_t.quantile(0.99) * 1000),
        "outputDrift": None if verdict.drift is None else round(verdict.drift, 4),
        "canaryAnswers": canary_t.answers(),
        "stableAnswers": stable_t.answers(),
        "unreadablePods": len(after["canary"].unread) + len(after["stable"].unread),
        "source": "prometheus" if spec.prometheus_url else "pods",
        "passed": verdict.passed,
        "reasons": verdict.reasons,
    }
    if not verdict.passed:
        return Failed(
            f"{name} failed: {'; '.join(verdict.reasons)}{after['canary'].note()} ({figures})"
        )
    say("StepPassed", f"{name}: {figures} -> pass")
    if i + 1 < len(spec.steps):
        run.update(step=i + 1, stepStartedAt=None, intervals=0, waitingSince=now_iso())
        return Wait(0, f"step {i} passed; step {i + 1}: {label(spec.steps[i + 1])}")
    return start_promotion(run, say, f"all {len(spec.steps)} steps passed")


def from_prometheus(
    release: Release, url: str, before: dict[str, Scrape], after: dict[str, Scrape],
    elapsed: float, model: str,
) -> tuple[Snapshot, Snapshot] | str:  # fmt: skip
    """Each track's traffic over the window, from Prometheus: the pods Ready at its start or its
    end, summed by PromQL. Or why the window cannot be judged: Prometheus not answering, or a
    pod whose scrapes failed (its counts would be missing from the sums)."""
    end = time.time()
    try:
        reads = {
            t: Prometheus(url).window(release.namespace, set(before[t].pods),
                                      set(after[t].pods), end - elapsed, end, model)
            for t in TRACKS
        }  # fmt: skip
    except PrometheusError as exc:
        return str(exc)
    problems = [f"{t} pods {w.problem()}" for t, w in reads.items() if w.problem()]
    if problems:
        return f"Prometheus lacks counts ({'; '.join(problems)})"
    return reads["canary"].traffic, reads["stable"].traffic


def nan_to_none(value: float) -> float | None:
    """JSON (and so the status) has no NaN: a quantile of no requests is absent."""
    return None if math.isnan(value) else round(value, 2)


def remove(release: Release) -> str | None:
    """Delete the canary Deployment, if there is one; its name."""
    kube = release.kube
    if (canary := release.canary()) is None:
        return None
    with contextlib.suppress(NotFound):  # gone already
        kube.call(kube.apps.delete_namespaced_deployment, name_of(canary), kube.namespace)
    return name_of(canary)
