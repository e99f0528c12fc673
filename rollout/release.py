"""A Helm release of mlscale as the operator sees it: its Deployments (stable, and a canary
while one runs), their pods, and what the pods say about themselves through the pod proxy."""

import json
from dataclasses import dataclass
from typing import Any

from kubernetes.client import V1Deployment, V1Pod, V1PodSpec, V2HorizontalPodAutoscaler

from mlscale.rollout.kube import ClusterError, Kube, Refused
from mlscale.service.contract import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    MODEL_CONTAINER,
    MODEL_NAME_ENV,
    MODELS_ANNOTATION,
    MODELS_ENV,
    SERVER_COMPONENT,
    SERVER_CONTAINER,
    SERVER_PORT,
    STORE_VERSIONS,
    format_models,
    parse_models,
)
from mlscale.service.contract import MODEL_IMAGE_ANNOTATION as MODEL_IMAGE
from mlscale.service.contract import MODEL_METADATA as METADATA
from mlscale.service.contract import MODEL_VERSION_ENV as VERSION_ENV
from mlscale.service.contract import TRACK_LABEL as TRACK
from mlscale.service.contract import VERSION_LABEL as VERSION


def name_of(obj: V1Deployment | V1Pod) -> str:
    """An object's name. The client types every field optional; objects read from the API
    server always have one."""
    assert obj.metadata is not None and obj.metadata.name is not None
    return obj.metadata.name


def pod_spec(deployment: V1Deployment) -> V1PodSpec:
    assert deployment.spec is not None and deployment.spec.template.spec is not None
    return deployment.spec.template.spec


def env(deployment: V1Deployment, name: str) -> str | None:
    container = pod_spec(deployment).containers[0]
    return next((e.value for e in container.env or [] if e.name == name), None)


# A release's pods serve a set of models (the chart's model.name, then model.others). A rollout
# moves one of them, named by `model`: "" (or the first model's name) is the first, whose
# version has its own variable, label and annotation; the others' versions are entries of
# MODELS_ENV, and their model images init containers of their own.


def first_model(deployment: V1Deployment, model: str) -> bool:
    return not model or model == env(deployment, MODEL_NAME_ENV)


def other_models(deployment: V1Deployment) -> dict[str, str]:
    """The other models of the set and their versions."""
    return parse_models(env(deployment, MODELS_ENV) or "")


def pod_models(pod: V1Pod) -> dict[str, str]:
    """The other models of the set a pod serves, and their versions."""
    annotations = (pod.metadata.annotations if pod.metadata else None) or {}
    return parse_models(annotations.get(MODELS_ANNOTATION, ""))


def version_of(deployment: V1Deployment, model: str = "") -> str:
    """The version of `model` a Deployment serves; "" for a model outside its set."""
    if first_model(deployment, model):
        return env(deployment, VERSION_ENV) or ""
    return other_models(deployment).get(model, "")


def model_container(deployment: V1Deployment, model: str) -> str:
    return MODEL_CONTAINER if first_model(deployment, model) else f"{MODEL_CONTAINER}-{model}"


def model_image_of(deployment: V1Deployment, model: str = "") -> str | None:
    """The model image a Deployment's pods copy `model`'s version from; None without one."""
    init = pod_spec(deployment).init_containers or []
    name = model_container(deployment, model)
    return next((c.image for c in init if c.name == name), None)


def canary_name(stable: V1Deployment) -> str:
    """The canary Deployment's name, derived from the stable one's."""
    return f"{name_of(stable)}-canary"


def strategic_merge(target: Any, patch: Any) -> Any:
    """Merge a version patch into a plain Deployment body: dicts recursively, containers and
    env entries by name (as the API server's strategic merge does for these fields)."""
    if isinstance(target, dict) and isinstance(patch, dict):
        return {**target, **{k: strategic_merge(target.get(k), v) for k, v in patch.items()}}
    if isinstance(target, list) and isinstance(patch, list):
        merged = list(target)
        for item in patch:
            at = next((i for i, t in enumerate(merged) if t.get("name") == item.get("name")), None)
            if at is None:
                merged.append(item)
            else:
                merged[at] = strategic_merge(merged[at], item)
        return merged
    return patch


