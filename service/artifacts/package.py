"""Model images: one model version, shipped to a cluster without rebuilding the server.

`mlscale package NAME:VERSION` builds an image holding only `/models/NAME/VERSION/` (the
artifact and its manifest) on a small base that has `cp` (busybox). The chart runs it as an
init container that copies the version into an `emptyDir` the server reads as its store; the
server checks the artifact's sha256 against the manifest before it loads, as for any store.
The manifest also travels as an image label, so the rollout's quality gate reads the candidate's
offline metrics from the image itself, before any pod runs it.
"""

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlscale.service.artifacts.engine import engine
from mlscale.service.artifacts.manifest import Manifest
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.contract import MANIFEST_LABEL
from mlscale.service.errors import StoreError

# The public base users pull; where no registry is reachable, scripts/model-base.sh builds the
# local one from Debian's busybox-static package.
DEFAULT_BASE = "busybox:1.37"
LOCAL_BASE = "mlscale-base/busybox:bookworm"
IMAGE_DIR = "/models"  # where the model image keeps the store; the chart copies from it
DOCKERFILE = """\
ARG BASE_IMAGE={base}
FROM ${{BASE_IMAGE}}
LABEL org.opencontainers.image.title="mlscale model {name}:{version}" \\
      dev.mlscale.model.name="{name}" \\
      dev.mlscale.model.version="{version}"
COPY models {image_dir}
USER 10001:10001
CMD ["cp", "-R", "{image_dir}/.", "/mnt/models/"]
"""


@dataclass(frozen=True)
class Built:
    tag: str
    base: str
    manifest: Manifest


def has_image(docker: str, ref: str) -> bool:
    inspect = [docker, "image", "inspect", ref]
    return subprocess.run(inspect, capture_output=True).returncode == 0


def pick_base(docker: str, base: str | None) -> str:
    """The base asked for; else the public busybox if it is here or can be pulled; else the
    local one."""
    if base:
        return base
    if has_image(docker, DEFAULT_BASE):
        return DEFAULT_BASE
    pull = subprocess.run([docker, "pull", "-q", DEFAULT_BASE], capture_output=True, timeout=120)
    if pull.returncode == 0:
        return DEFAULT_BASE
    if has_image(docker, LOCAL_BASE):
        return LOCAL_BASE
    raise StoreError(
        f"the base image {DEFAULT_BASE} cannot be pulled and {LOCAL_BASE} is not built; run "
        "scripts/model-base.sh (builds it from Debian's busybox-static) or pass --base"
    )


def default_tag(name: str, version: str) -> str:
    return f"mlscale-model/{name}:{version}"


def package(store: ModelStore, name: str, version: str, tag: str | None = None,
            base: str | None = None) -> Built:  # fmt: skip
    """Build the model image of `name`/`version` from the store; the version is verified
    (sha256, scikit-learn version) first, so a damaged one is never shipped."""
    manifest = store.check(name, version)
    docker = engine()
    base = pick_base(docker, base)
    tag = tag or default_tag(name, manifest.version)
    with tempfile.TemporaryDirectory(prefix="mlscale-package-") as context:
        root = Path(context)
        shutil.copytree(
            store.root / name / manifest.version, root / "models" / name / manifest.version
        )
        (root / "Dockerfile").write_text(
            DOCKERFILE.format(base=base, name=name, version=manifest.version, image_dir=IMAGE_DIR)
        )
        build = [docker, "build", "-q", "-t", tag, "--build-arg", f"BASE_IMAGE={base}",
                 "--label", f"{MANIFEST_LABEL}={manifest.model_dump_json()}", context]  # fmt: skip
        result = subprocess.run(build, capture_output=True, text=True)
    if result.returncode != 0:
        raise StoreError(f"building {tag} failed:\n{result.stderr.strip()[-2000:]}")
    return Built(tag, base, manifest)
