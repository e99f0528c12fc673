"""`status`: where the release's rollout stands, what it serves right now per track, with the
HPA and where pods run."""

from typing import Any

from kubernetes.client import V1Deployment, V1DeploymentStatus

from mlscale.rollout import autoscaler
from mlscale.rollout.client import read
from mlscale.rollout.kube import Refused
from mlscale.rollout.progress import rollout_progress
from mlscale.rollout.release import (
    MODEL_NAME_ENV,
    VERSION,
    Release,
    env,
    name_of,
    other_models,
    pod_models,
    pod_ready,
    version_of,
)


def _track(release: Release, deployment: V1Deployment, track: str) -> dict[str, Any]:
    s = deployment.status or V1DeploymentStatus()
    return {
        "track": track,
        "deployment": name_of(deployment),
        "version": release.version_of(deployment),
        "model_image": release.image_of(deployment),  # None: the server image's own store
        "desired": deployment.spec.replicas,
        "updated": s.updated_replicas or 0,
        "ready": s.ready_replicas or 0,
        "available": s.available_replicas or 0,
        "rollout": rollout_progress(deployment).message,
        "pods": [
            {
                "name": name_of(p),
                "node": p.spec.node_name,
                "version": (p.metadata.labels or {}).get(VERSION)
                if not release.model
                else pod_models(p).get(release.model),
                "ready": pod_ready(p),
            }
            for p in release.pods(track)
        ],
    }


def status(release: Release) -> dict[str, Any]:
    try:
        resource = read(release.kube, release.name)
    except Refused:  # a release from before ModelRollouts: its Deployments alone
        resource = {}
    # The model of the set the resource rolls ("" for the first): the one the tracks show.
    release.model = (resource.get("spec") or {}).get("model") or ""
    stable = release.stable()
    tracks = [_track(release, stable, "stable")]
    canary = release.canary()
    if canary is not None:
        tracks.append(_track(release, canary, "canary"))
    h = release.hpa()
    hpa = h and {
        "name": name_of(h),
        "min": h.spec.min_replicas,
        "max": h.spec.max_replicas,
        "current": h.status.current_replicas if h.status else None,
        "desired": h.status.desired_replicas if h.status else None,
        "metrics": [reading.__dict__ for reading in autoscaler.readings(h)],
        "problem": autoscaler.problem(h),
    }
    resource = resource.get("status") or {}
    keys = ("phase", "message", "stableVersion", "canaryVersion", "currentStep",
            "currentWeight", "currentMirror", "trafficSplit", "analysis")  # fmt: skip
    return {
        "release": release.name,
        "namespace": release.namespace,
        "model": release.model_name(),
        # Every model of the set, with the version stable serves.
        "models": {env(stable, MODEL_NAME_ENV) or "": version_of(stable), **other_models(stable)},
        "rollout": {k: resource.get(k) for k in keys} if resource else None,
        "tracks": tracks,
        "hpa": hpa,
    }
