"""One reconcile of a ModelRollout: read it and the cluster, take the next step, write status.

Level-triggered: nothing here remembers the last call but the scrapes that open a canary
step's window (lost on a restart: the step is judged again). Each step is one that can be
taken twice: it looks at what is live before it changes anything, and writes what it intends
to status before it acts, so a controller killed at any instant is followed by one that
carries on: a canary resumes at its step, a promotion or an abort half done is finished."""

import copy
import logging
from typing import Any

from kubernetes import client
from kubernetes.client import V1Deployment

from mlscale.rollout import canary, rolling
from mlscale.rollout.gate import quality_gate
from mlscale.rollout.history import record
from mlscale.rollout.kube import Kube, Refused
from mlscale.rollout.progress import Done, Failed, Outcome, Wait
from mlscale.rollout.release import Release, name_of
from mlscale.rollout.resource import (
    ABORT,
    ABORTED,
    API_VERSION,
    DEGRADED,
    GROUP,
    HEALTHY,
    KIND,
    PAUSED,
    PLURAL,
    PROGRESSING,
    PROMOTE,
    REQUESTS,
    RETRY,
    VERSION,
    Spec,
    condition,
    now_iso,
    request_annotation,
)
from mlscale.rollout.traffic import Route, Split

log = logging.getLogger("mlscale.operator")
RESYNC = 30.0  # seconds between looks at a rollout with nothing under way
# The status fields of a rollout under way, as they are once none is.
NO_ROLLOUT: dict[str, Any] = {
    "rollout": None,
    "canaryVersion": None,
    "canaryImage": None,
    "currentStep": None,
    "currentWeight": 0,
    "currentMirror": None,
    "trafficSplit": None,
}


class Rollout:
    """A ModelRollout as one reconcile sees it: its spec, and a working copy of its status
    that `commit` writes (with the events said since the last commit)."""

    def __init__(self, kube: Kube, obj: dict[str, Any], reporter: str) -> None:
        self.kube, self.reporter = kube, reporter
        meta = obj["metadata"]
        self.name, self.uid = meta["name"], meta["uid"]
        self.generation = int(meta.get("generation", 1))
        self.annotations: dict[str, str] = meta.get("annotations") or {}
        self.spec = Spec.parse(obj["spec"])
        self.status: dict[str, Any] = copy.deepcopy(obj.get("status") or {})
        self.written = copy.deepcopy(self.status)
        self.reason = ""  # the Healthy condition's reason, when it is not the phase's own
        self.events: list[tuple[str, str, str]] = []

    def route(self, release: Release, stable: V1Deployment) -> Route | None:
        """The release's HTTPRoute, where traffic goes through a gateway; None where it is split
        by replica ratio. Objects the controller makes for it are owned by this resource."""
        if not self.spec.traffic.gateway:
            return None
        owner = {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid,
                 "controller": True}  # fmt: skip
        return Route(release, stable, self.spec.traffic, owner)

    def asked(self, verb: str) -> bool:
        """A request annotation (abort, promote, retry) not acted on yet."""
        value = self.annotations.get(request_annotation(verb))
        return value is not None and value != self.status.get("handled", {}).get(verb)

    def handled(self, verb: str) -> None:
        """Record the request as acted on (or as moot: a promote with nothing running)."""
        if (value := self.annotations.get(request_annotation(verb))) is not None:
            self.status["handled"] = {**self.status.get("handled", {}), verb: value}

    def say(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message, "Warning" if warning else "Normal"))
        log.info("%s/%s %s: %s", self.kube.namespace, self.name, reason, message)

    def set(self, phase: str, message: str | None = None, **fields: Any) -> None:
        self.status["phase"] = phase
        if message is not None:
            self.status["message"] = message
        self.status.update(fields)

    def commit(self) -> None:
        """Write the events said, then the status (only if it changed)."""
        status = self.status
        phase, message = status.get("phase", PROGRESSING), status.get("message", "")
        status["observedGeneration"] = self.generation
        before = (self.written.get("phase"), self.written.get("message"))
        if self.reason or (phase, message) != before or "conditions" not in status:
            # Else a resync of a decided rollout: its conditions keep the reason it ended with.
            conditions = status.get("conditions", [])
            reason = self.reason or {HEALTHY: "Serving", PROGRESSING: "RollingOut"}.get(
                phase, phase
            )
            for kind, true in (
                (HEALTHY, phase == HEALTHY),
                (PROGRESSING, phase in (PROGRESSING, PAUSED)),
                (PAUSED, phase == PAUSED),
            ):
                conditions = condition(conditions, kind, true, reason, message, self.generation)
            status["conditions"] = conditions
        # The events first: whoever sees the status change finds its story already told.
        for reason, message, kind in self.events:
            self._event(reason, message, kind)
        self.events.clear()
        if status != self.written:
            # A merge patch: keys set to None (a finished rollout) are removed.
            patch = {k: v for k, v in status.items() if self.written.get(k) != v}
            patch.update({k: None for k in self.written if k not in status})
            self.kube.call(
                self.kube.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, self.kube.namespace, PLURAL, self.name, {"status": patch},
            )  # fmt: skip
            self.written = copy.deepcopy(status)

    def _event(self, reason: str, message: str, kind: str) -> None:
        """A core/v1 Event on the resource, for `kubectl describe`; best effort."""
        now = now_iso()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{self.name}."),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION,
                kind=KIND,
                name=self.name,
                namespace=self.kube.namespace,
                uid=self.uid,
            ),
            reason=reason,
            message=message[:1024],
            type=kind,
            source=client.V1EventSource(component="mlscale-operator"),
            reporting_component="mlscale.dev/operator",
            reporting_instance=self.reporter,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.kube.call(self.kube.core.create_namespaced_event, self.kube.namespace, body)
        except Exception as exc:  # an event lost is no reason to stop a rollout
            log.warning("could not record event %s: %s", reason, exc)


