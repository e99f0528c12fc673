"""What the cluster looks like, sampled while the load runs: HPA replicas and CPU, ready pods,
pods per node, model version per pod, a canary's weight. Read through the kubernetes client,
like the operator."""

from collections import Counter
from dataclasses import dataclass, field

from mlscale.rollout import autoscaler
from mlscale.rollout.client import read
from mlscale.rollout.kube import NotFound, Refused
from mlscale.rollout.release import VERSION, Release, pod_ready
from mlscale.service.contract import REQUEST_RATE


@dataclass
class ClusterSample:
    hpa_current: int | None = None
    hpa_desired: int | None = None
    cpu_percent: float | None = None
    request_rate: float | None = None  # the HPA's request metric: requests/s per pod
    ready_pods: int = 0
    pods_per_node: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # ready pods per model version
    canary_weight: int | None = None  # while a canary runs: its share of requests, in %


class ClusterSampler:
    def __init__(self, release: Release) -> None:
        self.release = release

    def sample(self) -> ClusterSample:
        out = ClusterSample()
        hpa = self.release.hpa()
        if hpa is not None and hpa.status:
            out.hpa_current = hpa.status.current_replicas
            out.hpa_desired = hpa.status.desired_replicas
            out.cpu_percent = autoscaler.reading(hpa, "cpu")
            out.request_rate = autoscaler.reading(hpa, REQUEST_RATE)
        ready = [p for p in self.release.pods() if pod_ready(p)]
        out.ready_pods = len(ready)
        out.pods_per_node = dict(Counter(p.spec.node_name or "?" for p in ready))
        out.versions = dict(Counter((p.metadata.labels or {}).get(VERSION, "?") for p in ready))
        try:
            status = read(self.release.kube, self.release.name).get("status") or {}
        except (Refused, NotFound):  # a release without a ModelRollout (or its CRD)
            status = {}
        if (status.get("rollout") or {}).get("stepStartedAt"):  # the step's traffic flows
            out.canary_weight = status.get("currentWeight")
        return out
