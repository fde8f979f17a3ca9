#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, if any is missing:
#   haproxy      validates every config; serves in the data-plane tests
#   openssl      the local cluster's certificates
#   curl         health checks of the local cluster
#   iproute2     network namespaces (data-plane tests, the real node)
# and, for the real node (containerd, kubelet and kube-proxy are built from
# their Go modules by hack/build-binaries.sh):
#   runc, containernetworking-plugins (bridge, host-local, loopback, portmap),
#   iptables and conntrack (kube-proxy), mmdebstrap (image root filesystems);
#   gcc and make (jemalloc, the controller's allocator, and the pause image).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

missing=()
need() { command -v "$1" >/dev/null || [ -x "$1" ] || missing+=("$2"); }
# The tests run Debian trixie's HAProxy 3.0 on any Debian (hack/haproxy.sh).
need patchelf patchelf
need openssl openssl
need curl curl
need ip iproute2
need runc runc
need /usr/lib/cni/bridge containernetworking-plugins
need iptables iptables
need conntrack conntrack
need mmdebstrap mmdebstrap
# mmdebstrap unpacks the image root filesystems without root privileges of
# its own only with these; as root it needs neither, but they are small.
need gcc gcc
# jemalloc, the controller's allocator, is compiled from C by its crate.
need make make
# .ci/run checks every script with it.
need shellcheck shellcheck

for tool in go cargo; do
  command -v "$tool" >/dev/null || die "$tool is not installed (Go >= 1.26 and Rust are needed)"
done
if [ ${#missing[@]} -eq 0 ]; then
  say "all Debian packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  die "missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]}) and run again"
fi
say "installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
say "installed"
