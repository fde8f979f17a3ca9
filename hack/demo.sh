#!/usr/bin/env bash
# The demo: a local control plane, the CRD and the manifests, the controller,
# the example pool, the webapp scaled to 5, and what lbpool made of it.
# Tear it down with: hack/local-cluster.sh down
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$(date +%s)
step() { printf '\n[demo +%ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }

step "1/7 Debian packages"
bash hack/deps.sh
step "2/7 control-plane binaries from upstream Go modules (first time: ~15 min on 2 cores; cached after)"
bin=$(bash hack/build-binaries.sh | tail -n 1)
step "3/7 building lbpool-controller"
cargo build --locked -p lbpool-controller
step "4/7 local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes)"
export KUBECONFIG
KUBECONFIG=$(bash hack/local-cluster.sh up | tail -n 1)
dir=$(dirname "$KUBECONFIG")
k() { "$bin/kubectl" "$@"; }

step "5/7 kubectl apply the CRD, then the manifests"
k apply --server-side -k crds/
k wait --for=condition=Established crd/loadbalancerpools.lbpool.dev --timeout=60s
k apply --server-side --force-conflicts -k manifests/

step "6/7 the controller, as a local process with its ServiceAccount's token (the in-cluster pods are simulated)"
token=$(k create token lbpool-controller -n lbpool-system --duration=24h)
cat >"$dir/controller.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')", certificate-authority: "$dir/pki/ca.crt"}}]
users: [{name: lbpool-controller, user: {token: "$token"}}]
contexts: [{name: local, context: {cluster: local, user: lbpool-controller}}]
current-context: local
KC
if [ -f "$dir/run/lbpool-controller.pid" ] && kill -0 "$(cat "$dir/run/lbpool-controller.pid")" 2>/dev/null; then
  kill "$(cat "$dir/run/lbpool-controller.pid")"
fi
KUBECONFIG="$dir/controller.kubeconfig" NO_COLOR=1 setsid target/debug/lbpool-controller --admin-addr 127.0.0.1:18080 \
  >>"$dir/logs/lbpool-controller.log" 2>&1 </dev/null &
echo $! >"$dir/run/lbpool-controller.pid"
k wait --for=condition=Ready lbp/webapp -n demo --timeout=60s

step "7/7 kubectl scale deployment webapp --replicas=5"
k scale deployment webapp -n demo --replicas=5
for _ in $(seq 60); do
  [ "$(k get lbp webapp -n demo -o jsonpath='{.status.readyBackends}')" = 5 ] && break
  sleep 0.5
done
echo
k get lbp -n demo
echo
k get pods -n demo -o wide
echo
echo "--- haproxy.cfg (ConfigMap demo/webapp-haproxy) ---"
k get configmap webapp-haproxy -n demo -o jsonpath='{.data.haproxy\.cfg}'
cat <<MSG

The demo is running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$bin:\$PATH
  kubectl get lbp -n demo -w                       # in one terminal
  kubectl scale deployment webapp -n demo --replicas=8
  kubectl describe lbp webapp -n demo              # conditions and Events
  curl -s 127.0.0.1:18080/metrics | grep lbpool_   # controller metrics
Controller log: $dir/logs/lbpool-controller.log
Tear down:      hack/local-cluster.sh down
MSG
