"""What a release's HorizontalPodAutoscaler reads: each metric's current value against its
target, and, when it cannot scale, why, in a sentence (`mlscale rollout status`, the load test's
report)."""

from dataclasses import dataclass, replace

from kubernetes.client import V2HorizontalPodAutoscaler, V2MetricSpec, V2MetricStatus
from kubernetes.utils import parse_quantity


@dataclass(frozen=True)
class Reading:
    metric: str  # "cpu", or a pods metric's name such as mlscale_requests_per_second
    current: float | None  # None: the HPA has no value for it (yet, or the metric is missing)
    target: float
    unit: str  # "%" of the request for resource metrics, "" for a per-pod average


def _now(m: V2MetricStatus) -> tuple[str, float | None] | None:
    """A metric's name and current value, for the kinds the chart declares (Resource, Pods)."""
    if m.type == "Resource" and m.resource:
        return m.resource.name, m.resource.current.average_utilization
    if m.type == "Pods" and m.pods:
        value = m.pods.current.average_value
        return m.pods.metric.name, None if value is None else float(parse_quantity(value))
    return None  # Object and External metrics: not what the chart declares


def _target(m: V2MetricSpec) -> Reading | None:
    """A declared metric, with no value yet."""
    if m.type == "Resource" and m.resource:
        utilization = m.resource.target.average_utilization or 0
        return Reading(m.resource.name, None, float(utilization), "%")
    if m.type == "Pods" and m.pods:
        value = m.pods.target.average_value or 0
        return Reading(m.pods.metric.name, None, float(parse_quantity(value)), "")
    return None


def readings(hpa: V2HorizontalPodAutoscaler) -> list[Reading]:
    """One reading per metric the HPA declares, in its order."""
    statuses = (hpa.status.current_metrics or []) if hpa.status else []
    current = dict(found for m in statuses if (found := _now(m)) is not None)
    declared = (_target(m) for m in hpa.spec.metrics or [])
    return [replace(r, current=current.get(r.metric)) for r in declared if r is not None]


def reading(hpa: V2HorizontalPodAutoscaler, metric: str) -> float | None:
    """The current value of one of the HPA's metrics, if it has one."""
    return next((r.current for r in readings(hpa) if r.metric == metric), None)


def problem(hpa: V2HorizontalPodAutoscaler) -> str | None:
    """Why the HPA cannot scale on all its metrics, in a sentence; None when it can.

    A metric the metrics APIs do not serve (a typo in the chart's values, Prometheus or its
    adapter down) leaves the HPA on its other metrics, or, with none left, holding its replicas:
    its ScalingActive condition or a metric without a value says which."""
    conditions = {c.type: c for c in ((hpa.status.conditions or []) if hpa.status else [])}
    active = conditions.get("ScalingActive")
    read = readings(hpa)
    missing = [r.metric for r in read if r.current is None]
    served = "is the metric served? kubectl get --raw /apis/custom.metrics.k8s.io/v1beta1"
    if active is not None and active.status == "False":
        if missing and len(missing) < len(read):  # Kubernetes then scales up only, never down
            return (
                f"the HPA has no value for {', '.join(missing)} ({active.reason}): it keeps its "
                f"replicas, adding pods only when its other metrics ask ({served})"
            )
        return f"the HPA cannot scale ({active.reason}): {active.message}"
    if missing and hpa.status and hpa.status.current_metrics is not None:
        return (
            f"the HPA has no value for {', '.join(missing)}: it scales on its other metrics "
            f"only ({served})"
        )
    return None
