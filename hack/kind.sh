#!/usr/bin/env bash
# The kind path, for machines with Docker: a kind cluster from
# kind-config.yaml, the controller and webapp images built and loaded, then
# the same end-to-end tier hack/test.sh runs on the local real node
# (tests/tests/e2e.rs: the shipped manifests, traffic through the HAProxy
# Service, here through the node ports kind-config.yaml maps to
# 127.0.0.1:8080 and :1936), and the API, flow and hardening tiers with the
# controller in the cluster. The data-plane tier is not run here: it plays
# HAProxy pods in network namespaces of this machine, which needs root, and
# the end-to-end tier covers it with real pods.
#
#   hack/kind.sh          create (or reuse) the cluster and test
#   hack/kind.sh down     delete the cluster
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

cd "$root"
name=${LBPOOL_KIND_CLUSTER:-lbpool}

if [ "${1:-}" = down ]; then
  kind delete cluster --name "$name"
  exit 0
fi
for tool in docker kind kubectl cargo; do
  command -v "$tool" >/dev/null || die "$tool is needed for the kind path"
done
docker info >/dev/null 2>&1 || die "no Docker engine is reachable (docker info failed)"

if ! kind get clusters | grep -qx "$name"; then
  say "creating kind cluster $name"
  kind create cluster --name "$name" --config kind-config.yaml
fi
export KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}"
kubectl config use-context "kind-$name" >/dev/null

say "building and loading images"
docker build -f controller/Dockerfile -t lbpool-controller:dev .
docker build -f webapp/Dockerfile -t lbpool-webapp:dev .
docker build -f agent/Dockerfile -t lbpool-agent:dev .
kind load docker-image --name "$name" lbpool-controller:dev lbpool-webapp:dev lbpool-agent:dev

say "end-to-end tier (installs the CRD and manifests/, haproxy:3.0 from its registry)"
LBPOOL_KUBECONFIG="$KUBECONFIG" LBPOOL_KUBECTL=kubectl LBPOOL_CONTROLLER=in-cluster \
  LBPOOL_E2E_MANIFESTS=manifests LBPOOL_E2E_IN_PLACE_MANIFESTS=manifests/overlays/in-place \
  LBPOOL_E2E_FRONTEND=127.0.0.1:8080 LBPOOL_E2E_STATS=127.0.0.1:1936 \
  cargo test -p lbpool-tests --locked --test e2e --test e2e_in_place -- --test-threads=1 --nocapture

say "API, flow and hardening tiers against the kind cluster"
LBPOOL_KUBECONFIG="$KUBECONFIG" LBPOOL_KUBECTL=kubectl LBPOOL_CONTROLLER=in-cluster \
  cargo test -p lbpool-tests --locked --test api --test flow --test hardening --test rbac -- --test-threads=2
say "kind path passed"
