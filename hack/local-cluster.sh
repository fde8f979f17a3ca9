#!/usr/bin/env bash
# A local Kubernetes control plane from the binaries hack/build-binaries.sh
# builds: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and
# kwok simulating nodes, so that Deployments really produce Running, Ready
# pods with IPs and kube-controller-manager really writes EndpointSlices.
# Everything listens on 127.0.0.1.
#
#   hack/local-cluster.sh up       start (idempotent), print the kubeconfig path
#   hack/local-cluster.sh down     stop every process, remove the state
#   hack/local-cluster.sh status   what runs
#   hack/local-cluster.sh logs     paths of the component logs
#   hack/local-cluster.sh restart kube-apiserver   stop one component, start it again
#
# State (certificates, etcd data, logs, kubeconfig) lives in $LBPOOL_CLUSTER_DIR,
# by default <cache>/cluster.
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

say() { printf '[local-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok lbpool-controller)

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

kctl() { "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"; }

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
    printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n' >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 365 -extfile san.ext 2>/dev/null
    # The admin identity of the tests and the control-plane components.
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
      -subj "/O=system:masters/CN=lbpool-admin" 2>/dev/null
    # An extension makes it an X.509 v3 certificate, which rustls requires.
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out admin.crt -days 365 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  cat >"$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lbpool-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $p/ca.crt
users:
- name: lbpool-admin
  user:
    client-certificate: $p/admin.crt
    client-key: $p/admin.key
contexts:
- name: lbpool-local
  context: {cluster: lbpool-local, user: lbpool-admin}
current-context: lbpool-local
EOF
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
  running etcd || check_port "$etcd_port"
  running kube-apiserver || check_port "$api_port"
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

  say "starting kube-apiserver on 127.0.0.1:$api_port"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --secure-port "$api_port" --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
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
    --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$dir/admin.kubeconfig" \
    --authentication-kubeconfig "$dir/admin.kubeconfig" --authorization-kubeconfig "$dir/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false

  say "starting kwok (pod IPs from $pod_cidr)"
  kwok_config
  start kwok "$bin/kwok" --kubeconfig "$dir/admin.kubeconfig" --config "$dir/kwok.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr "$pod_cidr" --node-ip 10.243.0.1 --node-lease-duration-seconds 40

  say "creating $nodes simulated nodes"
  for i in $(seq "$nodes"); do
    kctl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
  capacity: {cpu: "32", memory: 256Gi, pods: "250"}
EOF
  done
  wait_for "simulated nodes" 120 kctl wait --for=condition=Ready node --all --timeout=1s
  wait_for "default ServiceAccount" 120 kctl get serviceaccount default -n default
  say "ready: export KUBECONFIG=$dir/admin.kubeconfig"
  echo "$dir/admin.kubeconfig"
}

down() {
  local i name p
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    name=${components[$i]}
    p=$(pid_of "$name")
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
      kill -KILL -- "-$p" 2>/dev/null || true
    fi
    rm -f "$dir/run/$name.pid"
  done
  if [ "${1:-}" != "--keep" ]; then rm -rf "$dir"; fi
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
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p"
  for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$p" 2>/dev/null || true
  rm -f "$dir/run/$name.pid"
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
