#!/usr/bin/env bash
# Builds the local cluster from upstream Go modules into a cache outside the
# repository, at the versions pinned in hack/versions.env:
#   control plane  etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#   simulated nodes kwok, kwokctl
#   a real node    kubelet, kube-proxy, containerd (+ containerd-shim-runc-v2, ctr)
#   monitoring     prometheus (Kubernetes and static discovery only), promtool
# A binary already in the cache for the pinned version is reused, so a warm
# run takes well under a second.
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

mkdir -p "$bin" "$cache/src"

command -v go >/dev/null || die "go is not installed; Go >= 1.26 is needed to build the control plane"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

have() { for b in "$@"; do [ -x "$bin/$b" ] || return 1; done; }

build_kubernetes() {
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  if have "${bins[@]}"; then say "kubernetes $KUBERNETES_VERSION: cached"; return; fi
  local mod="$cache/src/kubernetes-$KUBERNETES_VERSION" minor staging_version
  minor=${KUBERNETES_VERSION#v1.}
  staging_version="v0.$minor"
  mkdir -p "$mod"
  say "kubernetes $KUBERNETES_VERSION: resolving staging modules (pinned to $staging_version)"
  local gomod
  gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$KUBERNETES_VERSION"
  {
    echo "module lbpool.dev/local-kubernetes"
    echo
    echo "go 1.26"
    echo
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
    # with ./staging paths, which a dependent module cannot see; pin each one.
    awk '$2 == "v0.0.0" && $1 ~ /^k8s.io\// {print $1}' "$gomod" | sort -u |
      while read -r m; do echo "replace $m => $m $staging_version"; done
  } >"$mod/go.mod"
  local pkgs=()
  for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  say "kubernetes $KUBERNETES_VERSION: downloading modules"
  (cd "$mod" && go get "${pkgs[@]/%/@$KUBERNETES_VERSION}") || die "go get k8s.io/kubernetes failed"
  local v=k8s.io/component-base/version cv=k8s.io/client-go/pkg/version
  local ldflags="-s -w"
  for p in $v $cv; do
    ldflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${minor%%.*}"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "${bins[@]}"; do
    if have "$b"; then continue; fi
    say "kubernetes $KUBERNETES_VERSION: building $b (a cold build takes several minutes on 2 cores)"
    (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b") || die "building $b failed"
    mv "$bin/$b.tmp" "$bin/$b"
  done
}

build_etcd() {
  if have etcd; then say "etcd $ETCD_VERSION: cached"; return; fi
  local mod="$cache/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  # etcd's go.mod files replace their sibling modules with local paths, so
  # `go install pkg@version` refuses them; a wrapper module ignores those lines.
  printf 'module lbpool.dev/local-etcd\n\ngo 1.26\n' >"$mod/go.mod"
  say "etcd $ETCD_VERSION: downloading modules"
  (cd "$mod" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION") || die "go get etcd failed"
  say "etcd $ETCD_VERSION: building"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3) || die "building etcd failed"
  mv "$bin/etcd.tmp" "$bin/etcd"
}

build_kwok() {
  if have kwok kwokctl; then say "kwok $KWOK_VERSION: cached"; return; fi
  say "kwok $KWOK_VERSION: building kwok and kwokctl"
  local p=sigs.k8s.io/kwok/pkg/consts
  GOBIN="$bin" go install -trimpath -ldflags "-s -w -X $p.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" ||
    die "go install kwok failed"
}

build_containerd() {
  local bins=(containerd containerd-shim-runc-v2 ctr)
  if have "${bins[@]}"; then say "containerd $CONTAINERD_VERSION: cached"; return; fi
  local mod="$cache/src/containerd-$CONTAINERD_VERSION" pkg=github.com/containerd/containerd/v2
  mkdir -p "$mod"
  printf 'module lbpool.dev/local-containerd\n\ngo 1.26\n' >"$mod/go.mod"
  say "containerd $CONTAINERD_VERSION: downloading modules"
  (cd "$mod" && go get "$pkg/cmd/containerd@$CONTAINERD_VERSION" "$pkg/cmd/ctr@$CONTAINERD_VERSION" \
    "$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION") || die "go get containerd failed"
  local ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Revision=upstream"
  # No btrfs snapshotter (it needs cgo headers) and no generated man pages.
  local tags=urfave_cli_no_docs,no_btrfs
  for b in "${bins[@]}"; do
    if have "$b"; then continue; fi
    say "containerd $CONTAINERD_VERSION: building $b"
    local t=$tags
    [ "$b" = containerd-shim-runc-v2 ] && t+=,no_grpc
    (cd "$mod" && go build -trimpath -tags "$t" -ldflags "$ldflags" -o "$bin/$b.tmp" "$pkg/cmd/$b") ||
      die "building $b failed"
    mv "$bin/$b.tmp" "$bin/$b"
  done
}

build_prometheus() {
  if have prometheus promtool; then say "prometheus $PROMETHEUS_VERSION: cached"; return; fi
  # The module's go.mod has no replace lines: go install pkg@version works.
  # Only Kubernetes (and static/file/http) discovery: a smaller build. No
  # web UI assets (they are not in the module); the HTTP API needs none.
  # Module v0.316.0 is Prometheus 3.16.0.
  local pkg=github.com/prometheus/prometheus minor=${PROMETHEUS_VERSION#v0.}
  minor=$((${minor%%.*} - 300))
  say "prometheus $PROMETHEUS_VERSION: building prometheus and promtool (a cold build takes several minutes)"
  GOBIN="$bin" go install -trimpath -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=3.$minor.${PROMETHEUS_VERSION##*.}" \
    "$pkg/cmd/prometheus@$PROMETHEUS_VERSION" "$pkg/cmd/promtool@$PROMETHEUS_VERSION" ||
    die "go install prometheus failed"
}

start=$(date +%s)
build_etcd
build_kwok
build_kubernetes
build_containerd
build_prometheus
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl \
  kubelet kube-proxy containerd containerd-shim-runc-v2 ctr prometheus promtool; do
  [ -x "$bin/$b" ] || die "$b is missing from $bin after the build"
done
say "all binaries ready in $bin ($(($(date +%s) - start))s)"
# The last line of stdout is the directory, for callers.
echo "$bin"
