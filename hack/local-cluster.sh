#!/usr/bin/env bash
# A local Kubernetes cluster from the binaries hack/build-binaries.sh builds:
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with nodes
# of one of two kinds (LBPOOL_NODE):
#
#   real (default)  one real node, like kind's: containerd, kubelet and
#                   kube-proxy on this machine (needs root), runc and the CNI
#                   bridge plugin from Debian, the images of hack/images.sh
#                   imported. Pods really run, in 10.246.0.0/24 on the bridge
#                   lbpool0, whose address 10.246.0.1 is the node's; Services
#                   get ClusterIPs from 10.247.0.0/16, routed by kube-proxy.
#   kwok            simulated nodes: kwok makes pods Running and Ready with
#                   IPs in 10.244.0.0/16 without running anything. For the
#                   API-level tiers and scale tests.
#
# Either way Deployments produce pods and kube-controller-manager writes
# EndpointSlices. The control plane listens on 127.0.0.1, or with a real node
# on the bridge's own address 10.246.0.1, which the pods must reach; nothing
# listens on any other interface.
#
#   hack/local-cluster.sh up       start (idempotent), print the kubeconfig path
#   hack/local-cluster.sh down     stop every process, remove the state; with a
#                                  real node, also its containers, mounts,
#                                  bridge, iptables rules, cgroups and sysctls,
#                                  then check that nothing is left
#   hack/local-cluster.sh status   what runs
#   hack/local-cluster.sh logs     paths of the component logs
#   hack/local-cluster.sh restart kube-apiserver   stop one component, start it again
#
# What it manages is in hack/cluster/: pki.sh, control-plane.sh, node.sh,
# and the config files they render.
#
# State (certificates, etcd data, logs, kubeconfigs, the node's containers)
# lives in $LBPOOL_CLUSTER_DIR, by default <cache>/cluster.
# LBPOOL_KCM_QPS sets kube-controller-manager's client rate limit (its
# default, 20 requests/s, is what a cluster without tuning has; the scale
# benchmark raises it, see hack/scale-bench.sh).
tag=local-cluster
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
dir=${LBPOOL_CLUSTER_DIR:-$cache/cluster}
etcd_port=${LBPOOL_ETCD_PORT:-23790}
api_port=${LBPOOL_APISERVER_PORT:-26443}
pod_cidr=${LBPOOL_POD_CIDR:-10.244.0.1/16}
nodes=${LBPOOL_NODES:-2}
kcm_qps=${LBPOOL_KCM_QPS:-20}

# The real node's network.
node_name=lbpool-node
bridge=lbpool0
node_ip=10.246.0.1
node_pod_cidr=10.246.0.0/24

# The kind of node is decided at `up` and remembered, so `down`, `restart`
# and `status` need not be told again.
node_kind=${LBPOOL_NODE:-}
[ -n "$node_kind" ] || node_kind=$(cat "$dir/node-kind" 2>/dev/null || echo real)
case "$node_kind" in
  real) service_cidr=10.247.0.0/16 service_ip=10.247.0.1 api_host=$node_ip ;;
  kwok) service_cidr=10.96.0.0/16 service_ip=10.96.0.1 api_host=127.0.0.1 ;;
  *) die "LBPOOL_NODE must be real or kwok, not '$node_kind'" ;;
esac

components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok containerd kubelet kube-proxy lbpool-controller)

pid_of() { cat "$dir/run/$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start() {
  local name=$1; shift
  if running "$name"; then return; fi
  mkdir -p "$dir/run" "$dir/logs"
  # setsid: a component survives the shell that started it, and `down` can
  # stop it and its children as one process group.
  setsid "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/run/$name.pid"
}

stop() {
  local name=$1 p
  p=$(pid_of "$name")
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$p" 2>/dev/null || true
  fi
  rm -f "$dir/run/$name.pid"
}

kctl() { "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"; }

# shellcheck source=hack/cluster/pki.sh
source "$root/hack/cluster/pki.sh"
# shellcheck source=hack/cluster/control-plane.sh
source "$root/hack/cluster/control-plane.sh"
# shellcheck source=hack/cluster/node.sh
source "$root/hack/cluster/node.sh"

wait_for() {
  local what=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up; see $dir/logs/"
}

check_port() {
  local port=$1
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is taken by another process (set LBPOOL_ETCD_PORT / LBPOOL_APISERVER_PORT)"
  fi
}

# ---------------------------------------------------------------------------

up() {
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: run hack/build-binaries.sh first"
  done
  if running kube-apiserver && kctl get --raw /readyz >/dev/null 2>&1; then
    say "already running"
    echo "$dir/admin.kubeconfig"
    return
  fi
  mkdir -p "$dir"
  if [ -f "$dir/node-kind" ] && [ "$(cat "$dir/node-kind")" != "$node_kind" ]; then
    die "$dir holds a cluster with $(cat "$dir/node-kind") nodes; run hack/local-cluster.sh down first"
  fi
  echo "$node_kind" >"$dir/node-kind"
  running etcd || check_port "$etcd_port"
  running kube-apiserver || check_port "$api_port"
  [ "$node_kind" = real ] && node_up
  certificates
  control_plane_up
  if [ "$node_kind" = real ]; then
    node_start
  else
    kwok_up
  fi
  wait_for "default ServiceAccount" 120 kctl get serviceaccount default -n default
  say "ready ($node_kind nodes): export KUBECONFIG=$dir/admin.kubeconfig"
  echo "$dir/admin.kubeconfig"
}

down() {
  local i name
  [ -d "$dir" ] || { say "stopped (nothing was running)"; return 0; }
  # The controller and the node first: kubelet must not restart what goes.
  for name in lbpool-controller kube-proxy kubelet; do stop "$name"; done
  node_containers_down
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do stop "${components[$i]}"; done
  node_host_restore
  local saved=""
  if [ -d "$dir/host" ]; then
    saved=$(mktemp -d)
    cp -r "$dir/host/." "$saved/"
  fi
  if [ "${1:-}" != "--keep" ]; then rm -rf "$dir"; else rm -rf "$dir/host"; fi
  if [ -n "$saved" ]; then
    local rc=0
    node_check_clean "$saved" || rc=$?
    rm -rf "$saved"
    [ $rc -eq 0 ] || die "the real node left the above behind"
    say "stopped; the real node left no process, mount, bridge, iptables rule, cgroup or sysctl change"
    return
  fi
  say "stopped"
}

status() {
  for name in "${components[@]}"; do
    if running "$name"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: stopped"; fi
  done
}

# Stops one component and starts it again with the same flags (fault tests).
restart() {
  local name=$1 p
  p=$(pid_of "$name")
  [ -n "$p" ] || die "$name is not running"
  stop "$name"
  say "$name stopped; starting it again"
  up >/dev/null
}

case "${1:-}" in
  up) up ;;
  restart) restart "${2:?usage: $0 restart COMPONENT}" ;;
  down) shift; down "$@" ;;
  status) status ;;
  logs) ls "$dir/logs"/*.log ;;
  kubeconfig) echo "$dir/admin.kubeconfig" ;;
  *) echo "usage: $0 up|down [--keep]|restart COMPONENT|status|logs|kubeconfig" >&2; exit 2 ;;
esac
