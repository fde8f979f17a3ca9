# shellcheck shell=bash disable=SC2154 # the settings are local-cluster.sh's
# The cluster's PKI, sourced by hack/local-cluster.sh: a CA, the API
# server's serving certificate, client certificates for the tests and the
# control plane (admin), the real node's kubelet and kube-proxy, the
# ServiceAccount signing key, and a kubeconfig for each client.

# client_cert NAME SUBJECT, in pki/: a client certificate signed by the CA.
client_cert() {
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  # An extension makes it an X.509 v3 certificate, which rustls requires.
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$1.crt" -days 365 -extfile client.ext 2>/dev/null
}

# kubeconfig USER: a kubeconfig for one of the client certificates.
kubeconfig() {
  render "$root/hack/cluster/kubeconfig.yaml" API_HOST="$api_host" API_PORT="$api_port" DIR="$dir" USER="$1"
}

certificates() {
  [ -f "$dir/pki/admin.crt" ] && return
  command -v openssl >/dev/null || die "openssl is needed to create the cluster's certificates"
  say "creating certificates"
  local p="$dir/pki"
  mkdir -p "$p"
  (
    cd "$p" || exit
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
