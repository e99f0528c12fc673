#!/usr/bin/env bash
# The local cluster: `scripts/kind.sh host|prepare|up|load|deploy|logs|down` (`make kind-up` etc.).
#   host    raise the machine's inotify limits to what several nodes need (as root)
#   prepare make sure kind and a node image are at hand (builds them offline where needed)
#   up      create the kind cluster (1 control plane, 3 workers), metrics-server, the gateway,
#           Prometheus and prometheus-adapter (the custom metrics API)
#   load    load mlscale:<version> into the nodes (build it first: make image), or the images
#           named after it (model images from `mlscale package`): load mlscale-model/flowers:2
#   deploy  helm upgrade --install --wait with k8s/values-kind.yaml into namespace mlscale
#   logs    save the nodes' logs (kind export logs) under reports/kind-logs
#   down    delete the cluster
# Node image: $MLSCALE_KIND_NODE_IMAGE when set; else kind's own when Docker can pull it; else
# the one `make kind-images` builds offline (k8s/nodeimage/build.sh, built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# kind, when not installed, comes from the offline build's cache (make kind-images).
export PATH="$PWD/.tools/bin:$PATH:${MLSCALE_CACHE:-$HOME/.cache/mlscale}/nodeimage/bin"
CLUSTER=mlscale
NAMESPACE=${NAMESPACE:-mlscale}
RELEASE=${RELEASE:-mlscale}
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE=mlscale:$VERSION
OPERATOR_IMAGE=mlscale-operator:$VERSION

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "kind.sh: missing ${missing[*]}." >&2
    for tool in "${missing[@]}"; do
      case $tool in
        kind) echo "  kind: make kind-images (or https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" >&2 ;;
        docker) echo "  docker: https://docs.docker.com/engine/install/ (or: sudo scripts/docker-engine.sh)" >&2 ;;
        helm|kubectl) echo "  $tool: make tools" >&2 ;;
      esac
    done
    exit 1
  fi
  if [[ " $* " == *" docker "* ]] && ! docker info >/dev/null 2>&1; then
    echo "kind.sh: docker is installed but no engine answers; start Docker first" >&2
    exit 1
  fi
}

# The node image to create the cluster from, or nothing when none is at hand yet.
node_image() {
  if [ -n "${MLSCALE_KIND_NODE_IMAGE:-}" ]; then echo "$MLSCALE_KIND_NODE_IMAGE"; return; fi
  local public offline
  public=$(sed -n 's/^KIND_PUBLIC_NODE_IMAGE=//p' k8s/nodeimage/versions.env)
  if docker image inspect "$public" >/dev/null 2>&1 || timeout 120 docker pull -q "$public" >/dev/null 2>&1; then
    echo "$public"
    return
  fi
  offline=$(k8s/nodeimage/build.sh --print)
  if docker image inspect "$offline" >/dev/null 2>&1; then echo "$offline"; fi
}

# The metrics API answers within $1 seconds.
metrics_api() {
  local deadline=$((SECONDS + $1))
  until kubectl top nodes >/dev/null 2>&1; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 3
  done
}

# Every node of an existing cluster Ready within a minute.
# The documents of a manifest except its APIServices.
without_apiservices() {
  awk 'BEGIN { RS = "\n---\n" } !/\nkind: APIService\n/ { print; print "---" }' "$1"
}

healthy() {
  kubectl --context "kind-$CLUSTER" wait --for=condition=Ready nodes --all --timeout=60s \
    >/dev/null 2>&1
}

# The demo's NetworkPolicy lets the nodes in by their addresses (k8s/values-kind.yaml's
# networkPolicy.nodeCIDRs): say so at once if Docker gave kind's network others.
check_node_cidrs() {
  local subnet cidrs
  subnet=$(docker network inspect kind -f '{{range .IPAM.Config}}{{println .Subnet}}{{end}}' | grep -m1 '\.')
  cidrs=$(sed -n 's/^ *nodeCIDRs: \[\(.*\)\]/\1/p' k8s/values-kind.yaml)
  python3 -c 'import ipaddress, sys
net = ipaddress.ip_network(sys.argv[1])
sys.exit(not any(net.subnet_of(ipaddress.ip_network(c.strip())) for c in sys.argv[2].split(",")))' \
    "$subnet" "$cidrs" && return
  echo "kind.sh: kind's network is $subnet, outside networkPolicy.nodeCIDRs ($cidrs) in" \
    "k8s/values-kind.yaml: add it there, or the API server cannot reach the pods" >&2
  exit 1
}

# Make sure kind and a node image are at hand (building them offline where needed); print the
# node image to create the cluster from. Looked up once: it may try a `docker pull`.
prepare() {
  local image
  image=$(node_image)
  if ! command -v kind >/dev/null || [ -z "$image" ]; then k8s/nodeimage/build.sh >/dev/null; fi
  echo "${image:-$(k8s/nodeimage/build.sh --print)}"
}

# Several nodes' kubelets and systemd each take inotify watches; distribution defaults run out.
# Raised by `kind.sh host` (machine set-up: `make kind-up` and `make test` run it), never by
# `up`, which the tests call: tests leave the machine's settings alone.
INOTIFY_LIMITS=(fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512)
low_inotify_limits() {
  local limit
  for limit in "${INOTIFY_LIMITS[@]}"; do
    [ "$(sysctl -n "${limit%=*}")" -ge "${limit#*=}" ] || echo "$limit"
  done
}

