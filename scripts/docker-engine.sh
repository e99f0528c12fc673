#!/usr/bin/env bash
# Make sure a Docker engine answers. Where none runs and we are root on Debian/Ubuntu, install
# Debian's docker.io and start dockerd. Prints the docker CLI to use (one with BuildKit).
#
# On a host whose capability bounding set lacks a capability (some VMs drop CAP_SYS_RESOURCE),
# `docker run --privileged` fails and so does kind; there, as root, register scripts/runc-bounded
# as Docker's default runtime (see that file). Elsewhere Docker's configuration is left alone.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SHIM=/usr/local/lib/mlscale/runc-bounded
DAEMON_JSON=/etc/docker/daemon.json

caps_restricted() {
  local bounding last
  bounding=$(sed -n 's/^CapBnd:\t//p' /proc/self/status)
  last=$(cat /proc/sys/kernel/cap_last_cap)
  [ $((0x$bounding + 1)) != $((1 << (last + 1))) ]
}

# Writes the runtime into daemon.json; prints "changed" when dockerd must (re)load it.
configure_bounded_runtime() {
  caps_restricted && [ "$(id -u)" = 0 ] || return 0
  if ! cmp -s "$HERE/runc-bounded" "$SHIM"; then install -D -m 0755 "$HERE/runc-bounded" "$SHIM"; fi
  mkdir -p "$(dirname "$DAEMON_JSON")"
  python3 - "$DAEMON_JSON" "$SHIM" <<'PY'
import json, os, sys
path, shim = sys.argv[1:]
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
want = {**config, "runtimes": {**config.get("runtimes", {}), "runc-bounded": {"path": shim}},
        "default-runtime": "runc-bounded"}
if want != config:
    json.dump(want, open(path, "w"), indent=2)
    print("changed")
PY
}

pick_cli() {
  # BuildKit (needed for the build secret) comes with buildx on Docker CE, and built in with
  # Debian's docker.io CLI at /usr/bin/docker.
  if docker buildx version >/dev/null 2>&1; then echo docker
  elif [ -x /usr/bin/docker ]; then echo /usr/bin/docker
  else echo docker
  fi
}

if docker info >/dev/null 2>&1 || { [ -x /usr/bin/docker ] && /usr/bin/docker info >/dev/null 2>&1; }; then
  if [ "$(configure_bounded_runtime)" = changed ]; then
    echo "docker-engine: registered runc-bounded as the default runtime; reloading dockerd" >&2
    pkill -HUP -x dockerd
  fi
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
configure_bounded_runtime >/dev/null
echo "docker-engine: starting dockerd (log: /tmp/dockerd.log)" >&2
(setsid dockerd >/tmp/dockerd.log 2>&1 &)
for _ in $(seq 120); do
  if /usr/bin/docker info >/dev/null 2>&1; then pick_cli; exit 0; fi
  sleep 0.5
done
echo "docker-engine: dockerd did not answer within 60 s; see /tmp/dockerd.log" >&2
exit 1
