"""How a canary meets traffic: by replica ratio behind the release's one Service (per
connection), or through a Gateway API HTTPRoute whose rules the controller writes (per request).

With a gateway (`spec.traffic.router: Gateway`) the chart renders the HTTPRoute, named like the
stable Deployment, with its parentRefs and hostnames, and a Service per track: the release's
Service selects the stable track only, `<name>-canary` the canary. The controller owns the
route's rules, a pure function of the step (`Split`) and `spec.traffic`:
- a rule pinning requests whose header `pinHeader` names the canary's version to the canary,
  at any weight, 0 included;
- the default rule: stable and canary Services weighted by the step, or, in a shadow step,
  stable with a share of its requests mirrored to the canary (the gateway drops the copies'
  answers);
- retries of a request whose connection to a pod failed.

Mirroring and retries are written the way the gateway takes them (`implementation`): the
Gateway API's own RequestMirror filter and `retry` field (Standard), or Traefik's
TraefikService and Buffering Middleware (Traefik v3.6 implements neither of the former: it
answers 500 for a route with a RequestMirror filter). Buffering, not Traefik's Retry: it holds
the whole request, so it can send it again, body and all, when a pod's connection fails before
an answer (Traefik answers 502 then); Retry resends only a request it never wrote, and behind a
mirror, which reads the body first, it resent an empty one and broke the client's connection.

A route naming an object Traefik does not have yet is dropped: its requests meet whatever other
route matches them (a kind test saw another release's pods answer). Traefik reads those objects
through another provider than the route, so each must be there seconds before a route names
it. So the chart renders the route between rollouts exactly as `rules(..., Split(), ...)`
writes it, with the resend Middleware beside it (the controller's first look changes nothing),
and the controller makes the TraefikService when a canary starts; between shadow steps it
mirrors nothing (it passes every request to stable), so the route may still name it, or name
it again, while Traefik catches up.

A route change counts once the gateway says so: every parent's Accepted and ResolvedRefs
conditions True for the route's generation. One that is False stops the rollout, by name.
"""

import math
import time
from dataclasses import dataclass
from typing import Any

from kubernetes.client import V1Deployment

from mlscale.rollout.kube import NotFound, Refused
from mlscale.rollout.progress import Progress, State
from mlscale.rollout.release import Release, name_of, pod_ready
from mlscale.rollout.resource import TRAEFIK, Step, Traffic, now_iso, seconds_since

ROUTE_API = ("gateway.networking.k8s.io", "v1", "httproutes")
TRAEFIK_GROUP, TRAEFIK_VERSION = "traefik.io", "v1alpha1"
MIDDLEWARES, TRAEFIK_SERVICES = "middlewares", "traefikservices"
# How long a written route may go without the gateway accepting it before the step fails.
ROUTE_TIMEOUT = 60.0
# An ending rollout waits this long at most for the gateway to stop sending to the canary.
LEAVE_TIMEOUT, LEAVE_POLL = 15.0, 0.25


@dataclass(frozen=True)
class Split:
    """What the route does at one moment: no canary (None), or a canary of `version` taking
    `weight` % of requests, or a copy of `mirror` % of them."""

    version: str | None = None
    weight: int = 0
    mirror: int = 0


def canary_replicas(step: Step, stable_replicas: int, gateway: bool) -> int:
    """Canary pods for a step: its share (weight, or mirrored share) of stable's, at least one.
    Through a gateway a canary that users meet gets two where stable has two: the route sends
    it its share of requests whatever its pods, and with one pod, that pod's death would leave
    the share nowhere to go (the gateway answers 503) until a new one is ready."""
    share = math.ceil(stable_replicas * max(step.weight, step.mirror) / 100)
    floor = min(2, stable_replicas) if gateway and step.weight else 1
    return max(floor, share)


def replica_ratio(release: Release) -> str:
    """The split as it is behind the one Service: Ready pods per track, per connection."""
    canary = sum(pod_ready(p) for p in release.pods("canary"))
    stable = sum(pod_ready(p) for p in release.pods("stable"))
    share = canary / (canary + stable) if canary + stable else 0.0
    return (
        f"{canary} canary and {stable} stable pods Ready, ~{share:.0%} of connections "
        "(replica ratio, per connection)"
    )


def route_progress(route: dict[str, Any]) -> Progress:
    """Has the gateway programmed this generation of the route? Every parent in its status
    must say Accepted and ResolvedRefs, True, for it."""
    name, generation = route["metadata"]["name"], route["metadata"].get("generation", 1)
    parents = (route.get("status") or {}).get("parents") or []
    if not parents:
        return Progress(State.WAITING, f"no gateway has taken up HTTPRoute {name} (its status "
                        "names no parent): is the gateway running, and do the route's "
                        "parentRefs name a Gateway that exists?")  # fmt: skip
    for parent in parents:
        gateway = parent.get("parentRef", {}).get("name", "?")
        conditions = {c["type"]: c for c in parent.get("conditions") or []}
        for kind in ("Accepted", "ResolvedRefs"):
            c = conditions.get(kind)
            if c is None or c.get("observedGeneration", 0) < generation:
                return Progress(State.WAITING, f"gateway {gateway} has not yet programmed "
                                f"generation {generation} of HTTPRoute {name}")  # fmt: skip
            if c["status"] != "True":
                return Progress(State.FAILED, f"gateway {gateway} did not program HTTPRoute "
                                f"{name}: {kind} is {c['status']} ({c.get('reason', '')}: "
                                f"{c.get('message', '')})")  # fmt: skip
    return Progress(State.DONE, f"HTTPRoute {name} programmed")


