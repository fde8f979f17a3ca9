#!/usr/bin/env bash
# Runs every test: unit and golden tests (real haproxy -c), then the API and
# flow tests against a fresh local control plane, which is torn down at the
# end. On failure the component logs are kept under target/test-artifacts/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${LBPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lbpool}
started=$(date +%s)
say() { printf '[test %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - started))" "$*" >&2; }

say "1/4 Debian packages"
bash hack/deps.sh
say "2/4 control-plane binaries (cached after the first build)"
bin=$(bash hack/build-binaries.sh | tail -n 1)
say "3/4 building the workspace"
cargo build --workspace --all-targets --locked

# A cluster of its own, on other ports than the demo's, so the two coexist.
export LBPOOL_CLUSTER_DIR="$cache/test-cluster"
export LBPOOL_ETCD_PORT=${LBPOOL_TEST_ETCD_PORT:-23890}
export LBPOOL_APISERVER_PORT=${LBPOOL_TEST_APISERVER_PORT:-26543}
artifacts="$root/target/test-artifacts"
rm -rf "$artifacts"
mkdir -p "$artifacts"
finish() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -d "$LBPOOL_CLUSTER_DIR/logs" ]; then
    cp -r "$LBPOOL_CLUSTER_DIR/logs" "$artifacts/cluster-logs"
    say "FAILED; control-plane logs and controller logs kept in $artifacts"
  fi
  bash hack/local-cluster.sh down >/dev/null 2>&1 || true
  exit $rc
}
trap finish EXIT
bash hack/local-cluster.sh down >/dev/null 2>&1 || true
kubeconfig=$(bash hack/local-cluster.sh up | tail -n 1)

export LBPOOL_KUBECONFIG="$kubeconfig"
export LBPOOL_KUBECTL="$bin/kubectl"
export LBPOOL_CONTROLLER_BIN="$root/target/debug/lbpool-controller"
export LBPOOL_WEBAPP_BIN="$root/target/debug/webapp"
export LBPOOL_TEST_ARTIFACTS="$artifacts"
say "4/4 cargo test (unit, golden, injection, mock API, API, flow, hardening, data plane)"
cargo test --workspace --locked -- --test-threads="${LBPOOL_TEST_THREADS:-4}"
say "all tests passed in $(($(date +%s) - started))s"
