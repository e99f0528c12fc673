#!/usr/bin/env bash
# `make kind-images`: build, from Go modules and Debian packages only, everything a kind cluster
# needs where no container registry can be reached:
#   - the kind binary;
#   - a kind node image for one pinned Kubernetes version, laid out as kind's own node image
#     (kind's base files, systemd, containerd, runc, CNI plugins, crictl, kubeadm/kubelet/kubectl)
#     with every image the node runs pre-imported into containerd's k8s.io namespace under the
#     names kubeadm and the manifests ask for;
#   - the add-on images: metrics-server, the node network agent (k8s/nodeimage/kind-net.yaml)
#     and its NetworkPolicy enforcement (kube-router's policy controller, kube-router.yaml),
#     the gateway (Traefik), with the CRDs it serves (Gateway API's and Traefik's own), and
#     Prometheus with prometheus-adapter (k8s/prometheus.yaml).
# Independent builds run side by side (Go builds wait on downloads and links, debootstrap on the
# network); on two cores that saved little in a cold build: compiling is most of it.
# Pins live in k8s/nodeimage/versions.env. Everything is cached under $MLSCALE_CACHE (default
# ~/.cache/mlscale) keyed by those pins, and nothing already built is built again.
#
# Usage: k8s/nodeimage/build.sh            build what is missing; print the node image's name
#        k8s/nodeimage/build.sh --print    print the node image's name and build nothing
#        k8s/nodeimage/build.sh --gateway-crds   print the gateway CRDs' file (after a build)
#        k8s/nodeimage/build.sh gateway-crds     only gather those CRDs (a cluster from kind's
#            public node image pulls Traefik's public image, and needs only them)
#        k8s/nodeimage/build.sh metrics-server-manifest   regenerate k8s/metrics-server.yaml
#        k8s/nodeimage/build.sh control-plane   only etcd, kube-apiserver and
#            kube-controller-manager, the gateway CRDs and Prometheus (the operator's tests run
#            them; no Docker needed)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
export PATH=/usr/local/go/bin:$PATH GOFLAGS=-trimpath CGO_ENABLED=0
CACHE=${MLSCALE_CACHE:-$HOME/.cache/mlscale}/nodeimage
BIN=$CACHE/bin
mkdir -p "$BIN"

# The node image's tag changes whenever a pin or a file that goes into the image changes.
key() {
  (
    cd "$HERE"
    cat versions.env Dockerfile kind-net.yaml kube-router.yaml
    if [ -d overlay ]; then find overlay -type f | sort | xargs cat; fi
  ) | sha256sum | cut -c1-12
}
NODE_IMAGE=mlscale/kind-node:$KUBERNETES_VERSION-$(key)
GATEWAY_CRDS=$CACHE/gateway-crds-$GATEWAY_API_VERSION-traefik-$TRAEFIK_VERSION.yaml
if [ "${1:-}" = --print ]; then echo "$NODE_IMAGE"; exit 0; fi
if [ "${1:-}" = --gateway-crds ]; then echo "$GATEWAY_CRDS"; exit 0; fi

log() { printf '\033[1m[kind-images]\033[0m %s\n' "$*" >&2; }
# step NAME CHECK-COMMAND BUILD-FUNCTION: run the build unless the check already passes, timed.
step() {
  local name=$1 check=$2 build=$3 start
  if eval "$check" >/dev/null 2>&1; then log "$name: cached"; return; fi
  log "$name: building ..."
  start=$(date +%s)
  "$build"
  log "$name: built in $(($(date +%s) - start)) s"
}

# --- Go binaries -------------------------------------------------------------------------
need_go() {
  command -v go >/dev/null || {
    echo "kind-images: needs Go (https://go.dev/dl/, or /usr/local/go/bin on PATH)" >&2
    exit 1
  }
}

