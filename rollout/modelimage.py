"""Model images (`mlscale package`) as the operator sees them: which model and version one
holds, and that version's offline metrics, read from the image's manifest label in the local
container engine, before any pod runs it."""

import json
import subprocess
from dataclasses import dataclass

from mlscale.rollout.kube import Refused
from mlscale.service.contract import MANIFEST_LABEL
from mlscale.service.package import engine
from mlscale.service.store import Manifest


@dataclass(frozen=True)
class Candidate:
    """What a rollout moves to: a version, and the model image holding it (None: the version
    comes from the server image's own store)."""

    version: str
    image: str | None = None
    metrics: dict[str, float] | None = None  # from the image's manifest; None: ask a pod


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


def candidate(model: str, version: str | None, image: str | None, force: bool) -> Candidate:
    """Check a model image against the release's model and the version asked for; the
    version defaults to the one the image holds."""
    if image is None:
        if version is None:
            raise Refused("say which version to roll out: --version V (or --model-image IMAGE)")
        return Candidate(version)
    manifest = read_manifest(image)
    if manifest is None:
        if not force or version is None:
            raise Refused(
                f"model image {image} is not in the local container engine, so its version and "
                "metrics cannot be checked: pull it (or build it with mlscale package), or pass "
                "--version with --force"
            )
        return Candidate(version, image)
    if manifest.name != model:
        raise Refused(f"{image} holds model {manifest.name!r}; this release serves {model!r}")
    if version is not None and version != manifest.version:
        raise Refused(f"{image} holds version {manifest.version}, not {version}")
    return Candidate(manifest.version, image, manifest.metrics)
