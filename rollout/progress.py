"""Is a Deployment's rollout done? The rules of `kubectl rollout status`, plus the pod
failures it does not look at (crash loops), so a bad version is caught before the deadline."""

from dataclasses import dataclass
from enum import Enum

from kubernetes.client import V1Deployment, V1DeploymentStatus, V1Pod

from mlscale.rollout.release import name_of


class State(Enum):
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Progress:
    state: State
    message: str


def rollout_progress(d: V1Deployment) -> Progress:
    """kubectl's DeploymentStatusViewer: observedGeneration first, then the Progressing
    condition, then updated, old and available replica counts."""
    status = d.status or V1DeploymentStatus()  # none yet on a Deployment just created
    generation = (d.metadata.generation if d.metadata else None) or 0
    if (status.observed_generation or 0) < generation:
        return Progress(State.WAITING, "waiting for the deployment spec update to be observed")
    for cond in status.conditions or []:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            return Progress(State.FAILED, f"exceeded its progress deadline: {cond.message or ''}")
    want = d.spec.replicas if d.spec and d.spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    if updated < want:
        return Progress(State.WAITING, f"{updated} of {want} new replicas have been updated")
    if (status.replicas or 0) > updated:
        old = (status.replicas or 0) - updated
        return Progress(State.WAITING, f"{old} old replicas are pending termination")
    available = status.available_replicas or 0
    if available < updated:
        return Progress(State.WAITING, f"{available} of {updated} updated replicas are available")
    return Progress(State.DONE, f"successfully rolled out ({updated} replicas)")


def failing_pods(pods: list[V1Pod], restarts: int = 2) -> str | None:
    """The first pod that will not come up by itself, as a sentence: its image cannot be
    pulled, or its server keeps restarting (`restarts` times, or CrashLoopBackOff now). Only
    new pods are given here (a version's or a canary's), so every restart counts."""
    for pod in pods:
        status = pod.status
        for cs in (
            [*(status.init_container_statuses or []), *(status.container_statuses or [])]
            if status
            else []
        ):
            waiting = cs.state.waiting if cs.state else None
            if waiting and waiting.reason in PULL_FAILURES:
                why = f"{waiting.reason}: {waiting.message or 'no message'}"
                return f"pod {name_of(pod)} cannot pull image {cs.image} ({why})"
            if (waiting and waiting.reason == "CrashLoopBackOff") or cs.restart_count >= restarts:
                ended = cs.last_state.terminated if cs.last_state else None
                said = last_line(ended.message) if ended and ended.message else ""
                return (f"pod {name_of(pod)} is crash-looping ({cs.restart_count} restarts)"
                        + (f": {said}" if said else ""))  # fmt: skip
    return None


def last_line(message: str) -> str:
    """What a container said last before it ended (the chart keeps its log's tail as the
    termination message): why a server would not start, in its own sentence."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}


@dataclass(frozen=True)
class Wait:
    """Not done yet: look again in `seconds`. `message` (None: unchanged) says what it waits for."""

    seconds: float
    message: str | None = None
    paused: bool = False


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Done:
    message: str


Outcome = Wait | Failed | Done
