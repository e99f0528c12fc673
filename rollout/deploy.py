"""Rolling deploys: patch the version, follow the rollout, check what the new pods serve,
and roll back by itself when any of that fails."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlscale.rollout.history import History, entry
from mlscale.rollout.kube import ClusterError, Refused, RolloutError
from mlscale.rollout.modelimage import Candidate, candidate
from mlscale.rollout.progress import (
    Restarts,
    State,
    crash_looping,
    restart_counts,
    rollout_progress,
)
from mlscale.rollout.release import (
    Release,
    model_image_of,
    name_of,
    pod_ready,
    version_of,
    version_patch,
)

Say = Callable[[str], None]
# Offline metrics where smaller is better; any other metric (r2, accuracy, ...) is the reverse.
LOWER_IS_BETTER = {"mse", "rmse", "mae", "log_loss"}


@dataclass(frozen=True)
class Outcome:
    version: str
    previous: str
    outcome: str  # succeeded | unchanged | started | dry-run
    detail: str


def quality_gate(release: Release, current: str, to: Candidate, max_regression: float) -> None:
    """Refuse a version the image's store lacks, or whose offline metrics are worse than the
    current version's by more than `max_regression` (relative). A model image's metrics come
    from its manifest label; the current version's from a pod's store."""
    versions = release.store_versions()
    candidate = to.version
    if to.metrics is not None:
        versions[candidate] = to.metrics
    if candidate not in versions:
        raise Refused(
            f"version {candidate} is not in the image's model store (it has "
            f"{', '.join(sorted(versions))}); build an image that holds it"
        )
    if versions.get(current) and not versions[candidate]:
        raise Refused(
            f"quality gate: version {candidate} has no offline metrics (published without "
            f"holdout data), so there is nothing to compare with {current}; publish it with "
            "--holdout, or --force to deploy anyway"
        )
    worse = []
    for metric, before in versions.get(current, {}).items():
        after = versions[candidate].get(metric)
        if after is None or before == 0:
            continue
        change = (after - before) / abs(before)
        regression = change if metric in LOWER_IS_BETTER else -change
        if regression > max_regression:
            worse.append(f"{metric} {before:.4g} -> {after:.4g} ({regression:.1%} worse)")
    if worse:
        raise Refused(
            f"quality gate: version {candidate} is worse than {current}: "
            f"{'; '.join(worse)} (limit {max_regression:.0%}; --force to deploy "
            "anyway)"
        )


def set_version(
    release: Release,
    deployment: str,
    version: str,
    expected: str,
    model_image: str | None = None,
) -> None:
    """Move the Deployment to `version`, provided it still serves `expected` (the version the
    caller decided from). The patch is conditional on the read that checked it: a concurrent
    write makes it read and check again. Changes to anything else (the HPA's replica count)
    are no reason to stop; a version someone else set is."""
    kube = release.kube

    def attempt() -> None:
        current = kube.call(kube.apps.read_namespaced_deployment, deployment, kube.namespace)
        if (live := version_of(current)) != expected:
            raise Refused(
                f"{deployment} changed while this rollout was deciding: it serves version "
                f"{live}, not {expected}; nothing was changed (see `mlscale rollout status`)"
            )
        patch = version_patch(version, current.metadata.resource_version, model_image)
        kube.call(kube.apps.patch_namespaced_deployment, deployment, kube.namespace, patch)

    kube.retry_on_conflict(attempt)


def follow(
    release: Release,
    deployment: str,
    version: str,
    timeout: float,
    say: Say,
    before: Restarts | None = None,
) -> str | None:
    """Watch a rollout to its end. None when done; otherwise why it failed. Restarts count
    from `before` (taken when the rollout started)."""
    last = ""
    for d in release.kube.watch_deployment(deployment, timeout):
        crashing = crash_looping(release.pods(version=version), before or {})
        if crashing:
            return crashing
        if d is None:
            continue
        progress = rollout_progress(d)
        if progress.message != last:
            say(f"{deployment}: {progress.message}")
            last = progress.message
        if progress.state is State.DONE:
            return None
        if progress.state is State.FAILED:
            return progress.message
    return f"not rolled out within {timeout:.0f}s ({last})"


def wrong_versions(release: Release, version: str, track: str) -> str | None:
    """Ask every ready pod of the track which version it serves; say which one is wrong.
    (A pod that is not ready may not listen yet: it is not asked.)"""
    model = release.model_name()
    for pod in release.pods(track):
        if not pod_ready(pod):
            continue
        served = release.served_version(name_of(pod), model)
        if served != version:
            return f"pod {name_of(pod)} serves version {served!r}, not {version!r}"
    return None


def deploy(
    release: Release,
    version: str | None,
    *,
    say: Say,
    model_image: str | None = None,
    timeout: float = 600,
    wait: bool = True,
    dry_run: bool = False,
    force: bool = False,
    max_regression: float = 0.05,
    strategy: str = "rolling",
) -> Outcome:
    """Move the stable Deployment to `version` (and to `model_image`, the image holding it,
    for a release installed with one); follow it; roll back by itself when it fails."""
    stable = release.stable()
    name, current, current_image = name_of(stable), version_of(stable), model_image_of(stable)
    if model_image and current_image is None:
        raise Refused(
            f"{name} serves the models of its server image (installed without model.image); "
            "roll out a version of that store, or install with model.image to use model images"
        )
    to = candidate(release.model_name(), version, model_image, force)
    version = to.version
    if current == version and model_image in (None, current_image):
        say(f"{name} already serves version {version}; nothing to do")
        return Outcome(version, current, "unchanged", "already deployed")
    if not force:
        quality_gate(release, current, to, max_regression)
    if dry_run:
        say(json.dumps(version_patch(version, model_image=model_image), indent=2))
        return Outcome(version, current, "dry-run", "patch printed, nothing changed")
    history = History(release.kube, release.name)
    started = time.time()
    before = restart_counts(release.pods())
    say(f"{name}: version {current} -> {version}" + (f" ({model_image})" if model_image else ""))
    set_version(release, name, version, expected=current, model_image=model_image)
    if not wait:
        return Outcome(version, current, "started", "not waited for")
    try:
        failure = follow(release, name, version, timeout, say, before) or wrong_versions(
            release, version, "stable"
        )
    except Exception as exc:  # after the patch, a rollout that cannot be confirmed failed
        failure = f"could not confirm the rollout: {exc}"
    if failure is None:
        history.append(
            entry(version, current, strategy, "succeeded", "", started, model_image, current_image)
        )
        say(f"{name}: every pod serves version {version}")
        return Outcome(version, current, "succeeded", "")
    say(f"{name}: {failure}; rolling back to {current}")
    back_image = current_image if model_image else None  # unless someone moved it since:
    try:
        set_version(release, name, current, expected=version, model_image=back_image)
        back = follow(release, name, current, timeout, say, before)
    except ClusterError as exc:  # the API fails the rollback too: still record what happened
        back = f"could not be confirmed: {exc}"
    detail = failure + ("" if back is None else f"; the rollback did not finish either: {back}")
    history.append(
        entry(
            version, current, strategy, "rolled-back", detail, started, model_image, current_image
        )
    )
    raise RolloutError(
        f"version {version} failed ({failure}); rolled back to {current}"
        + ("" if back is None else f", which did not finish: {back}")
    )


def rollback(release: Release, to: str | None, *, say: Say, timeout: float = 600) -> Outcome:
    """Back to `to`, or to the version before the current one in the history (with the model
    image it came from, for a release that uses model images)."""
    current = version_of(release.stable())
    image = None
    if to is None:
        earlier = [
            e
            for e in reversed(History(release.kube, release.name).read())
            if e.version == current and e.outcome == "succeeded"
        ]
        if not earlier:
            raise RolloutError(
                f"no history of how version {current} was reached; "
                "say where to go with --to VERSION"
            )
        to, image = earlier[0].previous, earlier[0].previous_image or None
    return deploy(
        release, to, say=say, timeout=timeout, force=True, strategy="rollback", model_image=image
    )