kube_ldflags() {
  local minor=${KUBERNETES_VERSION#v1.} flags="-s -w" pkg
  minor=${minor%%.*}
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    # Without these kubeadm reads a placeholder version and picks images that do not exist.
    flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

KUBE_BIN=$BIN/kubernetes-$KUBERNETES_VERSION
KUBE_CMDS=(kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
build_kubernetes() {
  need_go
  rm -rf "$KUBE_BIN.tmp"
  (cd "$HERE/go/kubernetes" && go build -ldflags "$(kube_ldflags)" -o "$KUBE_BIN.tmp/" \
    "${KUBE_CMDS[@]/#/k8s.io/kubernetes/cmd/}")
  mv "$KUBE_BIN.tmp" "$KUBE_BIN"
}

ETCD_BIN=$BIN/etcd-$ETCD_VERSION
build_etcd() {
  need_go
  mkdir -p "$ETCD_BIN"
  (cd "$HERE/go/etcd" && go build -ldflags "-s -w" -o "$ETCD_BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
}

# go_install DIR PACKAGE@VERSION [go flags...]: modules without replace directives install as is.
go_install() {
  local dir=$1 pkg=$2
  shift 2
  need_go
  mkdir -p "$dir.tmp"
  GOBIN=$dir.tmp go install -ldflags "-s -w" "$@" "$pkg"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}
KIND_BIN=$BIN/kind-$KIND_VERSION
build_kind() { go_install "$KIND_BIN" "sigs.k8s.io/kind@$KIND_VERSION"; }
CRICTL_BIN=$BIN/crictl-$CRICTL_VERSION
build_crictl() { go_install "$CRICTL_BIN" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"; }
COREDNS_BIN=$BIN/coredns-$COREDNS_VERSION
build_coredns() { go_install "$COREDNS_BIN" "github.com/coredns/coredns@$COREDNS_VERSION"; }
METRICS_BIN=$BIN/metrics-server-$METRICS_SERVER_VERSION
build_metrics_server() {
  go_install "$METRICS_BIN" "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
}
CONTAINERD_BIN=$BIN/containerd-$CONTAINERD_VERSION
build_containerd() {
  local cmd
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    # The tags leave out the snapshotters that need cgo or host libraries; kind uses overlayfs.
    go_install "$CONTAINERD_BIN/$cmd" "github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION" \
      -tags "no_btrfs no_devmapper no_zfs no_aufs"
  done
}
TRAEFIK_BIN=$BIN/traefik-$TRAEFIK_VERSION
# wrapper_build MODULE-DIR BINARY PACKAGE [VERSION-VARIABLE=VALUE]: build a command through a
# wrapper module of k8s/nodeimage/go, stripped, with its version set where given.
wrapper_build() {
  local ldflags="-s -w"
  need_go
  [ -z "${4:-}" ] || ldflags="$ldflags -X $4"
  mkdir -p "$(dirname "$2")"
  (cd "$HERE/go/$1" && go build -ldflags "$ldflags" -o "$2.tmp" "$3")
  mv "$2.tmp" "$2"
}
build_traefik() {
  wrapper_build traefik "$TRAEFIK_BIN/traefik" github.com/traefik/traefik/v3/cmd/traefik \
    "github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION"
}
PROMETHEUS_BIN=$BIN/prometheus-$PROMETHEUS_VERSION
build_prometheus() {
  # Kubernetes service discovery only: the other providers' SDKs are most of its build.
  go_install "$PROMETHEUS_BIN" "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_IMAGE##*:v}"
}
ADAPTER_BIN=$BIN/prometheus-adapter-$PROMETHEUS_ADAPTER_VERSION
build_prometheus_adapter() {
  wrapper_build prometheus-adapter "$ADAPTER_BIN/adapter" sigs.k8s.io/prometheus-adapter/cmd/adapter
}
KUBE_ROUTER_BIN=$BIN/kube-router-$KUBE_ROUTER_VERSION
build_kube_router() {
  wrapper_build kube-router "$KUBE_ROUTER_BIN/kube-router" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
    "github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION"
}
# module_dir DIR MODULE@VERSION: where the Go module cache holds a module's files.
module_dir() {
  (cd "$1" && go mod download -json "$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
}
# The CRDs the gateway serves, from the modules themselves: the Gateway API's standard channel
# and Traefik's own (its TraefikService mirrors, its Middleware retries).
build_gateway_crds() {
  need_go
  local gateway traefik file
  gateway=$(module_dir "$HERE/go/traefik" "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
  traefik=$(module_dir "$HERE/go/traefik" "github.com/traefik/traefik/v3@$TRAEFIK_VERSION")
  {
    for file in "$gateway"/config/crd/standard/*.yaml \
      "$traefik"/docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml; do
      echo "---"
      cat "$file"
    done
  } >"$GATEWAY_CRDS.tmp"
  mv "$GATEWAY_CRDS.tmp" "$GATEWAY_CRDS"
}
PAUSE_BIN=$BIN/pause-$PAUSE_VERSION
build_pause() {
  need_go
  local src
  src=$(cd "$HERE/go/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  command -v gcc >/dev/null || apt_install gcc libc6-dev
  mkdir -p "$PAUSE_BIN"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$PAUSE_BIN/pause" "$src"
}

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "kind-images: needs the Debian packages $*: sudo apt-get install $*" >&2
    exit 1
  fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >/dev/null
}

# --- Debian root filesystems ---------------------------------------------------------------
# The node: what kind's base image installs, plus Debian's runc and CNI plugins.
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,runc,containernetworking-plugins
# kube-proxy, kube-router and the network agent: the tools they call, nothing else.
TOOLS_PACKAGES=iptables,nftables,conntrack,ipset,iproute2,kmod,curl,jq,ca-certificates
rootfs_tag() { echo "mlscale-kind/$1:$DEBIAN_SUITE-$(echo "$2" | sha256sum | cut -c1-12)"; }
NODE_BASE=$(rootfs_tag node-base "$NODE_PACKAGES")
TOOLS_BASE=$(rootfs_tag tools-base "$TOOLS_PACKAGES")

# import_rootfs TAG PACKAGES: debootstrap a minimal Debian with PACKAGES and import it.
import_rootfs() {
  local tag=$1 packages=$2 dir
  command -v debootstrap >/dev/null || apt_install debootstrap
  dir=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  debootstrap --variant=minbase --include="$packages" "$DEBIAN_SUITE" "$dir" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; exit 1; }
  # Documentation and package lists are dead weight in an image.
  rm -rf "$dir"/usr/share/{doc,man,info,locale} "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*
  tar -C "$dir" -c . | $DOCKER import - "$tag" >/dev/null
  rm -rf "$dir" "$dir.log"
}
build_node_base() { import_rootfs "$NODE_BASE" "$NODE_PACKAGES"; }
build_tools_base() { import_rootfs "$TOOLS_BASE" "$TOOLS_PACKAGES"; }

# --- Component images, named as kubeadm and the manifests expect ---------------------------
IMAGES_TAR=$CACHE/images-$(key).tar
K8S_IMAGES=(
  "registry.k8s.io/kube-apiserver:$KUBERNETES_VERSION|$KUBE_BIN/kube-apiserver|/usr/local/bin/kube-apiserver"
  "registry.k8s.io/kube-controller-manager:$KUBERNETES_VERSION|$KUBE_BIN/kube-controller-manager|/usr/local/bin/kube-controller-manager"
  "registry.k8s.io/kube-scheduler:$KUBERNETES_VERSION|$KUBE_BIN/kube-scheduler|/usr/local/bin/kube-scheduler"
  "registry.k8s.io/etcd:${ETCD_VERSION#v}-0|$ETCD_BIN/etcd|/usr/local/bin/etcd"
  "registry.k8s.io/coredns/coredns:$COREDNS_VERSION|$COREDNS_BIN/coredns|/coredns"
  "registry.k8s.io/pause:$PAUSE_VERSION|$PAUSE_BIN/pause|/pause"
  "registry.k8s.io/metrics-server/metrics-server:$METRICS_SERVER_VERSION|$METRICS_BIN/metrics-server|/metrics-server"
  "traefik:$TRAEFIK_VERSION|$TRAEFIK_BIN/traefik|/usr/local/bin/traefik"
)
# The monitoring images under the names k8s/prometheus.yaml gives them (Prometheus's own tag is
# its release, v3.16.0 for the module's v0.316.0).
prometheus_release=${PROMETHEUS_VERSION#v0.}
PROMETHEUS_IMAGE=prom/prometheus:v${prometheus_release:0:1}.$((10#${prometheus_release:1:2})).${prometheus_release#*.}
ADAPTER_IMAGE=registry.k8s.io/prometheus-adapter/prometheus-adapter:$PROMETHEUS_ADAPTER_VERSION
for image in "$PROMETHEUS_IMAGE" "$ADAPTER_IMAGE"; do
  grep -q "image: $image$" "$ROOT/k8s/prometheus.yaml" \
    || { echo "kind-images: k8s/prometheus.yaml must name $image (versions.env's pin)" >&2; exit 1; }
done
K8S_IMAGES+=(
  "$PROMETHEUS_IMAGE|$PROMETHEUS_BIN/prometheus|/bin/prometheus"
  "$ADAPTER_IMAGE|$ADAPTER_BIN/adapter|/adapter"
)
KUBE_PROXY_IMAGE=registry.k8s.io/kube-proxy:$KUBERNETES_VERSION
KUBE_ROUTER_IMAGE=docker.io/cloudnativelabs/kube-router:$KUBE_ROUTER_VERSION
grep -q "image: $KUBE_ROUTER_IMAGE$" "$HERE/kube-router.yaml" \
  || { echo "kind-images: k8s/nodeimage/kube-router.yaml must name $KUBE_ROUTER_IMAGE" >&2; exit 1; }
KIND_NET_IMAGE=$(sed -n 's/^ *image: *//p' "$HERE/kind-net.yaml" | head -1)

# static_image NAME BINARY PATH: a one-binary image (the binaries are static), entrypoint PATH.
static_image() {
  local name=$1 binary=$2 path=$3 dir
  dir=$(mktemp -d)
  install -D -m 0755 "$binary" "$dir$path"
  mkdir -m 1777 "$dir/tmp"
  tar -C "$dir" -c . | $DOCKER import \
    --change "ENTRYPOINT [\"$path\"]" --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    - "$name" >/dev/null
  rm -rf "$dir"
}

# tools_image NAME BINARY: the tools image (iptables, ipset, conntrack) with BINARY on its PATH.
tools_image() {
  local dir
  dir=$(mktemp -d)
  install -m 0755 "$2" "$dir/$(basename "$2")"
  printf 'FROM %s\nCOPY %s /usr/local/bin/\n' "$TOOLS_BASE" "$(basename "$2")" \
    | $DOCKER build -q -t "$1" -f - "$dir" >/dev/null
  rm -rf "$dir"
}

build_images() {
  local entry name binary path names=()
  for entry in "${K8S_IMAGES[@]}"; do
    IFS='|' read -r name binary path <<<"$entry"
    static_image "$name" "$binary" "$path"
    names+=("$name")
  done
  tools_image "$KUBE_PROXY_IMAGE" "$KUBE_BIN/kube-proxy"
  tools_image "$KUBE_ROUTER_IMAGE" "$KUBE_ROUTER_BIN/kube-router"
  # The network agent is a shell script (in its manifest) over the tools image's ip, curl, jq.
  $DOCKER tag "$TOOLS_BASE" "$KIND_NET_IMAGE"
  names+=("$KUBE_PROXY_IMAGE" "$KUBE_ROUTER_IMAGE" "$KIND_NET_IMAGE")
  $DOCKER save "${names[@]}" >"$IMAGES_TAR.tmp"
  mv "$IMAGES_TAR.tmp" "$IMAGES_TAR"
}

# --- The node image ------------------------------------------------------------------------
build_node_image() {
  local ctx kind_dir
  ctx=$(mktemp -d "$CACHE/node-context.XXXXXX")
  kind_dir=$(module_dir "$HERE/go/kubernetes" "sigs.k8s.io/kind@$KIND_VERSION")
  cp -r "$kind_dir/images/base/files" "$ctx/kind-base"
  chmod -R u+w "$ctx/kind-base"
  mkdir -p "$ctx/overlay"
  if [ -d "$HERE/overlay" ]; then cp -r "$HERE/overlay/." "$ctx/overlay/"; fi
  mkdir -p "$ctx/bin" "$ctx/kube" "$ctx/manifests" "$ctx/images"
  cp "$CONTAINERD_BIN"/*/* "$CRICTL_BIN/crictl" "$ctx/bin/"
  cp "$KUBE_BIN"/{kubeadm,kubelet,kubectl} "$ctx/kube/"
  cat "$HERE/kind-net.yaml" "$HERE/kube-router.yaml" >"$ctx/manifests/default-cni.yaml"
  ln "$IMAGES_TAR" "$ctx/images/images.tar" 2>/dev/null || cp "$IMAGES_TAR" "$ctx/images/images.tar"
  $DOCKER build --build-arg "BASE_IMAGE=$NODE_BASE" \
    --build-arg "KUBERNETES_VERSION=$KUBERNETES_VERSION" \
    --build-arg "PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_VERSION" \
    -t "$NODE_IMAGE" -f "$HERE/Dockerfile" "$ctx"
  rm -rf "$ctx"
}

# The component archive and node image of other keys (earlier pins): nothing uses them, and
# each is about 1 GB. A node image a cluster still runs on stays (Docker refuses to remove it).
prune_superseded() {
  local tar image
  for tar in "$CACHE"/images-*.tar; do
    [ "$tar" = "$IMAGES_TAR" ] || rm -f "$tar"
  done
  for image in $($DOCKER images --format '{{.Repository}}:{{.Tag}}' "${NODE_IMAGE%:*}"); do
    [ "$image" = "$NODE_IMAGE" ] || $DOCKER rmi "$image" >/dev/null 2>&1 || true
  done
}

metrics_server_manifest() {
  # Generated from metrics-server's own kustomize overlay, with the one flag kind needs
  # (its kubelets serve self-signed certificates). Committed, so nothing is downloaded at run time.
  need_go
  local dir out=$ROOT/k8s/metrics-server.yaml kubectl
  kubectl=$(command -v kubectl || echo "$ROOT/.tools/bin/kubectl")
  dir=$(mktemp -d)
  cp -r "$(module_dir "$HERE/go/kubernetes" "sigs.k8s.io/metrics-server@$METRICS_SERVER_VERSION")/manifests" "$dir/"
  chmod -R u+w "$dir"
  mkdir "$dir/manifests/overlays/mlscale"
  cat >"$dir/manifests/overlays/mlscale/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../release
patches:
  - target: {group: apps, version: v1, kind: Deployment, name: metrics-server}
    patch: |
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --kubelet-insecure-tls
EOF
  {
    echo "# metrics-server $METRICS_SERVER_VERSION for kind, generated by"
    echo "# \`k8s/nodeimage/build.sh metrics-server-manifest\` from the module's overlays/release"
    echo "# plus --kubelet-insecure-tls (kind's kubelets serve self-signed certificates)."
    "$kubectl" kustomize "$dir/manifests/overlays/mlscale"
  } >"$out"
  rm -rf "$dir"
  log "wrote $out"
}

if [ "${1:-}" = metrics-server-manifest ]; then metrics_server_manifest; exit 0; fi
if [ "${1:-}" = gateway-crds ]; then
  step "gateway CRDs" "test -s $GATEWAY_CRDS" build_gateway_crds
  exit 0
fi
if [ "${1:-}" = control-plane ]; then
  step "kubernetes $KUBERNETES_VERSION" "test -x $KUBE_BIN/kube-proxy" build_kubernetes
  step "etcd $ETCD_VERSION" "test -x $ETCD_BIN/etcd" build_etcd
  step "gateway CRDs" "test -s $GATEWAY_CRDS" build_gateway_crds
  step "prometheus $PROMETHEUS_VERSION" "test -x $PROMETHEUS_BIN/prometheus" build_prometheus
  exit 0
fi

DOCKER=$("$ROOT/scripts/docker-engine.sh")
export DOCKER_BUILDKIT=1

# side_by_side: run the steps queued with `queue` at once; fail if any failed.
queued=()
queue() { step "$@" & queued+=($!); }
side_by_side() {
  local pid failed=0
  for pid in "${queued[@]}"; do wait "$pid" || failed=1; done
  queued=()
  [ "$failed" = 0 ] || { log "a build above failed"; exit 1; }
}

total=$(date +%s)
# Both root filesystems need debootstrap: install it once, before they run side by side.
if ! $DOCKER image inspect "$NODE_BASE" "$TOOLS_BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || apt_install debootstrap
fi
queue "node base rootfs ($DEBIAN_SUITE)" "$DOCKER image inspect $NODE_BASE" build_node_base
queue "tools base rootfs ($DEBIAN_SUITE)" "$DOCKER image inspect $TOOLS_BASE" build_tools_base
queue "kind $KIND_VERSION" "test -x $KIND_BIN/kind" build_kind
queue "kubernetes $KUBERNETES_VERSION" "test -x $KUBE_BIN/kube-proxy" build_kubernetes
queue "etcd $ETCD_VERSION" "test -x $ETCD_BIN/etcd" build_etcd
queue "containerd $CONTAINERD_VERSION" "test -x $CONTAINERD_BIN/ctr/ctr" build_containerd
queue "crictl $CRICTL_VERSION" "test -x $CRICTL_BIN/crictl" build_crictl
queue "coredns $COREDNS_VERSION" "test -x $COREDNS_BIN/coredns" build_coredns
queue "metrics-server $METRICS_SERVER_VERSION" "test -x $METRICS_BIN/metrics-server" build_metrics_server
queue "traefik $TRAEFIK_VERSION" "test -x $TRAEFIK_BIN/traefik" build_traefik
queue "prometheus $PROMETHEUS_VERSION" "test -x $PROMETHEUS_BIN/prometheus" build_prometheus
queue "prometheus-adapter $PROMETHEUS_ADAPTER_VERSION" "test -x $ADAPTER_BIN/adapter" build_prometheus_adapter
queue "kube-router $KUBE_ROUTER_VERSION" "test -x $KUBE_ROUTER_BIN/kube-router" build_kube_router
side_by_side
# These read the kubernetes module's files, downloaded by its build above.
step "gateway CRDs (Gateway API $GATEWAY_API_VERSION, Traefik $TRAEFIK_VERSION)" "test -s $GATEWAY_CRDS" build_gateway_crds
step "pause $PAUSE_VERSION" "test -x $PAUSE_BIN/pause" build_pause
step "component images" "test -s $IMAGES_TAR" build_images
step "node image $NODE_IMAGE" "$DOCKER image inspect $NODE_IMAGE" build_node_image
prune_superseded
ln -sf "$KIND_BIN/kind" "$BIN/kind"
log "done in $(($(date +%s) - total)) s: node image $NODE_IMAGE, kind at $BIN/kind"
echo "$NODE_IMAGE"
