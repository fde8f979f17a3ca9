#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, if any is missing:
# haproxy (validates every config; runs them in the data-plane tests), openssl
# (the local cluster's certificates), curl, iproute2 (network namespaces).
set -euo pipefail

say() { printf '[deps %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v ip >/dev/null || missing+=(iproute2)

for tool in go cargo; do
  command -v "$tool" >/dev/null || { say "ERROR: $tool is not installed (Go >= 1.26 and Rust are needed)"; exit 1; }
done
if [ ${#missing[@]} -eq 0 ]; then
  say "all Debian packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  say "ERROR: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]}) and run again"
  exit 1
fi
say "installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
say "installed"
