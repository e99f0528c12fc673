"""What the cluster looks like, sampled while the load runs: HPA replicas and CPU, ready pods,
pods per node, model version per pod. Read through the kubernetes client, like the operator."""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rollout.release import Release


@dataclass
class ClusterSample:
    hpa_current: int | None = None
    hpa_desired: int | None = None
    cpu_percent: int | None = None
    ready_pods: int = 0
    pods_per_node: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # ready pods per model version


class ClusterSampler:
    def __init__(self, release: Release) -> None:
        self.release = release

    def sample(self) -> ClusterSample:
        kube, stable = self.release.kube, self.release.stable()
        out = ClusterSample()
        for hpa in kube.call(
            kube.autoscaling.list_namespaced_horizontal_pod_autoscaler, kube.namespace
        ).items:
            if hpa.spec.scale_target_ref.name == stable.metadata.name and hpa.status:
                out.hpa_current = hpa.status.current_replicas
                out.hpa_desired = hpa.status.desired_replicas
                out.cpu_percent = _cpu(hpa.status.current_metrics or [])
        ready = [p for p in self.release.pods() if _ready(p)]
        out.ready_pods = len(ready)
        out.pods_per_node = dict(Counter(p.spec.node_name or "?" for p in ready))
        out.versions = dict(
            Counter((p.metadata.labels or {}).get("mlscale.dev/model-version", "?") for p in ready)
        )
        return out


def _cpu(metrics: list[Any]) -> int | None:
    for m in metrics:
        if m.type == "Resource" and m.resource and m.resource.name == "cpu":
            return m.resource.current.average_utilization
    return None


def _ready(pod: Any) -> bool:
    statuses = (pod.status.container_statuses or []) if pod.status else []
    return bool(statuses) and all(s.ready for s in statuses)
