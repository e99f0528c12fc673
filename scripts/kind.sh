#!/usr/bin/env bash
# The local cluster: `scripts/kind.sh up|load|deploy|down` (also `make kind-up` etc.).
#   up      create the kind cluster (1 control plane, 3 workers) and metrics-server; wait
#   load    load mlscale:<version> into the nodes (build it first: make image)
#   deploy  helm upgrade --install --wait with k8s/values-kind.yaml into namespace mlscale
#   down    delete the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
CLUSTER=mlscale
NAMESPACE=${NAMESPACE:-mlscale}
RELEASE=${RELEASE:-mlscale}
METRICS_SERVER=https://github.com/kubernetes-sigs/metrics-server/releases/download/v0.7.2/components.yaml
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE=mlscale:$VERSION

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "kind.sh: missing ${missing[*]}." >&2
    for tool in "${missing[@]}"; do
      case $tool in
        kind) echo "  kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation (go install sigs.k8s.io/kind@v0.27.0)" >&2 ;;
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

case ${1:-} in
  up)
    need kind docker kubectl
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      echo "kind.sh: cluster $CLUSTER exists; reusing it"
    else
      kind create cluster --config k8s/kind-cluster.yaml --wait 120s
    fi
    kubectl config use-context "kind-$CLUSTER" >/dev/null
    kubectl apply -f k8s/namespace.yaml -f k8s/rollout-rbac.yaml
    # kind's kubelets have self-signed serving certificates: metrics-server must not verify them.
    kubectl apply -f "$METRICS_SERVER"
    kubectl -n kube-system patch deployment metrics-server --type=json -p \
      '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]' \
      2>/dev/null || true
    kubectl -n kube-system rollout status deployment/metrics-server --timeout=180s
    kubectl wait --for=condition=Ready nodes --all --timeout=180s
    echo "kind.sh: waiting for the metrics API to answer"
    for _ in $(seq 60); do kubectl top nodes >/dev/null 2>&1 && break; sleep 3; done
    kubectl top nodes
    ;;
  load)
    need kind docker
    docker image inspect "$IMAGE" >/dev/null 2>&1 || { echo "kind.sh: no image $IMAGE; run: make image" >&2; exit 1; }
    kind load docker-image "$IMAGE" --name "$CLUSTER"
    ;;
  deploy)
    need helm kubectl
    helm upgrade --install "$RELEASE" charts/mlscale --namespace "$NAMESPACE" --create-namespace \
      -f k8s/values-kind.yaml --set image.tag="$VERSION" --wait --timeout 5m
    kubectl -n "$NAMESPACE" get deploy,hpa,pods -o wide -l "app.kubernetes.io/instance=$RELEASE"
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
