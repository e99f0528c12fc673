#!/usr/bin/env bash
# The base of model images (`mlscale package`) where busybox cannot be pulled: Debian's
# statically linked busybox, alone in an image, imported as mlscale-base/busybox:bookworm.
# Reuses the image when it exists. Needs apt (Debian) and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=$(scripts/docker-engine.sh)
IMAGE=$(sed -n 's/^LOCAL_BASE = "\(.*\)"/\1/p' service/artifacts/package.py)
if $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download busybox-static >/dev/null 2>&1) \
  || { apt-get update -qq >/dev/null && (cd "$work" && apt-get download busybox-static >/dev/null); }
dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
mkdir -p "$work/root/bin" "$work/root/tmp"
cp "$work/deb/bin/busybox" "$work/root/bin/busybox"
for applet in sh cp ls cat sha256sum; do ln -s busybox "$work/root/bin/$applet"; done
chmod 1777 "$work/root/tmp"
tar -C "$work/root" -c . | $DOCKER import -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null
echo "model-base: built $IMAGE from $(basename "$work"/busybox-static_*.deb)" >&2
echo "$IMAGE"
