# shellcheck shell=bash
# Sourced by every script of hack/ and by .ci/run: strict mode, the
# checkout, the pinned versions, the cache of expensive builds, and progress
# lines on stderr.
#
#   tag=images; source "$(dirname "$0")/lib.sh"

set -euo pipefail

# The checkout this library belongs to.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"
# Builds kept between runs, outside the checkout: Go-built binaries, image
# roots, the Rust target directory (.ci/run).
cache=${LBPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lbpool}
# Where cargo builds (the same default as cargo's).
# shellcheck disable=SC2034 # for the scripts that source this
target=${CARGO_TARGET_DIR:-$root/target}
# The Go-built Kubernetes binaries (hack/build-binaries.sh).
# shellcheck disable=SC2034 # for the scripts that source this
bin="$cache/bin/k8s-$KUBERNETES_VERSION"

started=$(date +%s)
tag=${tag:-$(basename "$0" .sh)}

# say MESSAGE: a progress line, with the time and the seconds since start.
say() { printf '[%s %s +%ss] %s\n' "$tag" "$(date +%H:%M:%S)" "$(($(date +%s) - started))" "$*" >&2; }
# die MESSAGE: says it as an error and exits 1.
die() {
  say "ERROR: $*"
  exit 1
}

# haproxy_base: the cached root filesystem of Debian $HAPROXY_SUITE with
# haproxy (hack/haproxy.sh builds it; hack/images.sh's base layer).
haproxy_base() { echo "$cache/images/rootfs-$HAPROXY_SUITE-haproxy.tar"; }

# render TEMPLATE NAME=VALUE...: the file TEMPLATE with every @NAME@
# replaced by VALUE; a placeholder left unreplaced is an error.
render() {
  local text kv left
  text=$(<"$1")
  shift
  for kv in "$@"; do
    text=${text//"@${kv%%=*}@"/"${kv#*=}"}
  done
  left=$(grep -o '@[A-Z_]*@' <<<"$text" | sort -u | tr '\n' ' ' || true)
  [ -z "$left" ] || die "render: $left left in a template"
  printf '%s\n' "$text"
}
