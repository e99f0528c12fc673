"""Canary rollouts: a second Deployment of the new version behind the same Service, traffic
split by replica ratio in steps, each step judged from the pods' own /metrics, then promote
(the stable Deployment moves to the new version) or abort (the canary goes, stable untouched)."""

import math
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client import V1Deployment

from mlscale.rollout.analysis import Snapshot, judge
from mlscale.rollout.deploy import Outcome, Say, deploy, follow, quality_gate, wrong_versions
from mlscale.rollout.history import History, entry
from mlscale.rollout.kube import NotFound, Refused, RolloutError, Unavailable
from mlscale.rollout.modelimage import candidate
from mlscale.rollout.release import (
    TRACK,
    Release,
    canary_name,
    model_image_of,
    name_of,
    pod_ready,
    version_of,
    version_patch,
)
from mlscale.rollout.release import strategic_merge as merge

TRACKS = ("canary", "stable")


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[int, ...] = (10, 50, 100)  # canary replicas as % of stable's
    interval: float = 60.0  # seconds of traffic judged per step
    max_error_rate: float = 0.01
    max_p99_ms: float = 250.0
    max_p99_ratio: float = 1.5  # canary p99 against stable p99
    min_requests: int = 20
    timeout: float = 600.0
    # A step whose canary has seen fewer than min_requests (and nothing else wrong) is judged
    # again over a longer window, up to this many intervals, before it fails.
    max_intervals: int = 3


def canary_body(
    stable: V1Deployment, name: str, version: str, replicas: int, model_image: str | None = None
) -> dict[str, Any]:
    """The stable Deployment, renamed, relabelled track=canary and moved to `version` (and
    the model image holding it)."""
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
    patch = version_patch(version, model_image=model_image)
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


def scrape(release: Release, track: str) -> Scrape:
    """Every serving pod's counters. Pods that are not Ready take no traffic and may not listen
    yet (the HPA keeps adding and removing stable pods); one that does not answer (scaled away
    between the listing and its scrape, or a pod-proxy error) is recorded as unread."""
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
        snapshot.add_scrape(text)
        result.pods[name_of(pod)] = snapshot
    return result


def traffic(before: Scrape, after: Scrape) -> Snapshot:
    """What the pods of a track served between two scrapes. A pod new since the first counts
    from zero; one that did not answer the first is left out, as its starting count is unknown."""
    total = Snapshot()
    for pod, now in after.pods.items():
        if pod not in before.unread:
            total += now - before.pods.get(pod, Snapshot())
    return total


def run_canary(
    release: Release,
    version: str | None,
    policy: CanaryPolicy,
    *,
    say: Say,
    force: bool = False,
    max_regression: float = 0.05,
    model_image: str | None = None,
) -> Outcome:
    stable = release.stable()
    current = version_of(stable)
    if model_image and model_image_of(stable) is None:
        raise Refused(
            "this release serves the models of its server image (installed without "
            "model.image); install with model.image to canary model images"
        )
    to = candidate(release.model_name(), version, model_image, force)
    version = to.version
    if current == version:
        raise Refused(f"stable already serves version {version}")
    if (running := release.canary()) is not None:
        raise Refused(
            f"a canary is already running ({name_of(running)}); finish or delete it first"
        )
    if not force:
        quality_gate(release, current, to, max_regression)
    kube, name = release.kube, canary_name(stable)
    history = History(kube, release.name)
    started = time.time()
    say(f"canary {name}: version {version} beside stable {current}")
    kube.call(
        kube.apps.create_namespaced_deployment,
        kube.namespace,
        canary_body(stable, name, version, 1, model_image),
    )
    # From here on, whatever happens, the canary goes: an analysis that fails, a promotion
    # that fails, an API error, Ctrl-C. Only the message differs.
    try:
        try:
            for pct in policy.steps:
                run_step(release, name, version, pct, policy, say)
        except RolloutError as exc:
            history.append(entry(version, current, "canary", "aborted", str(exc), started))
            raise RolloutError(
                f"canary of version {version} aborted: {exc}; stable still serves {current}"
            ) from None
        except KeyboardInterrupt:
            history.append(entry(version, current, "canary", "aborted", "interrupted", started))
            raise
        say(f"promoting: stable {current} -> {version}")
        try:
            return deploy(
                release,
                version,
                say=say,
                timeout=policy.timeout,
                force=True,
                strategy="canary",
                model_image=model_image,
            )
        except RolloutError as exc:  # deploy has rolled stable back and recorded it
            raise RolloutError(
                f"canary of version {version} passed its analysis, but promoting it failed: {exc}"
            ) from None
    finally:
        remove(release, say)


