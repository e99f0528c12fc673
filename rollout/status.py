"""`status`: what a release serves right now, per track, with the HPA and where pods run."""

from typing import Any

from rollout.progress import rollout_progress
from rollout.release import Release, version_of


def _track(release: Release, deployment: Any, track: str) -> dict[str, Any]:
    s = deployment.status
    return {
        "track": track,
        "deployment": deployment.metadata.name,
        "version": version_of(deployment),
        "desired": deployment.spec.replicas,
        "updated": s.updated_replicas or 0,
        "ready": s.ready_replicas or 0,
        "available": s.available_replicas or 0,
        "rollout": rollout_progress(deployment).message,
        "pods": [
            {
                "name": p.metadata.name,
                "node": p.spec.node_name,
                "version": (p.metadata.labels or {}).get("mlscale.dev/model-version"),
                "ready": all(c.ready for c in (p.status.container_statuses or [])),
            }
            for p in release.pods(track)
        ],
    }


def status(release: Release) -> dict[str, Any]:
    stable = release.stable()
    tracks = [_track(release, stable, "stable")]
    canary = release.canary()
    if canary is not None:
        tracks.append(_track(release, canary, "canary"))
    hpa = None
    kube = release.kube
    for h in kube.call(
        kube.autoscaling.list_namespaced_horizontal_pod_autoscaler, kube.namespace
    ).items:
        if h.spec.scale_target_ref.name == stable.metadata.name:
            cpu = next(
                (
                    m.resource.current.average_utilization
                    for m in h.status.current_metrics or []
                    if m.type == "Resource" and m.resource.name == "cpu"
                ),
                None,
            )
            hpa = {
                "name": h.metadata.name,
                "min": h.spec.min_replicas,
                "max": h.spec.max_replicas,
                "current": h.status.current_replicas,
                "desired": h.status.desired_replicas,
                "cpu_percent": cpu,
            }
    return {
        "release": release.name,
        "namespace": release.namespace,
        "model": release.model_name(),
        "tracks": tracks,
        "hpa": hpa,
    }