case ${1:-} in
  host)
    low=$(low_inotify_limits)
    for limit in $low; do
      sysctl -qw "$limit" 2>/dev/null \
        || echo "kind.sh: a multi-node cluster needs higher inotify limits: sudo sysctl -w $limit" >&2
    done
    ;;
  prepare)
    if ! docker info >/dev/null 2>&1; then
      echo "kind.sh: no Docker engine answers; nothing to prepare (the kind tests will skip)"
      exit 0
    fi
    prepare >/dev/null
    ;;
  up)
    need docker kubectl
    image=$(prepare)
    need kind
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER" && ! healthy; then
      # Nodes do not come back whole from a Docker restart (a reboot, a CI machine reused).
      echo "kind.sh: cluster $CLUSTER exists but its nodes are not all Ready; recreating it"
      kind delete cluster --name "$CLUSTER"
    fi
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      echo "kind.sh: cluster $CLUSTER exists; reusing it"
    else
      low=$(low_inotify_limits)
      [ -z "$low" ] || echo "kind.sh: inotify limits below $low; nodes may fail: run scripts/kind.sh host" >&2
      echo "kind.sh: creating cluster $CLUSTER from $image"
      # --retain: nodes that fail are kept for their logs (saved below), then removed.
      if ! kind create cluster --config k8s/kind-cluster.yaml --image "$image" --wait 180s --retain; then
        dir=reports/kind-logs/$(date +%Y%m%d-%H%M%S)
        kind export logs "$dir" --name "$CLUSTER" >/dev/null 2>&1 || true
        docker ps -a --filter "label=io.x-k8s.kind.cluster=$CLUSTER" >"$dir/containers.txt" 2>&1 || true
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        echo "kind.sh: the cluster could not be created; node logs in $dir" >&2
        exit 1
      fi
    fi
    kubectl config use-context "kind-$CLUSTER" >/dev/null
    check_node_cidrs
    kubectl apply -f k8s/namespace.yaml
    # metrics-server's APIService last: the API server connects to the Service as soon as the
    # APIService exists, and a connection made before kube-proxy has programmed the Service's
    # address leaves the node un-NATed and, kept alive, never reaches metrics-server.
    without_apiservices k8s/metrics-server.yaml | kubectl apply -f -
    kubectl -n kube-system rollout status deployment/metrics-server --timeout=180s
    kubectl apply -f k8s/metrics-server.yaml
    kubectl wait --for=condition=Ready nodes --all --timeout=180s
    echo "kind.sh: waiting for the metrics API to answer"
    if ! metrics_api 90; then
      # The race above can still be lost: drop the stale connections so the API server dials again.
      echo "kind.sh: metrics API not answering; resetting stale connections to metrics-server"
      ip=$(kubectl -n kube-system get service metrics-server -o jsonpath='{.spec.clusterIP}')
      for node in $(kind get nodes --name "$CLUSTER"); do
        docker exec "$node" conntrack -D -d "$ip" >/dev/null 2>&1 || true
      done
      metrics_api 120
    fi
    kubectl top nodes
    # The gateway: the CRDs it serves first (server-side: the Gateway API's are too big for
    # the annotation a client-side apply keeps), then Traefik, its class and the demo's Gateway.
    crds=$(k8s/nodeimage/build.sh --gateway-crds)
    [ -s "$crds" ] || k8s/nodeimage/build.sh gateway-crds >/dev/null
    kubectl apply --server-side --force-conflicts -f "$crds" >/dev/null
    kubectl wait --for condition=established --timeout=60s \
      crd/gateways.gateway.networking.k8s.io crd/httproutes.gateway.networking.k8s.io \
      crd/middlewares.traefik.io crd/traefikservices.traefik.io >/dev/null
    kubectl apply -f k8s/gateway.yaml
    kubectl -n mlscale-gateway rollout status deployment/traefik --timeout=180s
    kubectl -n mlscale-gateway wait --for=condition=Programmed gateway/mlscale --timeout=120s
    # Prometheus and the custom metrics API, the APIServices last as for metrics-server above.
    without_apiservices k8s/prometheus.yaml | kubectl apply -f -
    kubectl -n monitoring rollout status deployment/prometheus deployment/prometheus-adapter --timeout=180s
    kubectl apply -f k8s/prometheus.yaml
    kubectl wait --for=condition=Available --timeout=120s \
      apiservice/v1beta1.custom.metrics.k8s.io apiservice/v1beta2.custom.metrics.k8s.io
    ;;
  load)
    need kind docker
    shift
    images=("$@")
    [ ${#images[@]} -gt 0 ] || images=("$IMAGE" "$OPERATOR_IMAGE")
    for image in "${images[@]}"; do
      docker image inspect "$image" >/dev/null 2>&1 || { echo "kind.sh: no image $image; build it first (make image, mlscale package)" >&2; exit 1; }
    done
    # Into the workers only: the control plane keeps its NoSchedule taint and runs none of them
    # (a quarter less to import).
    workers=$(kind get nodes --name "$CLUSTER" | grep -v -- -control-plane | paste -sd, -)
    kind load docker-image "${images[@]}" --name "$CLUSTER" --nodes "$workers"
    ;;
  deploy)
    need helm kubectl
    # Helm installs crds/ on a first install only: an upgrade takes a changed CRD from here.
    kubectl apply -f charts/mlscale/crds/
    helm upgrade --install "$RELEASE" charts/mlscale --namespace "$NAMESPACE" --create-namespace \
      -f k8s/values-kind.yaml --set image.tag="$VERSION" --set operator.image.tag="$VERSION" --wait --timeout 5m
    kubectl -n "$NAMESPACE" get deploy,hpa,pods -o wide -l "app.kubernetes.io/instance=$RELEASE"
    ;;
  logs)
    need kind
    dir=reports/kind-logs/$(date +%Y%m%d-%H%M%S)
    kind export logs "$dir" --name "$CLUSTER" >&2
    echo "$dir"
    ;;
  down)
    need kind
    kind delete cluster --name "$CLUSTER"
    ;;
  *)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
