#!/usr/bin/env bash
# The demo: a local cluster with a real node (containerd, kubelet,
# kube-proxy), the CRD and the shipped manifests with locally built images,
# the controller running in its pod, the example pool, the webapp scaled to
# 5, and real requests through HAProxy answered by each of the 5 pods.
# Needs root (the real node). Tear it down with: hack/local-cluster.sh down
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

cd "$root"
step() {
  echo >&2
  say "$@"
}
[ "$(id -u)" -eq 0 ] || die "the demo runs a real node (containers, iptables): run it as root"

step "1/7 Debian packages"
bash hack/deps.sh
step "2/7 cluster binaries from upstream Go modules (first time: ~25 min on 2 cores; cached after)"
bin=$(bash hack/build-binaries.sh | tail -n 1)
step "3/7 local cluster: control plane + a real node; images built without Docker and imported"
export KUBECONFIG
KUBECONFIG=$(LBPOOL_NODE=real bash hack/local-cluster.sh up | tail -n 1)
k() { "$bin/kubectl" "$@"; }

step "4/7 kubectl apply the CRD, then the manifests (overlay: local images)"
k apply --server-side -k crds/
k wait --for=condition=Established crd/loadbalancerpools.lbpool.dev --timeout=60s
k apply --server-side --force-conflicts -k manifests/overlays/local/

step "5/7 the controller pod and the example pool"
k rollout status deployment/lbpool-controller -n lbpool-system --timeout=240s
k wait --for=condition=Ready lbp/webapp -n demo --timeout=240s

step "6/7 kubectl scale deployment webapp --replicas=5"
k scale deployment webapp -n demo --replicas=5
k rollout status deployment/webapp -n demo --timeout=240s
for _ in $(seq 240); do
  [ "$(k get lbp webapp -n demo -o jsonpath='{.status.readyBackends}')" = 5 ] && break
  sleep 0.5
done
# The config is published; the HAProxy Deployment is rolled for it once
# rollout.minInterval (5 s) since the last rollout has passed.
hash=$(k get lbp webapp -n demo -o jsonpath='{.status.configHash}')
for _ in $(seq 240); do
  [ "$(k get deployment haproxy -n demo -o jsonpath='{.spec.template.metadata.annotations.lbpool\.dev/config-hash}')" = "$hash" ] && break
  sleep 0.5
done
k rollout status deployment/haproxy -n demo --timeout=240s

step "7/7 what lbpool made of it"
k get lbp -n demo
echo
k get pods -n demo -o wide
echo
echo "--- haproxy.cfg (ConfigMap demo/webapp-haproxy) ---"
k get configmap webapp-haproxy -n demo -o jsonpath='{.data.haproxy\.cfg}'
ip=$(k get service haproxy -n demo -o jsonpath='{.spec.clusterIP}')
echo
echo "--- 10 requests to the HAProxy Service (http://$ip/), as kube-proxy routes them ---"
for _ in $(seq 10); do
  curl -sf --max-time 5 "http://$ip/" || echo "(request failed)"
  echo
done
hosts=$(for _ in $(seq 40); do curl -sf --max-time 5 "http://$ip/"; echo; done |
  sed -n 's/.*"host":"\([^"]*\)".*/\1/p' | sort -u)
echo
echo "$(echo "$hosts" | grep -c .) webapp pods answered through HAProxy: $(tr '\n' ' ' <<<"$hosts")"
cat <<MSG

The demo is running. Try:
  export KUBECONFIG=$KUBECONFIG PATH=$bin:\$PATH
  kubectl get lbp -n demo -w                       # in one terminal
  kubectl scale deployment webapp -n demo --replicas=8
  curl -s http://$ip/                              # through HAProxy
  curl -s http://$ip:1936/                         # HAProxy's stats page
  kubectl describe lbp webapp -n demo              # conditions and Events
  kubectl logs -n lbpool-system deploy/lbpool-controller
Tear down:      hack/local-cluster.sh down
MSG
