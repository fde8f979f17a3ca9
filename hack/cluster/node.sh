# shellcheck shell=bash disable=SC2154 # the settings are local-cluster.sh's
# The real node, sourced by hack/local-cluster.sh: containerd, kubelet and
# kube-proxy on this machine, like kind's node. What it changes on this
# machine is recorded first, so that `down` can put it back exactly.

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
  render "$root/hack/cluster/containerd.toml" DIR="$dir" RUNC="$(command -v runc)" >"$dir/containerd/config.toml"
  # The bridge plugin: one /24 on lbpool0, the node's address as gateway,
  # masquerade for traffic leaving the pod range.
  render "$root/hack/cluster/10-lbpool.conflist" BRIDGE="$bridge" DIR="$dir" \
    POD_CIDR="$node_pod_cidr" NODE_IP="$node_ip" >"$dir/cni/net.d/10-lbpool.conflist"
}

kubelet_config() {
  mkdir -p "$dir/kubelet"
  render "$root/hack/cluster/kubelet.yaml" CGROUP_ROOT="$cgroup_root" DIR="$dir" \
    NODE_IP="$node_ip" POD_CIDR="$node_pod_cidr" >"$dir/kubelet/config.yaml"
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
  bash "$root/hack/images.sh" --import "$dir/containerd/containerd.sock" >/dev/null

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
    # shellcheck disable=SC2038 # xargs reads the pids in the files, not file names
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
    if [ -d "$c/$cgroup_root" ]; then
      find "$c/$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
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
