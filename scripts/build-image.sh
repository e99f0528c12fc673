#!/usr/bin/env bash
# Build mlscale:<version>, its slim variant mlscale:<version>-slim (compiled models only) and the
# rollout controller's mlscale-operator:<version> (`make image`).
# Works with a normal Docker, and where no registry is reachable: then it builds a local Debian
# base with debootstrap and passes it as BASE_IMAGE. Prints the server image's tag.
#   BASE_IMAGE=...     use this base instead of the Dockerfile's default
#   TAG=...            server image tag (default mlscale:<project version>)
#   OPERATOR_TAG=...   operator image tag (default mlscale-operator:<the server tag>)
#   SLIM_TAG=...       slim server image tag (default <the server tag>-slim)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
TAG=${TAG:-mlscale:$VERSION}
OPERATOR_TAG=${OPERATOR_TAG:-mlscale-operator:${TAG##*:}}
SLIM_TAG=${SLIM_TAG:-$TAG-slim}
DOCKER=$(scripts/docker-engine.sh)
DEFAULT_BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
LOCAL_BASE=mlscale-base/debian-python:bookworm

if [ -z "${BASE_IMAGE:-}" ]; then
  if $DOCKER image inspect "$DEFAULT_BASE" >/dev/null 2>&1 || timeout 60 $DOCKER pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE_IMAGE=$DEFAULT_BASE
  else
    echo "build-image: $DEFAULT_BASE cannot be pulled; using a local Debian base ($LOCAL_BASE)" >&2
    if ! $DOCKER image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >/dev/null
      rootfs=$(mktemp -d)
      trap 'rm -rf "$rootfs"' EXIT
      echo "build-image: debootstrap bookworm (about a minute)" >&2
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        >/tmp/debootstrap.log 2>&1 || { tail -20 /tmp/debootstrap.log >&2; exit 1; }
      tar -C "$rootfs" -c . | $DOCKER import - "$LOCAL_BASE" >/dev/null
    fi
    BASE_IMAGE=$LOCAL_BASE
  fi
fi

secret=()
CA=${PIP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$CA" ] && secret=(--secret "id=pipcert,src=$CA")
build() {  # build TAG [docker build options]
  local tag=$1
  shift
  echo "build-image: $tag from $BASE_IMAGE" >&2
  DOCKER_BUILDKIT=1 $DOCKER build --progress=plain "${secret[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION" -t "$tag" "$@" . >&2
}
build "$TAG"
build "$OPERATOR_TAG" --target operator
build "$SLIM_TAG" --target slim
# The images these tags named before are left untagged (about 0.5 GB a build): remove ours.
$DOCKER image prune -f --filter "label=org.opencontainers.image.source=https://github.com/mlscale/mlscale" >/dev/null
echo "$TAG"
