#!/usr/bin/env bash
# `make demo`, the main job. With Docker, helm and kubectl: a three-worker kind cluster (kind and
# its node image are built offline where they cannot be downloaded: make kind-images),
# the image and chart installed, a stepped load that makes the HPA add pods across the nodes,
# and a v1 -> v2 model rollout during the hold; then a summary and a report.
# Without them: says what is missing, then runs the same tools locally (train, serve, load, report).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export PATH="$PWD/.tools/bin:$PATH"

missing=()
for tool in helm kubectl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
# Starts (as root on Debian, installs) a Docker engine where none answers yet.
scripts/docker-engine.sh >/dev/null 2>&1 || missing+=("a running Docker engine")

if [ ${#missing[@]} -eq 0 ]; then
  scripts/kind.sh up
  scripts/build-image.sh >/dev/null
  scripts/kind.sh load
  scripts/kind.sh deploy
  # Back at version 1 on a re-run, so the rollout below has something to do.
  "$BIN/python" -m mlscale.rollout --context kind-mlscale deploy --version 1 --timeout 300
  exec "$BIN/python" -m mlscale.loadtest --url http://127.0.0.1:30090 --model iris --cluster \
    --release mlscale --namespace mlscale --context kind-mlscale \
    --users 60 --steps 4 --step-seconds 30 --hold-seconds 120 --down-seconds 20 \
    --rollout-version 2
fi

cat <<MESSAGE
make demo: the cluster demo needs ${missing[*]}.
  docker:  https://docs.docker.com/engine/install/  (Debian/Ubuntu as root: scripts/docker-engine.sh)
  helm, kubectl:  make tools
Running the local demo instead: train, serve, predict, load test, report.

MESSAGE
WITH_LOADTEST=1 BIN="$BIN" exec scripts/demo-local.sh
