"""The ModelRollout resource (`mlscale.dev/v1alpha1`, CRD in charts/mlscale/crds/): its spec as
typed values, and its status as the controller reads and writes it.

Everything a decision needs lives in the status (and the cluster), never only in a process's
memory, so a controller killed at any instant is followed by one that carries on."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlscale.service.contract import MAX_BODY_BYTES, VERSION_HEADER

GROUP, VERSION, PLURAL, KIND = "mlscale.dev", "v1alpha1", "modelrollouts", "ModelRollout"
API_VERSION = f"{GROUP}/{VERSION}"

PROGRESSING, PAUSED, HEALTHY, DEGRADED, ABORTED = (
    "Progressing", "Paused", "Healthy", "Degraded", "Aborted",
)  # fmt: skip
PHASES = (PROGRESSING, PAUSED, HEALTHY, DEGRADED, ABORTED)
ENDED = (HEALTHY, DEGRADED, ABORTED)

# Requests from `mlscale rollout abort|promote` and a retry of a failed version: an annotation
# whose value (a timestamp) the controller records in status.handled once it has acted.
ABORT, PROMOTE, RETRY = "abort", "promote", "retry"
REQUESTS = (ABORT, PROMOTE, RETRY)


def request_annotation(verb: str) -> str:
    return f"{GROUP}/{verb}"


KEEP_HISTORY = 20  # the CRD's maxItems for status.history

# spec.traffic: how a canary meets requests (traffic.py), and how the gateway is told.
REPLICA_RATIO, GATEWAY = "ReplicaRatio", "Gateway"
STANDARD, TRAEFIK = "Standard", "Traefik"


@dataclass(frozen=True)
class Traffic:
    """spec.traffic, with the CRD's defaults."""

    router: str = REPLICA_RATIO
    implementation: str = STANDARD
    pin_header: str = VERSION_HEADER
    retries: int = 2  # one resend can meet the killed pod again, before its endpoint goes
    max_body_bytes: int = MAX_BODY_BYTES  # the server's own default limit

    @classmethod
    def parse(cls, spec: dict[str, Any] | None) -> "Traffic":
        spec = spec or {}
        return cls(
            router=spec.get("router", cls.router),
            implementation=spec.get("implementation", cls.implementation),
            pin_header=spec.get("pinHeader", cls.pin_header),
            retries=int(spec.get("retries", cls.retries)),
            max_body_bytes=int(spec.get("maxBodyBytes", cls.max_body_bytes)),
        )

    @property
    def gateway(self) -> bool:
        return self.router == GATEWAY


@dataclass(frozen=True)
class Step:
    weight: int  # canary traffic in %
    seconds: int  # of traffic judged
    mirror: int = 0  # % of requests copied to the canary, its answers discarded (a shadow step)


@dataclass(frozen=True)
class Spec:
    """spec, with the CRD's defaults filled in (the API server applies them; objects made
    before a default existed, and tests, may lack them)."""

    version: str
    model: str = ""  # which model of the release's set; "": the first
    model_image: str | None = None
    paused: bool = False
    timeout: int = 600
    strategy: str = "Canary"
    steps: tuple[Step, ...] = (Step(10, 60), Step(50, 60), Step(100, 60))
    max_error_rate: float = 0.01
    max_p99_ms: float = 250.0
    max_p99_ratio: float = 1.5
    p99_slack_ms: float = 10.0
    min_requests: int = 20
    max_intervals: int = 3
    max_output_drift: float = 0.2
    prometheus_url: str = ""  # empty: each pod's /metrics through the pod proxy
    gate: bool = True
    max_regression: float = 0.05
    traffic: Traffic = Traffic()

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> "Spec":
        strategy = spec.get("strategy") or {}
        analysis = spec.get("analysis") or {}
        gate = spec.get("qualityGate") or {}
        steps = tuple(Step(int(s["weight"]), int(s.get("seconds", 60)), int(s.get("mirror", 0)))
                      for s in strategy.get("steps") or ()) or cls.steps  # fmt: skip
        return cls(
            version=str(spec["version"]),
            model=str(spec.get("model") or ""),
            model_image=spec.get("modelImage") or None,
            paused=bool(spec.get("paused", False)),
            timeout=int(spec.get("progressTimeoutSeconds", cls.timeout)),
            strategy=strategy.get("type", cls.strategy),
            steps=steps,
            max_error_rate=float(analysis.get("maxErrorRate", cls.max_error_rate)),
            max_p99_ms=float(analysis.get("maxP99Ms", cls.max_p99_ms)),
            max_p99_ratio=float(analysis.get("maxP99Ratio", cls.max_p99_ratio)),
            p99_slack_ms=float(analysis.get("p99SlackMs", cls.p99_slack_ms)),
            min_requests=int(analysis.get("minRequests", cls.min_requests)),
            max_intervals=int(analysis.get("maxIntervals", cls.max_intervals)),
            max_output_drift=float(analysis.get("maxOutputDrift", cls.max_output_drift)),
            prometheus_url=str(analysis.get("prometheusUrl") or ""),
            gate=bool(gate.get("enabled", True)),
            max_regression=float(gate.get("maxRegression", cls.max_regression)),
            traffic=Traffic.parse(spec.get("traffic")),
        )


def now_iso(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).isoformat(
        timespec="seconds"
    )


def seconds_since(iso: str | None, now: float | None = None) -> float:
    """Seconds from an RFC 3339 time in the status to now; 0 for none."""
    if not iso:
        return 0.0
    return (time.time() if now is None else now) - datetime.fromisoformat(iso).timestamp()


def condition(
    conditions: list[dict[str, Any]], kind: str, true: bool, reason: str, message: str,
    generation: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """`conditions` with `kind` set; its lastTransitionTime moves only when its status does."""
    status = "True" if true else "False"
    old = next((c for c in conditions if c["type"] == kind), None)
    since = old["lastTransitionTime"] if old and old["status"] == status else now_iso()
    new = {"type": kind, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": since, "observedGeneration": generation}  # fmt: skip
    return [c for c in conditions if c["type"] != kind] + [new]
