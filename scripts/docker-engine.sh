#!/usr/bin/env bash
# Make sure a Docker engine answers. Where none runs and we are root on Debian/Ubuntu, install
# Debian's docker.io and start dockerd. Prints the docker CLI to use (one with BuildKit).
set -euo pipefail

pick_cli() {
  # BuildKit (needed for the build secret) comes with buildx on Docker CE, and built in with
  # Debian's docker.io CLI at /usr/bin/docker.
  if docker buildx version >/dev/null 2>&1; then echo docker
  elif [ -x /usr/bin/docker ]; then echo /usr/bin/docker
  else echo docker
  fi
}

if docker info >/dev/null 2>&1 || { [ -x /usr/bin/docker ] && /usr/bin/docker info >/dev/null 2>&1; }; then
  pick_cli
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "docker-engine: no Docker engine answers; start Docker (or run this as root on Debian/Ubuntu to install docker.io)" >&2
  exit 1
fi
if ! command -v dockerd >/dev/null; then
  echo "docker-engine: installing docker.io" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; } \
    >/tmp/docker-install.log 2>&1 || { cat /tmp/docker-install.log >&2; exit 1; }
fi
echo "docker-engine: starting dockerd (log: /tmp/dockerd.log)" >&2
(setsid dockerd >/tmp/dockerd.log 2>&1 &)
for _ in $(seq 120); do
  if /usr/bin/docker info >/dev/null 2>&1; then pick_cli; exit 0; fi
  sleep 0.5
done
echo "docker-engine: dockerd did not answer within 60 s; see /tmp/dockerd.log" >&2
exit 1
