"""Model images (`mlscale package`) as the CLI sees them: which model and version one holds,
read from the image's manifest label in the local container engine."""

import json
import subprocess

from mlscale.rollout.kube import Refused
from mlscale.service.artifacts.engine import engine
from mlscale.service.artifacts.manifest import Manifest
from mlscale.service.contract import MANIFEST_LABEL


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


def image_version(image: str) -> str:
    """The version a local model image holds, from its manifest label: what `--model-image`
    alone rolls out. The controller checks the rest on the image's own pods."""
    manifest = read_manifest(image)
    if manifest is None:
        raise Refused(
            f"model image {image} is not in the local container engine, so the version it "
            "holds cannot be read: pull it (or build it with mlscale package), or pass --version"
        )
    return manifest.version
