#!/usr/bin/env bash
# Reload benchmark: InPlace and RollingUpdate side by side on a local real
# node of its own (root), each pool at the rollout.minInterval its manifests
# give (or MIN_INTERVAL, e.g. 1ms for lbpool's path alone). Prints p50/p99/max
# of the time from an EndpointSlice change to the new server configured, and
# UP by its health check, in every ready HAProxy pod (tests/src/bin/reload.rs
# says how it is measured). With --servers N the pool has N servers more,
# addresses of a network namespace of the benchmark's own.
#   hack/reload-bench.sh [--changes N] [--rolling-changes M] [--min-interval D] [--servers S]
#   (defaults: 200 and 20 changes, the manifests' intervals, the webapp pods)
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

cd "$root"
bash hack/deps.sh
bin=$(bash hack/build-binaries.sh | tail -n 1)
# Release images, as users run them (a dev build renders and plans several
# times slower); LBPOOL_IMAGE_PROFILE=dev for a quicker first build.
export LBPOOL_IMAGE_PROFILE=${LBPOOL_IMAGE_PROFILE:-release}
export LBPOOL_CLUSTER_DIR="$cache/reload-bench-cluster"
export LBPOOL_ETCD_PORT=${LBPOOL_BENCH_ETCD_PORT:-24990}
export LBPOOL_APISERVER_PORT=${LBPOOL_BENCH_APISERVER_PORT:-27643}
trap 'bash hack/local-cluster.sh down >/dev/null 2>&1 || true' EXIT
bash hack/local-cluster.sh down >/dev/null 2>&1 || true
say "local control plane and a real node (builds and imports the images)"
LBPOOL_KUBECONFIG=$(LBPOOL_NODE=real bash hack/local-cluster.sh up | tail -n 1)
export LBPOOL_KUBECONFIG LBPOOL_KUBECTL="$bin/kubectl"
cargo build --locked -p lbpool-tests --bin reload
# The webapp answering --servers' health checks: the one the images have.
profile_dir=$LBPOOL_IMAGE_PROFILE
[ "$profile_dir" != dev ] || profile_dir=debug
export LBPOOL_WEBAPP_BIN="$target/$profile_dir/webapp"
say "timing changes: ${*:-the defaults}"
"$target/debug/reload" "$@"