def run_step(
    release: Release, name: str, version: str, pct: int, policy: CanaryPolicy, say: Say
) -> None:
    """Scale the canary to `pct`% of stable's replicas, then judge `policy.interval` seconds of
    traffic (longer, interval by interval, while the canary has seen too few requests to judge);
    raise RolloutError if the canary does not pass."""
    kube = release.kube
    # Read now: the HPA keeps moving the stable Deployment while the canary runs.
    stable_replicas = release.stable().spec.replicas or 1
    replicas = max(1, math.ceil(stable_replicas * pct / 100))
    share = replicas / (replicas + stable_replicas)
    say(
        f"step {pct}%: {replicas} canary replica(s), ~{share:.0%} of traffic "
        f"(stable has {stable_replicas})"
    )
    kube.call(
        kube.apps.patch_namespaced_deployment,
        name,
        kube.namespace,
        {"spec": {"replicas": replicas}},
    )
    failure = follow(release, name, version, policy.timeout, say) or wrong_versions(
        release, version, "canary"
    )
    if failure:
        raise RolloutError(failure)
    before = {t: scrape(release, t) for t in TRACKS}
    started, intervals = time.monotonic(), 0
    while True:
        time.sleep(policy.interval)
        intervals += 1
        after = {t: scrape(release, t) for t in TRACKS}
        canary_t, stable_t = (traffic(before[t], after[t]) for t in TRACKS)
        verdict = judge(
            canary_t,
            stable_t,
            max_error_rate=policy.max_error_rate,
            max_p99_ms=policy.max_p99_ms,
            max_p99_ratio=policy.max_p99_ratio,
            min_requests=policy.min_requests,
        )
        if not verdict.inconclusive or intervals >= policy.max_intervals:
            break
        for t in TRACKS:
            before[t].start_late(after[t])
        say(
            f"step {pct}%: canary {canary_t.requests:.0f} req{after['canary'].note()} in "
            f"{time.monotonic() - started:.0f} s, fewer than {policy.min_requests}: "
            f"judging {policy.interval:g} s more"
        )
    say(
        f"step {pct}%: canary {canary_t.requests:.0f} req{after['canary'].note()} in "
        f"{time.monotonic() - started:.0f} s, "
        f"errors {canary_t.error_rate:.2%}, p99 {canary_t.quantile(0.99) * 1000:.1f} ms"
        f" | stable {stable_t.requests:.0f} req{after['stable'].note()}, "
        f"errors {stable_t.error_rate:.2%}, p99 {stable_t.quantile(0.99) * 1000:.1f} ms -> "
        + ("pass" if verdict.passed else "FAIL: " + "; ".join(verdict.reasons))
    )
    if not verdict.passed:
        raise RolloutError("; ".join(verdict.reasons) + after["canary"].note())


def remove(release: Release, say: Say) -> None:
    kube = release.kube
    try:
        if (canary := release.canary()) is not None:
            kube.call(kube.apps.delete_namespaced_deployment, name_of(canary), kube.namespace)
            say(f"removed canary {name_of(canary)}")
    except RolloutError as exc:  # never hide the reason the canary ended behind this one
        say(f"could not remove the canary ({exc}); delete it: mlscale rollout status shows it")
