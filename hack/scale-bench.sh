#!/usr/bin/env bash
# Scale benchmark: N pools (default 1000) on a local control plane of its own
# with simulated nodes, the controller as a release build. Prints initial
# sync time, RSS and CPU, idle API requests, API requests per endpoint
# change, single-change latency p50/p99 and the convergence of a burst of N
# changes (tests/src/bin/scale.rs says how each is measured).
#   hack/scale-bench.sh [N] [CHANGES]
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

cd "$root"
pools=${1:-1000}
changes=${2:-100}

bash hack/deps.sh
bin=$(bash hack/build-binaries.sh | tail -n 1)
say "release build of the controller and the benchmark"
cargo build --release --locked -p lbpool-controller -p lbpool-tests --bin lbpool-controller --bin scale

export LBPOOL_CLUSTER_DIR="$cache/scale-cluster"
export LBPOOL_ETCD_PORT=${LBPOOL_SCALE_ETCD_PORT:-24890}
export LBPOOL_APISERVER_PORT=${LBPOOL_SCALE_APISERVER_PORT:-27543}
trap 'bash hack/local-cluster.sh down >/dev/null 2>&1 || true' EXIT
bash hack/local-cluster.sh down >/dev/null 2>&1 || true
say "local control plane with simulated nodes"
# `Ready` needs kube-controller-manager to roll each pool's Deployment; at its
# default 20 requests/s, rolling 1 000 Deployments takes minutes whatever
# the controller does. The benchmark lifts that limit (LBPOOL_KCM_QPS=20
# shows the default) and prints the controller's own sync separately.
LBPOOL_KUBECONFIG=$(LBPOOL_KCM_QPS=${LBPOOL_KCM_QPS:-500} LBPOOL_NODE=kwok bash hack/local-cluster.sh up | tail -n 1)
export LBPOOL_KUBECONFIG LBPOOL_KUBECTL="$bin/kubectl"
export LBPOOL_CONTROLLER_BIN="$target/release/lbpool-controller"
export LBPOOL_TEST_ARTIFACTS="$LBPOOL_CLUSTER_DIR/bench"
k() { "$bin/kubectl" --kubeconfig "$LBPOOL_KUBECONFIG" "$@"; }
k apply --server-side -k crds/ >/dev/null
k wait --for=condition=Established crd/loadbalancerpools.lbpool.dev --timeout=60s >/dev/null
k apply --server-side -k manifests/controller >/dev/null
say "$pools pools, $changes single changes, then a burst of $pools"
"$target/release/scale" --pools "$pools" --changes "$changes"
