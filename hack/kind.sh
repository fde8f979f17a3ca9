#!/usr/bin/env bash
# The kind path, for machines with Docker: a kind cluster from
# kind-config.yaml, the controller and webapp images built and loaded, the
# manifests applied, the API and flow tests run against it (the controller
# in the cluster this time), and a check through HAProxy's frontend that
# answers come from every webapp pod.
#
#   hack/kind.sh          create (or reuse) the cluster and test
#   hack/kind.sh down     delete the cluster
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
name=${LBPOOL_KIND_CLUSTER:-lbpool}
say() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

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
kind load docker-image --name "$name" lbpool-controller:dev lbpool-webapp:dev

say "applying the CRD and the manifests"
kubectl apply --server-side -k crds/
kubectl wait --for=condition=Established crd/loadbalancerpools.lbpool.dev --timeout=60s
kubectl apply --server-side --force-conflicts -k manifests/
kubectl rollout status deployment/lbpool-controller -n lbpool-system --timeout=180s
kubectl wait --for=condition=Ready lbp/webapp -n demo --timeout=180s
kubectl scale deployment webapp -n demo --replicas=3
kubectl rollout status deployment/webapp -n demo --timeout=180s
for _ in $(seq 60); do
  [ "$(kubectl get lbp webapp -n demo -o jsonpath='{.status.readyBackends}')" = 3 ] && break
  sleep 1
done
kubectl rollout status deployment/haproxy -n demo --timeout=180s

say "every webapp pod answers through HAProxy's frontend (localhost:8080)"
want=$(kubectl get pods -n demo -l app.kubernetes.io/name=webapp -o jsonpath='{.items[*].metadata.name}' | tr ' ' '\n' | sort)
seen=$(for _ in $(seq 30); do curl -sf http://127.0.0.1:8080/ | sed -n 's/.*"host":"\([^"]*\)".*/\1/p'; done | sort -u)
if [ "$want" != "$seen" ]; then
  die "answers came from [$(echo $seen)], expected every pod [$(echo $want)]"
fi
say "answers from all $(echo "$want" | wc -l) pods"

say "API and flow tests against the kind cluster"
LBPOOL_KUBECONFIG="$KUBECONFIG" LBPOOL_KUBECTL=kubectl LBPOOL_CONTROLLER=in-cluster \
  cargo test -p lbpool-tests --locked -- --test-threads=2
say "kind path passed"
