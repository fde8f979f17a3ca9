#!/usr/bin/env bash
# The HAProxy lbpool ships, for this machine: Debian $HAPROXY_SUITE's
# haproxy ($HAPROXY_MAJOR LTS), the same package as in the images, runnable
# here whatever this machine's own Debian is.
#
# A minimal root filesystem of that suite with haproxy (mmdebstrap, from
# Debian's packages) is built once and cached; hack/images.sh uses the same
# one as its base layer. A copy of its haproxy binary gets that root's
# dynamic loader and libraries (patchelf), so it runs, and re-executes
# itself on a master-worker reload, on this machine's kernel with nothing
# of this machine's libraries. Prints the binary's path:
#
#   HAPROXY_BIN=$(bash hack/haproxy.sh)
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

base=$(haproxy_base)
dir="$cache/haproxy/$HAPROXY_SUITE"
haproxy="$dir/bin/haproxy"

if [ ! -s "$base" ]; then
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (hack/deps.sh installs it)"
  # The host's Debian sources, for its suite's name, when it has them, so a
  # configured mirror is used.
  sources=()
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then
      # mmdebstrap tells the formats apart by the file's name.
      list="$cache/$HAPROXY_SUITE.tmp.${f##*.}"
      sed -E "s/\b(bookworm|trixie|forky)\b/$HAPROXY_SUITE/g" "$f" >"$list"
      sources=("$list")
      break
    fi
  done
  say "root filesystem: Debian $HAPROXY_SUITE minbase + haproxy (mmdebstrap, about a minute)"
  mkdir -p "$(dirname "$base")"
  mmdebstrap --quiet --variant=minbase --include=haproxy \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    "$HAPROXY_SUITE" "${base%.tar}.tmp.tar" "${sources[@]}" || die "mmdebstrap failed"
  rm -f "${sources[@]}"
  mv "${base%.tar}.tmp.tar" "$base"
  rm -rf "$dir"
fi

if [ ! -x "$haproxy" ] || [ "$base" -nt "$haproxy" ]; then
  command -v patchelf >/dev/null || die "patchelf is missing (hack/deps.sh installs it)"
  rm -rf "$dir"
  mkdir -p "$dir/root" "$dir/bin"
  tar -xf "$base" -C "$dir/root" --exclude=./dev || die "unpacking $base failed"
  r="$dir/root"
  libs="$r/lib/x86_64-linux-gnu:$r/usr/lib/x86_64-linux-gnu"
  cp "$r/usr/sbin/haproxy" "$haproxy.tmp"
  patchelf --set-interpreter "$r/lib64/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$libs" "$haproxy.tmp" ||
    die "patchelf failed"
  mv "$haproxy.tmp" "$haproxy"
fi
# The whole answer first: cut by a pipe, haproxy would die of SIGPIPE.
answer=$("$haproxy" -v 2>&1) || die "$haproxy does not run: $answer"
version=${answer%%$'\n'*}
case "$version" in
  "HAProxy version $HAPROXY_MAJOR."*) ;;
  *) die "$haproxy is not HAProxy $HAPROXY_MAJOR: $version" ;;
esac
say "$version ($haproxy)"
echo "$haproxy"