class Reconciler:
    def __init__(self, kube: Kube, reporter: str = "mlscale-operator") -> None:
        self.kube, self.reporter = kube, reporter
        self.windows: dict[str, canary.Windows] = {}  # per rollout uid

    def forget(self, uid: str) -> None:
        self.windows.pop(uid, None)

    def reconcile(self, obj: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Take the next step for one ModelRollout: seconds until it should be looked at
        again, and the status written."""
        ro = Rollout(self.kube, obj, self.reporter)
        after = self._step(ro)
        ro.commit()
        return after, ro.status

    def _step(self, ro: Rollout) -> float:
        run = ro.status.get("rollout")
        # A rollout under way moves the model it started with, even if the spec names another.
        release = Release(self.kube, ro.name, run.get("model", "") if run else ro.spec.model)
        try:
            stable = release.stable()
        except Refused as exc:
            ro.reason = "ReleaseNotFound"
            ro.set(DEGRADED, str(exc))
            return RESYNC
        want = (ro.spec.version, ro.spec.model_image or "")
        if run and (run["version"], run.get("image", ""), release.model) != (*want, ro.spec.model):
            ro.say("Superseded", f"spec changed to version {ro.spec.version} during the rollout "
                   f"of {run['version']}: aborting it, then starting the new one")  # fmt: skip
            self._end(ro, release, stable, ABORTED, "aborted", f"superseded by {ro.spec.version}")
            ro.status.pop("failedGeneration", None)
            ro.set(PROGRESSING, f"starting version {ro.spec.version}")  # at the next look
            return 0
        if run and ro.asked(ABORT):
            ro.handled(ABORT)
            self._end(ro, release, stable, ABORTED, "aborted", "aborted by request")
            return RESYNC
        if run:
            return self._advance(ro, release, stable, run)
        for verb in REQUESTS:  # nothing running: nothing to abort or promote
            if verb != RETRY:
                ro.handled(verb)
        live = (release.version_of(stable), release.image_of(stable) or "")
        if want == live:
            self._remove_orphan(ro, release, stable)
            ro.status.pop("failedGeneration", None)
            ro.set(HEALTHY, f"serving version {live[0]}", stableVersion=live[0],
                   stableImage=live[1], **NO_ROLLOUT)  # fmt: skip
            return RESYNC
        if ro.status.get("failedGeneration") == ro.generation and not ro.asked(RETRY):
            return RESYNC  # decided: tried again when the spec changes, or on a retry
        ro.handled(RETRY)
        self._start(ro, release, stable, live)
        return 0

    def _start(
        self, ro: Rollout, release: Release, stable: V1Deployment, live: tuple[str, str]
    ) -> None:
        spec = ro.spec
        self._remove_orphan(ro, release, stable)
        run: dict[str, Any] = {
            "strategy": spec.strategy,
            "model": spec.model,
            "version": spec.version,
            "image": spec.model_image or "",
            "previousVersion": live[0],
            "previousImage": live[1],
            "startedAt": now_iso(),
            "waitingSince": now_iso(),
            "step": 0,
            "gated": not spec.gate,
        }
        try:
            release.check_model(stable)
        except Refused as exc:
            return self._refuse(ro, run, str(exc))
        route = ro.route(release, stable)
        if route is not None and (why := route.unusable()) is not None:
            return self._refuse(ro, run, f"traffic cannot move through the gateway: {why}")
        if spec.model_image and not live[1]:
            return self._refuse(ro, run, f"{name_of(stable)} serves the models of its server "
                                "image (installed without model.image): a model image cannot be "
                                "rolled onto it; install with model.image")  # fmt: skip
        if spec.gate:
            try:
                store = release.store_versions()
                if spec.model_image:  # its metrics come from its own pod, once one runs
                    run["baselineMetrics"] = store.get(live[0], {})
                else:
                    quality_gate(store, live[0], spec.version, spec.max_regression)
                    run["gated"] = True
            except Refused as exc:
                return self._refuse(ro, run, str(exc))
        how = "canary" if spec.strategy == "Canary" else "rolling update"
        ro.say("RolloutStarted", f"{how}: version {live[0]} -> {spec.version}"
               + (f" ({spec.model_image})" if spec.model_image else ""))  # fmt: skip
        ro.set(PROGRESSING, f"{how} of version {spec.version} started", rollout=run,
               stableVersion=live[0], stableImage=live[1], canaryVersion=spec.version,
               canaryImage=spec.model_image or "")  # fmt: skip
        ro.commit()  # the intent first: a successor finds the rollout even if we die now

    @staticmethod
    def _remove_orphan(ro: Rollout, release: Release, stable: V1Deployment) -> None:
        """A canary no rollout in the status knows of: its controller died between creating
        it and recording that (or it was made by hand); and a route that still sends it
        requests."""
        if (route := ro.route(release, stable)) is not None and route.set(Split())[0]:
            ro.say("RouteReset", f"HTTPRoute {route.name}: every request to stable")
        if (orphan := canary.remove(release)) is not None:
            ro.say("CanaryRemoved", f"removed {orphan}, left by an earlier rollout")

    def _refuse(self, ro: Rollout, run: dict[str, Any], why: str) -> None:
        ro.reason = "Refused"
        ro.say("Refused", why, warning=True)
        record(ro.status, run, "refused", why)
        ro.set(DEGRADED, f"version {run['version']} refused: {why}",
               failedGeneration=ro.generation)  # fmt: skip

    def _advance(
        self, ro: Rollout, release: Release, stable: V1Deployment, run: dict[str, Any]
    ) -> float:
        windows = self.windows.setdefault(ro.uid, {})
        outcome: Outcome
        try:
            if run["strategy"] == "Canary":
                promote = ro.asked(PROMOTE)
                ro.handled(PROMOTE)
                outcome = canary.advance(
                    release, stable, ro.status, ro.spec, windows, ro.say,
                    ro.route(release, stable), promote,
                )  # fmt: skip
            else:
                outcome = rolling.advance(
                    release, stable, run, ro.spec.timeout, ro.spec.max_regression
                )
        except Refused as exc:  # the quality gate of a model image, read from its pod
            outcome = Failed(str(exc))
        if isinstance(outcome, Wait):
            ro.set(PAUSED if outcome.paused else PROGRESSING, outcome.message)
            return outcome.seconds
        if isinstance(outcome, Done):
            return self._succeed(ro, release, run, outcome.message)
        promoting = run.get("promoting")
        if run["strategy"] == "Canary":
            why = (
                "it passed its analysis, but promoting it failed: " if promoting else ""
            ) + outcome.reason
            self._end(ro, release, stable, ABORTED, "aborted", why)
        else:
            self._end(ro, release, stable, DEGRADED, "rolled-back", outcome.reason)
        return RESYNC

    def _succeed(self, ro: Rollout, release: Release, run: dict[str, Any], message: str) -> float:
        if (gone := canary.remove(release)) is not None:
            ro.say("CanaryRemoved", f"removed {gone}")
        record(ro.status, run, "succeeded", "")
        ro.say("Promoted" if run["strategy"] == "Canary" else "RolledOut", message)
        ro.set(HEALTHY, f"serving version {run['version']} ({message})",
               stableVersion=run["version"], stableImage=run.get("image", ""),
               **NO_ROLLOUT)  # fmt: skip
        self.forget(ro.uid)
        return RESYNC

    def _end(
        self,
        ro: Rollout,
        release: Release,
        stable: V1Deployment,
        phase: str,
        outcome: str,
        why: str,
    ) -> None:
        """Abort or roll back: the canary goes, stable returns to the version it served when
        the rollout began (a no-op unless a rolling update or a promotion had moved it)."""
        run = ro.status["rollout"]
        back, image = run["previousVersion"], run.get("previousImage") or None
        if (route := ro.route(release, stable)) is not None:
            try:  # requests leave the canary before it goes (it drains what is in flight)
                route.leave_canary()
            except Refused as exc:  # no route, or no Service to send stable's requests to
                ro.say("RouteNotReset", str(exc), warning=True)
        if (gone := canary.remove(release)) is not None:
            ro.say("CanaryRemoved", f"removed {gone}")
        live = release.version_of(stable)
        if live != back or (image and release.image_of(stable) != image):
            release.set_version(name_of(stable), back, expected=live, model_image=image)
            ro.say("RolledBack", f"{name_of(stable)}: back to version {back}", warning=True)
        record(ro.status, run, outcome, why)
        verb = "canary aborted" if phase == ABORTED else "rolled back"
        ro.reason = "Aborted" if phase == ABORTED else "RolledBack"
        ro.say(ro.reason, f"version {run['version']}: {why}", warning=True)
        ro.set(phase, f"version {run['version']} {verb}: {why}; stable serves {back}",
               stableVersion=back, stableImage=run.get("previousImage", ""),
               failedGeneration=ro.generation, **NO_ROLLOUT)  # fmt: skip
        self.forget(ro.uid)
