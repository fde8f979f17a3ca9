#!/usr/bin/env bash
# Runs every test:
#   - unit, golden and injection tests (real haproxy -c), mock-API tests,
#     promtool's tests of the alerts;
#   - the API, flow, hardening and data-plane tiers against a local control
#     plane with simulated (kwok) nodes;
#   - the end-to-end tier (tests/tests/e2e.rs, e2e_in_place.rs, e2e_monitoring.rs) on a local real node
#     (containerd, kubelet, kube-proxy): the shipped manifests, images built
#     without Docker, traffic through the HAProxy Service.
# Each cluster is torn down at the end; the real node's teardown is checked
# to leave nothing behind. On failure the component logs are kept under
# target/test-artifacts/. Needs root (network namespaces, the real node).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

cd "$root"

say "1/6 Debian packages"
bash hack/deps.sh
say "2/6 cluster binaries and Debian $HAPROXY_SUITE's HAProxy $HAPROXY_MAJOR (cached after the first build)"
bin=$(bash hack/build-binaries.sh | tail -n 1)
# Every haproxy of the tests (haproxy -c, the agent's, the data plane's) and
# of the controller processes they start is the one the images ship.
HAPROXY_BIN=$(bash hack/haproxy.sh | tail -n 1)
export HAPROXY_BIN LBPOOL_HAPROXY_BIN="$HAPROXY_BIN"
say "3/6 building the workspace"
cargo build --workspace --all-targets --locked

# Clusters of their own, on other ports than the demo's.
export LBPOOL_CLUSTER_DIR="$cache/test-cluster"
export LBPOOL_ETCD_PORT=${LBPOOL_TEST_ETCD_PORT:-23890}
export LBPOOL_APISERVER_PORT=${LBPOOL_TEST_APISERVER_PORT:-26543}
artifacts="$root/target/test-artifacts"
rm -rf "$artifacts"
mkdir -p "$artifacts"
finish() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -d "$LBPOOL_CLUSTER_DIR/logs" ]; then
    mkdir -p "$artifacts/cluster-logs"
    cp -r "$LBPOOL_CLUSTER_DIR/logs/." "$artifacts/cluster-logs/"
    say "FAILED; control-plane, node and controller logs kept in $artifacts"
  fi
  bash hack/local-cluster.sh down >/dev/null 2>&1 || true
  exit $rc
}
trap finish EXIT
bash hack/local-cluster.sh down >/dev/null 2>&1 || true

export LBPOOL_KUBECTL="$bin/kubectl"
export LBPOOL_CONTROLLER_BIN="$target/debug/lbpool-controller"
export LBPOOL_WEBAPP_BIN="$target/debug/webapp"
export LBPOOL_PROMTOOL="$bin/promtool" LBPOOL_PROMETHEUS="$bin/prometheus"
export LBPOOL_TEST_ARTIFACTS="$artifacts"

say "4/6 local control plane with simulated nodes; cargo test (unit, golden, injection, mock API, API, flow, hardening, data plane)"
LBPOOL_KUBECONFIG=$(LBPOOL_NODE=kwok bash hack/local-cluster.sh up | tail -n 1)
export LBPOOL_KUBECONFIG
cargo test --workspace --locked -- --skip e2e_ --test-threads="${LBPOOL_TEST_THREADS:-4}"
bash hack/local-cluster.sh down >/dev/null

say "5/6 images without Docker (hack/images.sh) and a real node"
LBPOOL_KUBECONFIG=$(LBPOOL_NODE=real bash hack/local-cluster.sh up | tail -n 1)
export LBPOOL_KUBECONFIG

say "6/6 end-to-end tier on the real node (the shipped manifests, traffic through the Service)"
cargo test -p lbpool-tests --locked --test e2e --test e2e_in_place --test e2e_monitoring -- --test-threads=1 --nocapture
# Teardown is part of the test: it fails if the node left anything behind.
bash hack/local-cluster.sh down
say "all tests passed in $(($(date +%s) - started))s"
