#!/usr/bin/env bash
# Builds lbpool's container images without Docker, as OCI archives:
#
#   lbpool.local/pause        the pod sandbox (hack/images/pause.c, gcc -static)
#   lbpool.local/haproxy      Debian trixie's haproxy 3.0 LTS (the major of
#                             the manifests' haproxy:3.0), entrypoint haproxy
#   lbpool.local/controller   lbpool-controller and lbpool-checker (its checker
#                             container), with that haproxy for `haproxy -c`
#   lbpool.local/agent        lbpool-agent (the InPlace sidecar), with that haproxy
#   lbpool.local/webapp       the demo backend
#
# The haproxy, controller, agent and webapp images share one base layer: a minimal
# Debian root filesystem with haproxy (hack/haproxy.sh: mmdebstrap, from
# Debian's packages), built once and cached. Each image is tagged by the digest of its manifest
# (lbpool.local/controller:3f2a9c...) and also named :local, the tag
# manifests/overlays/local/ uses; the Dockerfiles describe the same images for
# users with Docker.
#
#   hack/images.sh                    build (or reuse) all five; print the archives
#   hack/images.sh --import SOCKET    ... and import them into a node's containerd
#
# Environment: LBPOOL_CACHE (cache root), LBPOOL_IMAGE_PROFILE (cargo profile
# of the workspace binaries: dev by default, release for smaller, faster ones).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

out="$cache/images"
profile=${LBPOOL_IMAGE_PROFILE:-dev}
mkdir -p "$out/work"

import_sock=
if [ "${1:-}" = --import ]; then
  import_sock=${2:?usage: $0 [--import CONTAINERD_SOCKET]}
fi

# The base layer: Debian's root filesystem with haproxy, the one the tests'
# haproxy comes from.
bash "$root/hack/haproxy.sh" >/dev/null
base=$(haproxy_base)
say "base root filesystem: $(du -h "$base" | cut -f1) (cached at $base)"

say "pause: gcc -static"
gcc -static -Os -s -o "$out/work/pause" "$root/hack/images/pause.c" || die "building pause failed (gcc and libc6-dev are needed)"

say "workspace binaries (cargo profile $profile)"
# The same invocation as hack/test.sh's, so its build is reused as it is
# (building two packages alone would unify features differently).
(cd "$root" && cargo build --locked --profile "$profile" --workspace --all-targets) ||
  die "cargo build failed"
target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin_dir="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"
for b in lbpool-controller lbpool-checker lbpool-agent webapp; do
  # Stripped: the debug info of a dev build would be most of the image.
  objcopy --strip-debug "$bin_dir/$b" "$out/work/$b"
done

image() {
  local short=$1; shift
  local archive="$out/$short.tar"
  local name
  name=$(python3 "$root/hack/images/oci-archive.py" --name "lbpool.local/$short" \
    --alias "lbpool.local/$short:local" --out "$archive" "$@") || die "assembling $short failed"
  say "$name ($(du -h "$archive" | cut -f1))"
  archives+=("$archive")
}

archives=()
image pause --file "$out/work/pause:/pause:0755" --entrypoint '["/pause"]' --user 65535
image haproxy --layer "$base" --entrypoint '["/usr/sbin/haproxy"]' \
  --cmd '["-W","-db","-f","/usr/local/etc/haproxy/haproxy.cfg"]'
image controller --layer "$base" --file "$out/work/lbpool-controller:/usr/local/bin/lbpool-controller:0755" \
  --file "$out/work/lbpool-checker:/usr/local/bin/lbpool-checker:0755" \
  --entrypoint '["/usr/local/bin/lbpool-controller"]' --user 65532:65532
image agent --layer "$base" --file "$out/work/lbpool-agent:/usr/local/bin/lbpool-agent:0755" \
  --entrypoint '["/usr/local/bin/lbpool-agent"]' --user 65532:65532
image webapp --layer "$base" --file "$out/work/webapp:/usr/local/bin/webapp:0755" \
  --entrypoint '["/usr/local/bin/webapp"]' --user 65532:65532

if [ -n "$import_sock" ]; then
  bin="$cache/bin/k8s-$KUBERNETES_VERSION"
  [ -x "$bin/ctr" ] || die "ctr is missing: run hack/build-binaries.sh"
  for a in "${archives[@]}"; do
    say "importing $(basename "$a") into the node"
    "$bin/ctr" --address "$import_sock" --namespace k8s.io images import --local "$a" >/dev/null 2>"$out/work/import.log" ||
      die "ctr images import $a failed: $(grep -v DEPRECATION "$out/work/import.log")"
  done
fi
printf '%s\n' "${archives[@]}"
