"""What `mlscale rollout` does: edit a release's ModelRollout and follow its status. The rollout
itself runs in the controller (`mlscale operator`); stopping this process stops the following,
never the rollout."""

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlscale.rollout.kube import ClusterError, Kube, NotFound, Refused, RolloutError
from mlscale.rollout.resource import (
    ENDED,
    GROUP,
    HEALTHY,
    PLURAL,
    RETRY,
    VERSION,
    now_iso,
    request_annotation,
)

Say = Callable[[str], None]
# How long a change may wait for a controller to take it up before we say none is running.
PICKUP_SECONDS = 30.0


@dataclass(frozen=True)
class Outcome:
    version: str
    previous: str
    outcome: str  # succeeded | unchanged | started | dry-run | aborted | rolled-back | refused
    detail: str


def spec_for(
    version: str,
    model_image: str | None = None,
    *,
    strategy: dict[str, Any],
    force: bool = False,
    max_regression: float = 0.05,
    timeout: float = 600,
    model: str | None = None,
) -> dict[str, Any]:
    """The spec fields a rollout sets (merged into the resource's spec)."""
    return {
        "version": version,
        "model": model,  # None removes it: the release's first model
        "modelImage": model_image,  # None removes it: the server image's own store
        "paused": False,
        "progressTimeoutSeconds": max(10, int(timeout)),
        "strategy": strategy,
        "qualityGate": {"enabled": not force, "maxRegression": max_regression},
    }


def read(kube: Kube, name: str) -> dict[str, Any]:
    try:
        return kube.call(kube.custom.get_namespaced_custom_object, GROUP, VERSION,
                         kube.namespace, PLURAL, name)  # fmt: skip
    except NotFound:
        raise Refused(
            f"no ModelRollout {name!r} in namespace {kube.namespace}: install the release with "
            "the mlscale chart (it renders one), or kubectl apply one"
        ) from None


def patch(kube: Kube, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return kube.call(kube.custom.patch_namespaced_custom_object, GROUP, VERSION,
                     kube.namespace, PLURAL, name, body)  # fmt: skip


def annotate(kube: Kube, name: str, verb: str) -> tuple[dict[str, Any], str]:
    """Ask the controller to abort, promote or retry; the request's value, to know when it
    has been acted on."""
    value = f"{now_iso()}#{time.monotonic_ns()}"
    obj = patch(kube, name, {"metadata": {"annotations": {request_annotation(verb): value}}})
    return obj, value


def roll(
    kube: Kube,
    name: str,
    spec: dict[str, Any],
    *,
    say: Say,
    timeout: float = 600,
    wait: bool = True,
    dry_run: bool = False,
) -> Outcome:
    """Set the rollout's spec (version, model image, strategy...) and follow it to its end.
    The same spec asked again after it failed is a retry."""
    obj = read(kube, name)
    status = obj.get("status") or {}
    version, image = spec["version"], spec.get("modelImage") or ""
    previous = status.get("stableVersion", "")
    if dry_run:
        say(f"would patch ModelRollout {name}: {{'spec': {spec}}}")
        return Outcome(version, previous, "dry-run", "nothing changed")
    serving = (status.get("stableVersion"), status.get("stableImage") or "") == (version, image)
    if serving and status.get("phase") == HEALTHY and not status.get("rollout"):
        say(f"{name} already serves version {version}; nothing to do")
        return Outcome(version, previous, "unchanged", "already deployed")
    obj = patch(kube, name, {"spec": spec})
    generation = obj["metadata"]["generation"]
    retry = None
    if status.get("failedGeneration") == generation:  # the same spec that failed: try again
        obj, retry = annotate(kube, name, RETRY)
    say(f"ModelRollout {name}: version {previous or '?'} -> {version}")
    if not wait:
        return Outcome(version, previous, "started", "not waited for")
    end = follow(kube, name, generation, timeout, say, (RETRY, retry) if retry else None)
    return outcome_of(end, version, previous)


def request(kube: Kube, name: str, verb: str, *, say: Say, timeout: float = 600) -> Outcome:
    """`abort` or `promote` the running rollout, then follow it to its end."""
    status = read(kube, name).get("status") or {}
    if not status.get("rollout"):
        raise Refused(f"no rollout is running on {name} ({status.get('phase', 'no status yet')}: "
                      f"{status.get('message', '')}); nothing to {verb}")  # fmt: skip
    obj, value = annotate(kube, name, verb)
    say(f"asked the controller to {verb} the rollout of {status['rollout']['version']}")
    end = follow(kube, name, obj["metadata"]["generation"], timeout, say, (verb, value))
    return outcome_of(end, status["rollout"]["version"], status.get("stableVersion", ""))


def pause(kube: Kube, name: str, paused: bool) -> Outcome:
    read(kube, name)
    obj = patch(kube, name, {"spec": {"paused": paused}})
    status = obj.get("status") or {}
    word = "paused" if paused else "resumed"
    return Outcome(obj["spec"]["version"], status.get("stableVersion", ""), word,
                   "the controller takes it up at its next look")  # fmt: skip


def follow(
    kube: Kube,
    name: str,
    generation: int,
    timeout: float,
    say: Say,
    handled: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Watch the rollout until the controller has taken up `generation` (and the request
    `handled`, a verb and its value) and the rollout has ended; its final status."""
    started, last = time.monotonic(), ""
    status: dict[str, Any] = {}
    lister = functools.partial(kube.custom.list_namespaced_custom_object, GROUP, VERSION,
                               kube.namespace, PLURAL)  # fmt: skip
    for obj in kube.watch(lister, f"modelrollout {name}", timeout, f"metadata.name={name}"):
        status = (obj.get("status") or {}) if obj is not None else status
        taken = status.get("observedGeneration", 0) >= generation and (
            handled is None or status.get("handled", {}).get(handled[0]) == handled[1]
        )
        if not taken:
            if time.monotonic() - started > PICKUP_SECONDS:
                raise ClusterError(
                    f"no rollout controller took up the change to {name} within "
                    f"{PICKUP_SECONDS:.0f} s: is the operator running? (the chart's "
                    "operator.enabled, or `mlscale operator` for development)"
                )
            continue
        line = f"{status.get('phase')}: {status.get('message', '')}"
        if line != last:
            say(line)
            last = line
        if status.get("phase") in ENDED and not status.get("rollout"):
            return status
    raise RolloutError(
        f"the rollout of {name} has not ended within {timeout:.0f} s ({last}); it goes on in "
        "the cluster: mlscale rollout status"
    )


def outcome_of(status: dict[str, Any], version: str, previous: str) -> Outcome:
    """The result of a followed rollout; failures raised with the controller's message."""
    if status.get("phase") == HEALTHY and status.get("stableVersion") == version:
        return Outcome(version, previous, "succeeded", "")
    last = (status.get("history") or [{}])[-1]
    message = status.get("message", "")
    if last.get("outcome") == "refused":
        raise Refused(message)
    raise RolloutError(message or f"version {version} was not rolled out")
