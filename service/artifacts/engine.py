"""The container engine's CLI, for building model images (`package.py`) and reading their
labels (the rollout CLI). Serving never needs it: the server image leaves this out."""

import os
import shutil

from mlscale.service.contract import DOCKER_ENV
from mlscale.service.errors import StoreError


def engine() -> str:
    """The container engine's CLI: $MLSCALE_DOCKER, else docker on PATH."""
    found = os.environ.get(DOCKER_ENV) or shutil.which("docker")
    if not found:
        raise StoreError(
            "no container engine: install Docker (or set MLSCALE_DOCKER to its CLI); in this "
            "repository, scripts/docker-engine.sh installs and starts one"
        )
    return found