def pod_ready(pod: V1Pod) -> bool:
    statuses = (pod.status.container_statuses or []) if pod.status else []
    return bool(statuses) and all(s.ready for s in statuses)


def version_patch(
    current: V1Deployment,
    version: str,
    model: str = "",
    model_image: str | None = None,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """Strategic-merge patch moving `current` (a Deployment) to `version` of `model` (env,
    label, annotations), and to the model image holding it where there is one (its init
    container, annotation). The other models of the set keep their versions.

    With a resourceVersion the write is conditional: a concurrent change makes it fail with
    409, and the caller retries on a fresh read."""
    metadata: dict[str, Any] = {"annotations": {}}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    template: dict[str, Any] = {"metadata": {"annotations": {}}}
    if first_model(current, model):
        variable = {"name": VERSION_ENV, "value": version}
        metadata["annotations"] = {VERSION: version, **({MODEL_IMAGE: model_image} if model_image
                                                       else {})}  # fmt: skip
        template["metadata"] = {"labels": {VERSION: version}, "annotations": {VERSION: version}}
    else:
        value = format_models({**other_models(current), model: version})
        variable = {"name": MODELS_ENV, "value": value}
        template["metadata"]["annotations"] = {MODELS_ANNOTATION: value}
    pod: dict[str, Any] = {"containers": [{"name": SERVER_CONTAINER, "env": [variable]}]}
    if model_image:
        pod["initContainers"] = [{"name": model_container(current, model), "image": model_image}]
    return {"metadata": metadata, "spec": {"template": {**template, "spec": pod}}}


@dataclass
class Release:
    kube: Kube
    name: str
    model: str = ""  # the model of the set a rollout moves; "": the first

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def selector(self, track: str | None = None) -> str:
        base = f"{INSTANCE_LABEL}={self.name},{COMPONENT_LABEL}={SERVER_COMPONENT}"
        return f"{base},{TRACK}={track}" if track else base

    def stable(self) -> V1Deployment:
        found = self.kube.call(
            self.kube.apps.list_namespaced_deployment,
            self.namespace,
            label_selector=self.selector("stable"),
        ).items
        if len(found) != 1:
            raise Refused(
                f"release '{self.name}' not found in namespace {self.namespace} "
                f"({len(found)} stable Deployments); is it installed with the mlscale chart?"
            )
        return found[0]

    def canary(self) -> V1Deployment | None:
        found = self.kube.call(
            self.kube.apps.list_namespaced_deployment,
            self.namespace,
            label_selector=self.selector("canary"),
        ).items
        return found[0] if found else None

    def hpa(self) -> V2HorizontalPodAutoscaler | None:
        """The HorizontalPodAutoscaler that drives the stable Deployment, if there is one."""
        stable = name_of(self.stable())
        found = self.kube.call(
            self.kube.autoscaling.list_namespaced_horizontal_pod_autoscaler, self.namespace
        ).items
        return next((h for h in found if h.spec.scale_target_ref.name == stable), None)

    def model_name(self) -> str:
        return self.model or env(self.stable(), MODEL_NAME_ENV) or ""

    def version_of(self, deployment: V1Deployment) -> str:
        """The version of the rolled model a Deployment serves."""
        return version_of(deployment, self.model)

    def image_of(self, deployment: V1Deployment) -> str | None:
        """The model image of the rolled model a Deployment's pods copy; None without one."""
        return model_image_of(deployment, self.model)

    def check_model(self, stable: V1Deployment) -> None:
        """Refuse a model outside the release's set, naming the set."""
        if not first_model(stable, self.model) and self.model not in other_models(stable):
            served = ", ".join([env(stable, MODEL_NAME_ENV) or "", *other_models(stable)])
            raise Refused(f"release '{self.name}' serves no model '{self.model}'; it serves "
                          f"{served} (the chart's model.name and model.others)")  # fmt: skip

    def pods(self, track: str | None = None, version: str | None = None) -> list[V1Pod]:
        """The pods of a track (None: both) that are not terminating; with a version, those
        serving that version of the rolled model."""
        first = not (version and self.model) or first_model(self.stable(), self.model)
        by_label = f",{VERSION}={version}" if version and first else ""
        pods = self.kube.call(
            self.kube.core.list_namespaced_pod, self.namespace,
            label_selector=self.selector(track) + by_label,
        ).items  # fmt: skip
        pods = [p for p in pods if p.metadata.deletion_timestamp is None]
        if not first:  # the other models' versions are in an annotation
            pods = [p for p in pods if pod_models(p).get(self.model) == version]
        return pods

    def proxy_get(self, pod: str, path: str) -> str:
        """GET a path on a pod's port 8080, through the API server's pod proxy."""
        # Raw bytes: asked to deserialize, the client turns a JSON answer into a Python repr
        # of a dict rather than the text.
        response = self.kube.call(
            self.kube.core.connect_get_namespaced_pod_proxy_with_path,
            f"{pod}:{SERVER_PORT}",
            self.namespace,
            path.lstrip("/"),
            _preload_content=False,
        )
        return response.data.decode()

    def served_version(self, pod: str, model: str) -> str:
        body = json.loads(self.proxy_get(pod, METADATA.format(name=model)))
        return str(body.get("parameters", {}).get("version", ""))

    def store_versions(
        self, track: str = "stable", version: str | None = None
    ) -> dict[str, dict[str, float]]:
        """Versions in a pod's model store, with their offline metrics: a Ready pod of the
        track (and version), asked through the pod proxy."""
        model = self.model_name()
        for pod in self.pods(track, version):
            if pod_ready(pod):
                text = self.proxy_get(name_of(pod), STORE_VERSIONS.format(name=model))
                return {v["version"]: v["metrics"] for v in json.loads(text)["versions"]}
        raise ClusterError(f"no ready {track} pod to ask which versions its store holds")

    def set_version(
        self, deployment: str, version: str, expected: str, model_image: str | None = None
    ) -> None:
        """Move the Deployment to `version`, provided it still serves `expected` (the version
        the caller decided from). The patch is conditional on the read that checked it: a
        concurrent write makes it read and check again. Changes to anything else (the HPA's
        replica count) are no reason to stop; a version someone else set is."""
        kube = self.kube

        def attempt() -> None:
            current = kube.call(kube.apps.read_namespaced_deployment, deployment, kube.namespace)
            if (live := self.version_of(current)) != expected:
                raise Refused(
                    f"{deployment} changed while the rollout was deciding: it serves version "
                    f"{live}, not {expected}; nothing was changed"
                )
            patch = version_patch(current, version, self.model, model_image,
                                  current.metadata.resource_version)  # fmt: skip
            kube.call(kube.apps.patch_namespaced_deployment, deployment, kube.namespace, patch)

        kube.retry_on_conflict(attempt)

    def wrong_version(self, version: str, track: str) -> str | None:
        """Ask every ready pod of the track which version it serves; say which one is wrong,
        or does not answer. (A pod that is not ready may not listen yet: it is not asked.)"""
        model = self.model_name()
        for pod in self.pods(track):
            if not pod_ready(pod):
                continue
            try:
                served = self.served_version(name_of(pod), model)
            except ClusterError as exc:  # Ready, yet it cannot say: not a pod to route users to
                return f"pod {name_of(pod)} did not say which version it serves ({exc})"
            if served != version:
                return f"pod {name_of(pod)} serves version {served!r}, not {version!r}"
        return None