def resend_name(route: str) -> str:
    """Traefik's Middleware that resends a release's failed requests. Not the `-retry` one of
    releases before it: Traefik drops a route whose Middleware has two kinds, which a patch of
    that one's spec would leave for a moment (or for good, its fields having two owners)."""
    return f"{route}-resend"


def resend(traffic: Traffic) -> dict[str, Any]:
    """The resend Middleware's spec: Traefik's Buffering reads the request and sends it again
    while the answer is a 502 or 504 of its own, `retries` times. Inference is idempotent: a
    request the dead pod may have read is safe to answer twice. It reads up to twice the
    server's body limit: a body a little over the limit still reaches a pod, whose 413 names
    the limit in the protocol's error shape; a far larger one Traefik refuses (413, plain text)
    without holding more of it."""
    again = f"IsNetworkError() && Attempts() <= {traffic.retries}"
    return {"buffering": {"maxRequestBodyBytes": 2 * traffic.max_body_bytes,
                          "retryExpression": again}}  # fmt: skip


def mirror_name(route: str) -> str:
    """Traefik's mirroring TraefikService of a release's route."""
    return f"{route}-mirror"


def rules(traffic: Traffic, name: str, split: Split, port: int) -> list[dict[str, Any]]:
    """Route `name`'s rules for `split`, every field as the API server defaults it (so a live
    route that needs no change compares equal). The chart renders `Split()`'s the same way."""
    t, canary_service = traffic, f"{name}-canary"
    everything = {"path": {"type": "PathPrefix", "value": "/"}}

    def service(called: str, weight: int = 1) -> dict[str, Any]:
        return {"group": "", "kind": "Service", "name": called, "port": port, "weight": weight}

    retry: dict[str, Any] = {}  # the Gateway API's own (GEP-1731, experimental channel)
    filters: list[dict[str, Any]] = []
    if t.retries and t.implementation == TRAEFIK:
        middleware = {"group": TRAEFIK_GROUP, "kind": "Middleware", "name": resend_name(name)}
        filters.append({"type": "ExtensionRef", "extensionRef": middleware})
    elif t.retries:
        retry = {"retry": {"attempts": t.retries}}

    def rule(match: dict[str, Any], backends: list[dict[str, Any]],
             filters: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
        return {"matches": [match], "backendRefs": backends,
                **({"filters": filters} if filters else {}), **retry}  # fmt: skip

    found = []
    if split.version is not None:
        header = {"type": "Exact", "name": t.pin_header, "value": split.version}
        pinned = {**everything, "headers": [header]}
        found.append(rule(pinned, [service(canary_service)], filters))
    backends = [service(name, 100 - split.weight)]
    if split.weight:
        backends.append(service(canary_service, split.weight))
    if split.mirror and t.implementation == TRAEFIK:
        mirror = {"group": TRAEFIK_GROUP, "kind": "TraefikService", "name": mirror_name(name)}
        backends = [{**mirror, "weight": 1}]
    elif split.mirror:
        to = {"group": "", "kind": "Service", "name": canary_service, "port": port}
        mirror_filter = {"backendRef": to, "percent": split.mirror}
        filters = [*filters, {"type": "RequestMirror", "requestMirror": mirror_filter}]
    found.append(rule(everything, backends, filters))
    return found


class Route:
    """A release's HTTPRoute and, on Traefik, the objects its rules name."""

    def __init__(
        self, release: Release, stable: V1Deployment, traffic: Traffic, owner: dict[str, Any]
    ) -> None:
        self.release, self.traffic, self.owner = release, traffic, owner
        self.name = name_of(stable)
        self.stable_service, self.canary_service = self.name, f"{self.name}-canary"
        self.kube = release.kube

    # --- reading ---------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        try:
            return self.kube.call(self.kube.custom.get_namespaced_custom_object, *ROUTE_API[:2],
                                  self.kube.namespace, ROUTE_API[2], self.name)  # fmt: skip
        except NotFound:
            raise Refused(
                f"HTTPRoute {self.name} not found in {self.kube.namespace}: spec.traffic.router "
                "is Gateway, so the release needs its route (the chart renders it with "
                "gateway.enabled=true)"
            ) from None

    def _port(self, service: str) -> int:
        """The Service's port (a route's backendRef names one)."""
        try:
            found = self.kube.call(self.kube.core.read_namespaced_service, service,
                                   self.kube.namespace)  # fmt: skip
        except NotFound:
            raise Refused(
                f"Service {service} not found in {self.kube.namespace}: the route's backend for "
                "a track (the chart renders it with gateway.enabled=true)"
            ) from None
        return int(found.spec.ports[0].port)

    def unusable(self) -> str | None:
        """Why the route cannot carry a canary now (missing, taken up by no gateway, or a
        condition False), or None. Checked before a rollout moves any traffic."""
        route = self.read()
        progress = route_progress(route)
        if progress.state is State.FAILED or not (route.get("status") or {}).get("parents"):
            return progress.message
        return None

    # --- writing ---------------------------------------------------------------------------

    def set(self, split: Split) -> tuple[bool, dict[str, Any]]:
        """Make the route do `split`: whether it changed (the gateway has to program it), and
        the route as it is now. What its rules name is in place before the rules name it."""
        port = self._port(self.stable_service)
        if split.version is not None:
            self._port(self.canary_service)  # it must exist: a missing backend answers 500
        if self.traffic.implementation == TRAEFIK:
            self._traefik_objects(split, port)
        want = rules(self.traffic, self.name, split, port)
        live = self.read()
        if (live.get("spec") or {}).get("rules") == want:
            return False, live
        patched = self.kube.call(self.kube.custom.patch_namespaced_custom_object, *ROUTE_API[:2],
                                 self.kube.namespace, ROUTE_API[2], self.name,
                                 {"spec": {"rules": want}})  # fmt: skip
        return True, patched

    def describe(self, split: Split) -> str:
        """The split as status says it."""
        if split.mirror:
            what = (f"shadow: {split.mirror}% of requests copied to the canary, its answers "
                    "discarded")  # fmt: skip
        else:
            what = f"{split.weight}% of requests to the canary"
        pin = f"{self.traffic.pin_header}: {split.version} pins a request to it"
        return f"{what}; {pin} (HTTPRoute {self.name}, per request)"

    def settle(self, split: Split, run: dict[str, Any]) -> Progress:
        """Set the route and wait for the gateway to program it: DONE once it has, FAILED when
        it says it cannot or does not answer within ROUTE_TIMEOUT. When the wait began lives in
        the rollout's status (`routeSince`), so a new controller keeps the same deadline."""
        changed, route = self.set(split)
        if changed or not run.get("routeSince"):
            run["routeSince"] = now_iso()
        progress = route_progress(route)
        if progress.state is State.DONE:
            run.pop("routeSince", None)
        elif progress.state is State.WAITING and seconds_since(run["routeSince"]) > ROUTE_TIMEOUT:
            return Progress(State.FAILED, f"{progress.message} (waited {ROUTE_TIMEOUT:.0f} s)")
        return progress

    def leave_canary(self, timeout: float = LEAVE_TIMEOUT) -> None:
        """Every request to stable, waited for until the gateway has programmed it (at most
        `timeout`): what a rollout that ends does before its canary goes. A gateway still
        naming the canary's Service while its pods leave fails requests (Traefik cannot build
        a shadow step's mirror without the canary's endpoints, and drops the route using it)."""
        _, route = self.set(Split())
        deadline = time.monotonic() + timeout
        while route_progress(route).state is State.WAITING and time.monotonic() < deadline:
            time.sleep(LEAVE_POLL)
            route = self.read()

    def prepare(self) -> None:
        """The gateway's own objects, made as a canary starts (seconds before any route names
        them), each doing nothing yet."""
        if self.traffic.implementation == TRAEFIK:
            self._traefik_objects(Split(), self._port(self.stable_service))

    # --- Traefik's own objects ---------------------------------------------------------------

    def _traefik_objects(self, split: Split, port: int) -> None:
        if self.traffic.retries:
            self._ensure(MIDDLEWARES, "Middleware", resend_name(self.name), resend(self.traffic))
        # Outside shadow steps it mirrors nothing: naming the canary's Service while no canary
        # runs, it would fail to build in Traefik.
        mirrors = [{"name": self.canary_service, "port": port, "percent": split.mirror}]
        self._ensure(TRAEFIK_SERVICES, "TraefikService", mirror_name(self.name), {"mirroring": {
            "name": self.stable_service, "port": port,
            "mirrors": mirrors if split.mirror else []}})  # fmt: skip

    def _ensure(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        """Create the object, or bring its spec to `spec`. Owned by the ModelRollout: it goes
        when the rollout resource does."""
        kube, api = self.kube, (TRAEFIK_GROUP, TRAEFIK_VERSION, self.kube.namespace, plural)
        try:
            live = kube.call(kube.custom.get_namespaced_custom_object, *api, name)
        except NotFound:
            body = {
                "apiVersion": f"{TRAEFIK_GROUP}/{TRAEFIK_VERSION}",
                "kind": kind,
                "metadata": {"name": name, "ownerReferences": [self.owner]},
                "spec": spec,
            }
            kube.call(kube.custom.create_namespaced_custom_object, *api, body)
            return
        if live.get("spec") != spec:
            kube.call(kube.custom.patch_namespaced_custom_object, *api, name, {"spec": spec})
