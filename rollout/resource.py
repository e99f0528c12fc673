"""The ModelRollout resource (`mlscale.dev/v1alpha1`, CRD in charts/mlscale/crds/): its spec as
typed values, and its status as the controller reads and writes it.

Everything a decision needs lives in the status (and the cluster), never only in a process's
memory, so a controller killed at any instant is followed by one that carries on."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


@dataclass(frozen=True)
class Step:
    weight: int  # canary traffic in %
    seconds: int  # of traffic judged


@dataclass(frozen=True)
class Spec:
    """spec, with the CRD's defaults filled in (the API server applies them; objects made
    before a default existed, and tests, may lack them)."""

    version: str
    model_image: str | None = None
    paused: bool = False
    timeout: int = 600
    strategy: str = "Canary"
    steps: tuple[Step, ...] = (Step(10, 60), Step(50, 60), Step(100, 60))
    max_error_rate: float = 0.01
    max_p99_ms: float = 250.0
    max_p99_ratio: float = 1.5
    min_requests: int = 20
    max_intervals: int = 3
    gate: bool = True
    max_regression: float = 0.05

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> "Spec":
        strategy = spec.get("strategy") or {}
        analysis = spec.get("analysis") or {}
        gate = spec.get("qualityGate") or {}
        steps = tuple(Step(int(s["weight"]), int(s.get("seconds", 60)))
                      for s in strategy.get("steps") or ()) or cls.steps  # fmt: skip
        return cls(
            version=str(spec["version"]),
            model_image=spec.get("modelImage") or None,
            paused=bool(spec.get("paused", False)),
            timeout=int(spec.get("progressTimeoutSeconds", cls.timeout)),
            strategy=strategy.get("type", cls.strategy),
            steps=steps,
            max_error_rate=float(analysis.get("maxErrorRate", cls.max_error_rate)),
            max_p99_ms=float(analysis.get("maxP99Ms", cls.max_p99_ms)),
            max_p99_ratio=float(analysis.get("maxP99Ratio", cls.max_p99_ratio)),
            min_requests=int(analysis.get("minRequests", cls.min_requests)),
            max_intervals=int(analysis.get("maxIntervals", cls.max_intervals)),
            gate=bool(gate.get("enabled", True)),
            max_regression=float(gate.get("maxRegression", cls.max_regression)),
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
