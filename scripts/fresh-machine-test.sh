#!/usr/bin/env bash
# `make test-fresh-machine`: the README's two commands, run as a newcomer would, in a fresh
# Debian 12 container that has only python3, venv, git, make and curl (and root). It checks that
# each command fetches what it needs by itself and succeeds: `make demo` (which, with no Docker
# engine inside the container, says so and runs the local demo) and `make test` (whose Docker and
# cluster tests skip, saying why). Needs a Docker engine on this machine; takes ~15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=$(scripts/docker-engine.sh)
BASE=${BASE_IMAGE:-}
IMAGE=mlscale-fresh-debian:bookworm

if ! $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  if [ -z "$BASE" ]; then
    # The same local Debian base `make image` makes where no registry is reachable.
    BASE=$(sed -n 's/^LOCAL_BASE=//p' scripts/build-image.sh)
    $DOCKER image inspect "$BASE" >/dev/null 2>&1 || scripts/build-image.sh >/dev/null
  fi
  printf 'FROM %s\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git make curl python3-venv >/dev/null && rm -rf /var/lib/apt/lists/*\n' "$BASE" \
    | DOCKER_BUILDKIT=1 $DOCKER build -q -t "$IMAGE" - >/dev/null
fi

# The committed tree only, as a clone would have it.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git archive HEAD | tar -x -C "$src"

run() {
  local what=$1 start status
  start=$(date +%s)
  set +e
  $DOCKER run --rm -v "$src:/src:ro" -v /etc/ssl/certs:/etc/ssl/certs:ro "$IMAGE" bash -c \
    "cp -r /src /work && cd /work && $what" >"reports/fresh-machine-$2.log" 2>&1
  status=$?
  set -e
  echo "fresh-machine: '$what' exited $status after $(($(date +%s) - start)) s (log: reports/fresh-machine-$2.log)"
  return $status
}

mkdir -p reports
run "make demo" demo
grep -q "Running the local demo instead" "reports/fresh-machine-demo.log"
run "make test" test
tail -3 reports/fresh-machine-test.log
