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


Restarts = dict[tuple[str, str], int]  # (pod, container) -> restart count


def restart_counts(pods: list[V1Pod]) -> Restarts:
    """Each container's restarts so far: a baseline, so a rollout judges only its own."""
    return {
        (name_of(pod), cs.name): cs.restart_count
        for pod in pods
        for cs in ((pod.status.container_statuses or []) if pod.status else [])
    }


def crash_looping(pods: list[V1Pod], before: Restarts, restarts: int = 2) -> str | None:
    """The first pod whose server keeps restarting since `before` was taken (or is in
    CrashLoopBackOff now), as a sentence; None if none does."""
    for pod in pods:
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            waiting = cs.state.waiting if cs.state else None
            recent = cs.restart_count - before.get((name_of(pod), cs.name), 0)
            if (waiting and waiting.reason == "CrashLoopBackOff") or recent >= restarts:
                return f"pod {name_of(pod)} is crash-looping ({recent} restarts)"
    return None
