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
# State (certificates, etcd data, logs, kubeconfigs, the node's containers)
# lives in $LBPOOL_CLUSTER_DIR, by default <cache>/cluster.
# LBPOOL_KCM_QPS sets kube-controller-manager's client rate limit (its
# default, 20 requests/s, is what a cluster without tuning has; the scale
# benchmark raises it, see hack/scale-bench.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${LBPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lbpool}
dir=${LBPOOL_CLUSTER_DIR:-$cache/cluster}
bin="$cache/bin/k8s-$KUBERNETES_VERSION"
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

say() { printf '[local-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

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

# client_cert NAME SUBJECT, in pki/: a client certificate signed by the CA.
client_cert() {
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  # An extension makes it an X.509 v3 certificate, which rustls requires.
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$1.crt" -days 365 -extfile client.ext 2>/dev/null
}

# kubeconfig USER: a kubeconfig for one of the client certificates.
kubeconfig() {
  cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: lbpool-local
  cluster:
    server: https://$api_host:$api_port
    certificate-authority: $dir/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $dir/pki/$1.crt
    client-key: $dir/pki/$1.key
contexts:
- name: lbpool-local
  context: {cluster: lbpool-local, user: $1}
current-context: lbpool-local
KUBECONFIG
}

certificates() {
  [ -f "$dir/pki/admin.crt" ] && return
  command -v openssl >/dev/null || die "openssl is needed to create the cluster's certificates"
  say "creating certificates"
  local p="$dir/pki"
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 \
      -subj "/CN=lbpool-local-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
      "$node_ip" "$service_ip" >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 365 -extfile san.ext 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    # The tests' and the control plane's identity; also the API server's
    # identity towards the kubelet (logs, exec).
    client_cert admin "/O=system:masters/CN=lbpool-admin"
    # The real node: the kubelet, which NodeRestriction confines to its own
    # node and pods, and kube-proxy (bound to system:node-proxier by default).
    client_cert node "/O=system:nodes/CN=system:node:$node_name"
    client_cert kube-proxy "/CN=system:kube-proxy"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  kubeconfig admin >"$dir/admin.kubeconfig"
  kubeconfig node >"$dir/node.kubeconfig"
  kubeconfig kube-proxy >"$dir/kube-proxy.kubeconfig"
}

kwok_config() {
  # kwok's stock "fast" stages: nodes become Ready, pods Running and Ready
  # with an IP from --cidr. Read from the kwok module the build downloaded.
  local moddir
  moddir=$(cd "$cache/src" 2>/dev/null; GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$moddir/kustomize/stage" ] || die "kwok $KWOK_VERSION stages not found; run hack/build-binaries.sh"
  {
    for f in "$moddir"/kustomize/stage/node/fast/node-initialize.yaml \
      "$moddir"/kustomize/stage/pod/fast/pod-ready.yaml \
      "$moddir"/kustomize/stage/pod/fast/pod-complete.yaml \
      "$moddir"/kustomize/stage/pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$f"
    done
  } >"$dir/kwok.yaml"
}

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
# The real node: what it changes on this machine is recorded first, so that
# `down` can put it back exactly.

# Kernel settings the node changes: the bridge plugin turns on forwarding,
# kubelet sets its "kernel defaults", kube-proxy may touch conntrack.
node_sysctls=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait net.netfilter.nf_conntrack_tcp_be_liberal)
cgroup_root=lbpool-node
cgroup_controllers() { find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d ! -name unified; }

# The rules of an iptables-save dump in a form that compares: one line per
# rule, custom chain or non-default policy, named by table, no counters. An
# empty built-in table (iptables-nft keeps one once it was used) is the same
# as none.
iptables_rules() {
  awk '/^\*/ {t = substr($0, 2); next}
       /^:/ && $2 == "ACCEPT" && $1 ~ /^:[A-Z]+$/ {next}
       /^[:-]/ {sub(/ \[[0-9]+:[0-9]+\]$/, ""); print t ":" $0}' | sort
}

record_host() {
  [ -d "$dir/host" ] && return
  mkdir -p "$dir/host"
  iptables-save >"$dir/host/iptables"
  ip6tables-save >"$dir/host/ip6tables"
  for s in "${node_sysctls[@]}"; do
    v=$(sysctl -n "$s" 2>/dev/null) && printf '%s=%s\n' "$s" "$v"
  done >"$dir/host/sysctl"
  for d in /var/log/pods /var/log/containers /var/lib/cni /run/containerd /var/run/netns; do
    [ -e "$d" ] && echo "$d"
  done >"$dir/host/existing"
  ip netns list 2>/dev/null | awk '{print $1}' >"$dir/host/netns"
}

containerd_config() {
  mkdir -p "$dir/containerd" "$dir/cni/net.d"
  cat >"$dir/containerd/config.toml" <<TOML
version = 3
root = '$dir/containerd/root'
state = '$dir/containerd/state'

[grpc]
  address = '$dir/containerd/containerd.sock'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    # hack/images.sh builds it; no registry is reachable.
    sandbox = 'lbpool.local/pause:local'

[plugins.'io.containerd.cri.v1.runtime']
  # Root here may not lower oom_score_adj; the CRI asks for -998 otherwise.
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$(command -v runc)'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '$dir/cni/net.d'

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
TOML
  # The bridge plugin: one /24 on lbpool0, the node's address as gateway,
  # masquerade for traffic leaving the pod range.
  cat >"$dir/cni/net.d/10-lbpool.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "lbpool",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$node_pod_cidr", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

kubelet_config() {
  mkdir -p "$dir/kubelet"
  cat >"$dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 hierarchies only.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_root
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
# Serve on the bridge's address only (logs, exec); health on loopback.
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
podCIDR: $node_pod_cidr
failSwapOn: false
# A shared machine: no image garbage collection (the images cannot be pulled
# again), no eviction for the host's disk, and its resolv.conf for pods.
imageGCHighThresholdPercent: 100
evictionHard: {nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", memory.available: "100Mi"}
resolvConf: /etc/resolv.conf
serializeImagePulls: false
YAML
}

node_up() {
  [ "$(id -u)" -eq 0 ] || die "a real node needs root (containers, mounts, iptables); LBPOOL_NODE=kwok simulates nodes without it"
  for b in containerd containerd-shim-runc-v2 ctr kubelet kube-proxy; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: run hack/build-binaries.sh first"
  done
  for t in runc iptables-save ip6tables-save conntrack /usr/lib/cni/bridge; do
    command -v "$t" >/dev/null || [ -x "$t" ] || die "$t is missing: run hack/deps.sh"
  done
  if ip link show "$bridge" >/dev/null 2>&1 && [ ! -d "$dir/host" ]; then
    die "bridge $bridge exists but was not made by this cluster ($dir); another cluster may be running (hack/local-cluster.sh down)"
  fi
  record_host
  # The bridge is made here, not by the first pod's CNI call, because the
  # API server listens on its address.
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$node_ip/24" dev "$bridge"
    ip link set "$bridge" up
  fi
  # Bridged pod-to-pod traffic must pass iptables for Service DNAT replies.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1
  for c in $(cgroup_controllers); do
    mkdir -p "$c/$cgroup_root"
    if [ -f "$c/cpuset.cpus" ]; then
      cat "$c/cpuset.cpus" >"$c/$cgroup_root/cpuset.cpus"
      cat "$c/cpuset.mems" >"$c/$cgroup_root/cpuset.mems"
    fi
  done
}

node_start() {
  say "starting containerd"
  containerd_config
  start containerd "$bin/containerd" --config "$dir/containerd/config.toml"
  wait_for containerd 60 "$bin/ctr" --address "$dir/containerd/containerd.sock" version

  say "importing the images (hack/images.sh --import)"
  bash "$here/images.sh" --import "$dir/containerd/containerd.sock" >/dev/null

  say "starting kubelet ($node_name, $node_ip)"
  kubelet_config
  start kubelet "$bin/kubelet" --config "$dir/kubelet/config.yaml" \
    --kubeconfig "$dir/node.kubeconfig" --root-dir "$dir/kubelet/root" --cert-dir "$dir/kubelet/pki" \
    --hostname-override "$node_name" --node-ip "$node_ip" --node-labels "type=real"

  say "starting kube-proxy (iptables)"
  start kube-proxy "$bin/kube-proxy" --kubeconfig "$dir/kube-proxy.kubeconfig" \
    --hostname-override "$node_name" --proxy-mode iptables --cluster-cidr "$node_pod_cidr" \
    --bind-address "$node_ip" --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --nodeport-addresses "$node_ip/32" --iptables-localhost-nodeports=false \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0

  wait_for "node $node_name" 240 kctl wait --for=condition=Ready "node/$node_name" --timeout=1s
}

# Removes every pod container (the CNI teardown with it is not needed: the
# network namespaces, the bridge and the rules go below).
node_containers_down() {
  local sock="$dir/containerd/containerd.sock" c=("$bin/ctr" --address "$dir/containerd/containerd.sock" --namespace k8s.io)
  if running containerd && [ -S "$sock" ]; then
    for t in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks kill --all --signal SIGKILL "$t" >/dev/null 2>&1 || true; done
    for _ in $(seq 40); do
      "${c[@]}" tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"' | grep -q . || break
      sleep 0.25
    done
    for t in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks delete --force "$t" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # Shims outlive containerd; each was started for this containerd's socket.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true
  # Processes still in the node's cgroups (a container whose shim died first).
  local c2
  for c2 in $(cgroup_controllers); do
    [ -d "$c2/$cgroup_root" ] || continue
    find "$c2/$cgroup_root" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
}

node_host_restore() {
  [ -d "$dir/host" ] || return 0
  local m
  # Mounts: pod volumes, sandbox shm, container root filesystems, netns.
  for _ in 1 2 3; do
    awk -v d="$dir" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  done
  # Network namespaces containerd made for pods (cni-*); their veths go with them.
  for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    grep -qx "$n" "$dir/host/netns" || ip netns delete "$n" 2>/dev/null || true
  done
  ip link show "$bridge" >/dev/null 2>&1 && ip link delete "$bridge"
  # iptables: back to the rules as they were, tables the node created flushed.
  for pair in "iptables:iptables" "ip6tables:ip6tables"; do
    local tool=${pair%%:*} saved="$dir/host/${pair##*:}" t
    for t in filter nat mangle raw security; do
      grep -qx "\*$t" "$saved" || { "$tool" -t "$t" -F 2>/dev/null; "$tool" -t "$t" -X 2>/dev/null; } || true
    done
    "$tool-restore" <"$saved"
  done
  while IFS= read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done <"$dir/host/sysctl"
  # cgroups: deepest first, each empty by now.
  for c in $(cgroup_controllers); do
    [ -d "$c/$cgroup_root" ] && find "$c/$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  for d in /var/log/pods /var/log/containers /var/lib/cni /run/containerd /var/run/netns; do
    grep -qx "$d" "$dir/host/existing" || rm -rf "$d"
  done
}

# After `down`: anything the node left behind is an error, named.
node_check_clean() {
  local saved=$1 left=()
  # Every component and shim names this cluster's directory in its arguments.
  pgrep -f -- "$dir/" >/dev/null && left+=("processes: $(pgrep -af -- "$dir/" | cut -c1-100 | tr '\n' ';')")
  awk -v d="$dir" 'index($2, d) == 1' /proc/mounts | grep -q . && left+=("mounts under $dir")
  ip link show "$bridge" >/dev/null 2>&1 && left+=("bridge $bridge")
  local tool
  for tool in iptables ip6tables; do
    if [ "$("$tool-save" | iptables_rules)" != "$(iptables_rules <"$saved/$tool")" ]; then
      left+=("$tool rules: $(diff <(iptables_rules <"$saved/$tool") <("$tool-save" | iptables_rules) | grep '^[<>]' | head -5 | tr '\n' ';')")
    fi
  done
  while IFS= read -r kv; do
    [ "$(sysctl -n "${kv%%=*}" 2>/dev/null)" = "${kv#*=}" ] || left+=("sysctl ${kv%%=*}=$(sysctl -n "${kv%%=*}") (was ${kv#*=})")
  done <"$saved/sysctl"
  for c in $(cgroup_controllers); do [ -d "$c/$cgroup_root" ] && left+=("cgroup $c/$cgroup_root"); done
  if [ ${#left[@]} -gt 0 ]; then
    printf '[local-cluster] left behind: %s\n' "${left[@]}" >&2
    return 1
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
  local p="$dir/pki"

  say "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$bin/etcd" --name lbpool --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
    --initial-cluster "lbpool=http://127.0.0.1:$((etcd_port + 10))" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648
  wait_for etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health"

  # With a real node the API server is the `kubernetes` Service's endpoint
  # for the pods (the controller's in-cluster config), so it listens on the
  # bridge's address and keeps that endpoint itself.
  local api_flags=(--endpoint-reconciler-type none)
  [ "$node_kind" = real ] && api_flags=(--endpoint-reconciler-type lease)
  say "starting kube-apiserver on $api_host:$api_port"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$api_host" --secure-port "$api_port" --advertise-address "$api_host" \
    "${api_flags[@]}" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" \
    --kubelet-client-certificate "$p/admin.crt" --kubelet-client-key "$p/admin.key" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-cluster-ip-range "$service_cidr" \
    --authorization-mode Node,RBAC \
    --allow-privileged=true \
    --cert-dir "$dir/apiserver-certs"
  wait_for kube-apiserver 240 kctl get --raw /readyz

  say "starting kube-controller-manager and kube-scheduler"
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/admin.kubeconfig" \
    --authentication-kubeconfig "$dir/admin.kubeconfig" --authorization-kubeconfig "$dir/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
    --kube-api-qps "$kcm_qps" --kube-api-burst "$((kcm_qps * 3 / 2))"
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$dir/admin.kubeconfig" \
    --authentication-kubeconfig "$dir/admin.kubeconfig" --authorization-kubeconfig "$dir/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false

  if [ "$node_kind" = real ]; then
    node_start
  else
    say "starting kwok (pod IPs from $pod_cidr)"
    kwok_config
    start kwok "$bin/kwok" --kubeconfig "$dir/admin.kubeconfig" --config "$dir/kwok.yaml" \
      --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
      --cidr "$pod_cidr" --node-ip 10.243.0.1 --node-lease-duration-seconds 40

    say "creating $nodes simulated nodes"
    for i in $(seq "$nodes"); do
      kctl apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
  capacity: {cpu: "32", memory: 256Gi, pods: "250"}
NODE
    done
    wait_for "simulated nodes" 120 kctl wait --for=condition=Ready node --all --timeout=1s
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
