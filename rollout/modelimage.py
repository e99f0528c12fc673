"""Model images (`mlscale package`) as the CLI sees them: which model and version one holds,
and on which runtime, read from the image's manifest label in the local container engine."""

import json
import subprocess

from kubernetes.client import V1Deployment

from mlscale.rollout.kube import Refused
from mlscale.rollout.release import env
from mlscale.service.artifacts.engine import engine
from mlscale.service.artifacts.manifest import ONNX, SKLEARN, Manifest
from mlscale.service.contract import MANIFEST_LABEL, RUNTIME_ENV


def read_manifest(ref: str) -> Manifest | None:
    """The manifest label of a local image; None when the engine does not have the image."""
    inspect = [engine(), "image", "inspect", "--format", "{{json .Config.Labels}}", ref]
    result = subprocess.run(inspect, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    label = (json.loads(result.stdout) or {}).get(MANIFEST_LABEL)
    if label is None:
        raise Refused(f"{ref} is not a model image (no {MANIFEST_LABEL} label); build one with "
                      "mlscale package NAME:VERSION")  # fmt: skip
    return Manifest.model_validate_json(label)


def refuse_onto_slim(manifest: Manifest, stable: V1Deployment) -> None:
    """A version that runs on scikit-learn cannot go onto the slim image: its server would
    refuse to load it, so the rollout is refused before anything changes."""
    if manifest.runtime == SKLEARN and env(stable, RUNTIME_ENV) == ONNX:
        raise Refused(
            f"{manifest.name}/{manifest.version} runs on scikit-learn (it was not compiled when "
            "published), and this release runs the slim image, which serves compiled versions "
            "only, without scikit-learn: publish it again with --runtime onnx and package it, "
            "or set the chart's image.slim=false"
        )


def image_version(image: str, manifest: Manifest | None) -> str:
    """The version a local model image holds (`manifest`: its label, None where the engine
    lacks it): what `--model-image` alone rolls out. The controller checks the rest on the
    image's own pods."""
    if manifest is None:
        raise Refused(
            f"model image {image} is not in the local container engine, so the version it "
            "holds cannot be read: pull it (or build it with mlscale package), or pass --version"
        )
    return manifest.version
