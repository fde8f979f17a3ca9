# shellcheck shell=bash disable=SC2154 # the settings are local-cluster.sh's
# The control plane, sourced by hack/local-cluster.sh: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, and for
# simulated nodes kwok.

control_plane_up() {
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
}

kwok_config() {
  # kwok's stock "fast" stages: nodes become Ready, pods Running and Ready
  # with an IP from --cidr. Read from the kwok module the build downloaded.
  local moddir
  moddir=$(cd "$cache/src" 2>/dev/null || exit 0; GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
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

# kwok_up: kwok and $nodes simulated nodes.
kwok_up() {
  say "starting kwok (pod IPs from $pod_cidr)"
  kwok_config
  start kwok "$bin/kwok" --kubeconfig "$dir/admin.kubeconfig" --config "$dir/kwok.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr "$pod_cidr" --node-ip 10.243.0.1 --node-lease-duration-seconds 40

  say "creating $nodes simulated nodes"
  for i in $(seq "$nodes"); do
    render "$root/hack/cluster/kwok-node.yaml" N="$i" | kctl apply -f - >/dev/null
  done
  wait_for "simulated nodes" 120 kctl wait --for=condition=Ready node --all --timeout=1s
}
