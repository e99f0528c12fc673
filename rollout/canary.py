"""Canary rollouts: a second Deployment of the new version behind the same Service, traffic
split by replica ratio in steps, each step judged from the pods' own /metrics, then promote
(the stable Deployment moves to the new version) or abort (the canary goes, stable untouched)."""

import math
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CanaryPolicy:
    steps: tuple[int, ...] = (10, 50, 100)  # canary replicas as % of stable's
    interval: float = 60.0  # seconds of traffic judged per step
    max_error_rate: float = 0.01
    max_p99_ms: float = 250.0
    max_p99_ratio: float = 1.5  # canary p99 against stable p99
    min_requests: int = 20
    timeout: float = 600.0


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


def scrape(release: Release, track: str) -> dict[str, Snapshot]:
    """Every serving pod's counters. Pods that are not Ready take no traffic and may not listen
    yet (the HPA keeps adding and removing stable pods); one that stops answering between the
    listing and its scrape (scaled away) is left out of this sample."""
    snapshots = {}
    for pod in release.pods(track):
        if not pod_ready(pod):
            continue
        try:
            text = release.proxy_get(name_of(pod), "/metrics")
        except (NotFound, Unavailable):
            continue
        snapshot = Snapshot()
        snapshot.add_scrape(text)
        snapshots[name_of(pod)] = snapshot
    return snapshots


def traffic(before: dict[str, Snapshot], after: dict[str, Snapshot]) -> Snapshot:
    """What every pod of a track served between two scrapes (new pods count from zero)."""
    total = Snapshot()
    for pod, now in after.items():
        total += now - before.get(pod, Snapshot())
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
    traffic; raise RolloutError if the canary does not pass."""
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
    before = {t: scrape(release, t) for t in ("canary", "stable")}
    time.sleep(policy.interval)
    canary_t = traffic(before["canary"], scrape(release, "canary"))
    stable_t = traffic(before["stable"], scrape(release, "stable"))
    verdict = judge(
        canary_t,
        stable_t,
        max_error_rate=policy.max_error_rate,
        max_p99_ms=policy.max_p99_ms,
        max_p99_ratio=policy.max_p99_ratio,
        min_requests=policy.min_requests,
    )
    say(
        f"step {pct}%: canary {canary_t.requests:.0f} req, "
        f"errors {canary_t.error_rate:.2%}, p99 {canary_t.quantile(0.99) * 1000:.1f} ms"
        f" | stable {stable_t.requests:.0f} req, errors {stable_t.error_rate:.2%}, "
        f"p99 {stable_t.quantile(0.99) * 1000:.1f} ms -> "
        + ("pass" if verdict.passed else "FAIL: " + "; ".join(verdict.reasons))
    )
    if not verdict.passed:
        raise RolloutError("; ".join(verdict.reasons))


def remove(release: Release, say: Say) -> None:
    kube = release.kube
    try:
        if (canary := release.canary()) is not None:
            kube.call(kube.apps.delete_namespaced_deployment, name_of(canary), kube.namespace)
            say(f"removed canary {name_of(canary)}")
    except RolloutError as exc:  # never hide the reason the canary ended behind this one
        say(f"could not remove the canary ({exc}); delete it: mlscale rollout status shows it")
