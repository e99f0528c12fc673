"""A rolling update, one look at a time: move the stable Deployment to the version, then watch
its pods come up and check what they serve. Also how a canary's promotion moves stable."""

from kubernetes.client import V1Deployment

from mlscale.rollout.gate import check_candidate
from mlscale.rollout.progress import (
    Done,
    Failed,
    Outcome,
    State,
    Wait,
    failing_pods,
    rollout_progress,
)
from mlscale.rollout.release import Release, name_of
from mlscale.rollout.resource import seconds_since

LOOK_AGAIN = 1.0  # seconds between looks while pods move


def advance(
    release: Release, stable: V1Deployment, run: dict, timeout: int, max_regression: float
) -> Outcome:
    """One step of moving `stable` to the rollout's version (status.rollout)."""
    target, image = run["version"], run.get("image") or None
    name = name_of(stable)
    live = release.version_of(stable)
    if live != target or (image and release.image_of(stable) != image):
        release.set_version(name, target, expected=live, model_image=image)
        return Wait(LOOK_AGAIN, f"{name}: version {run['previousVersion']} -> {target}")
    if failure := failing_pods(release.pods(version=target)):
        return Failed(failure)
    progress = rollout_progress(stable)
    if progress.state is State.FAILED:
        return Failed(progress.message)
    # The gate of a model image, on its first Ready pod; then the rest of the update.
    gated = check_candidate(release, run, max_regression, "stable")
    if not gated or progress.state is State.WAITING:
        if seconds_since(run.get("waitingSince") or run["startedAt"]) > timeout:
            return Failed(f"not rolled out within {timeout} s ({progress.message})")
        return Wait(LOOK_AGAIN, f"{name}: {progress.message}")
    if wrong := release.wrong_version(target, "stable"):
        return Failed(wrong)
    return Done(f"every pod of {name} serves version {target}")
