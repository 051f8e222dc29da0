#!/usr/bin/env bash
# Builds the container images p2pchat/directory and p2pchat/peer from this checkout (and
# p2pchat/nats from this machine's nats-server, when it has one), with no
# image registry: the images are FROM scratch (see deploy/Dockerfile), so everything in them is
# staged here from the build machine.
#
#   1. cargo builds the release binaries (reusing cargo's target folder, so a rebuild is quick);
#   2. a build context is staged in TARGET/docker-context: the binaries (debug info stripped),
#      every shared library `ldd` lists for them, the dynamic loader, glibc's NSS modules for
#      `files` and `dns` when this glibc is older than 2.34 (newer ones have them built in),
#      /etc/nsswitch.conf, an empty /tmp and an empty /data;
#   3. `docker build` makes one image per binary from deploy/Dockerfile;
#   4. each image is run once (`--version`) to prove the loader and libraries are complete.
#
# Environment: IMAGE_PREFIX (default p2pchat), IMAGE_TAG (default latest), CARGO_TARGET_DIR.
# The images are glibc-dynamic: they run on x86_64 Linux engines like the machine that built them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

prefix=${IMAGE_PREFIX:-p2pchat}
tag=${IMAGE_TAG:-latest}
bins=(directory peer)

echo "== cargo build --release (${bins[*]})"
cargo build --release --locked -p directory -p peer

target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -E 's/.*"target_directory":"([^"]*)".*/\1/')
[ -d "$target_dir/release" ] || { echo "build-images: no $target_dir/release" >&2; exit 1; }

ctx="$target_dir/docker-context"
echo "== staging the build context in $ctx"
rm -rf "$ctx"
mkdir -p "$ctx/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data"
chmod 1777 "$ctx/rootfs/tmp"
chmod 0755 "$ctx/data"

# Copies the file behind $1 (following symlinks) to the same path under rootfs/.
stage_file() {
  local src=$1 dest="$ctx/rootfs$1"
  [ -e "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  cp -L "$src" "$dest"
  chmod 0755 "$dest"
  echo "   $src"
}

libc_dir=
# stage_bin SRC NAME: bin/NAME from SRC (debug info stripped), with its loader and libraries.
stage_bin() {
  local src=$1 bin=$2 interp ldd_out lib
  strip --strip-debug -o "$ctx/bin/$bin" "$src"
  echo "   bin/$bin ($(du -h "$ctx/bin/$bin" | cut -f1))"
  # The program interpreter, exactly at the path the binary names.
  interp=$(readelf -l "$src" | sed -nE 's/.*Requesting program interpreter: ([^]]+)\].*/\1/p')
  if [ -z "$interp" ]; then
    echo "   $bin is statically linked"
    return 0
  fi
  stage_file "$interp"
  ldd_out=$(ldd "$src")
  if grep -q 'not found' <<<"$ldd_out"; then
    echo "build-images: $bin needs a library that is missing here:" >&2
    echo "$ldd_out" >&2
    exit 1
  fi
  while read -r lib; do
    stage_file "$lib"
    case "$lib" in */libc.so.*) libc_dir=$(dirname "$lib") ;; esac
  done < <(sed -nE 's/.*=> (\/[^ ]+) \(0x[0-9a-f]+\)$/\1/p' <<<"$ldd_out")
}

for bin in "${bins[@]}"; do
  stage_bin "$target_dir/release/$bin" "$bin"
done
# NATS for the cluster's stack (deploy/docker-compose.cluster.yml): the nats-server installed
# on this machine (.ci/run installs Debian's), in an image of its own.
if nats=$(command -v nats-server); then
  stage_bin "$nats" nats-server
  bins+=(nats)
else
  echo "   no nats-server here: no nats image (the cluster's stack needs one)"
fi

# Name resolution (getaddrinfo, for `directory:9000`) goes through NSS. Since glibc 2.34 the
# `files` and `dns` services are built into libc (libnss_files.so.2 and libnss_dns.so.2 are
# empty stubs then, not needed); an older glibc loads them with dlopen, which ldd cannot see.
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -nE 's/^glibc ([0-9]+)\.([0-9]+).*/\1 \2/p')
if [ -n "$libc_dir" ] && [ -n "$glibc" ] && read -r major minor <<<"$glibc" &&
  [ "$major" -eq 2 ] && [ "$minor" -lt 34 ]; then
  for nss in libnss_files.so.2 libnss_dns.so.2; do
    stage_file "$libc_dir/$nss"
    while read -r lib; do stage_file "$lib"; done < <(ldd "$libc_dir/$nss" |
      sed -nE 's/.*=> (\/[^ ]+) \(0x[0-9a-f]+\)$/\1/p')
  done
fi
# Docker bind-mounts /etc/hosts and /etc/resolv.conf (its embedded DNS) into every container.
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"

for bin in "${bins[@]}"; do
  image="$prefix/$bin:$tag"
  echo "== docker build $image"
  old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  docker build --quiet -f deploy/Dockerfile --target "$bin" -t "$image" "$ctx"
  # The image this tag named before is garbage now, unless a container still uses it.
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
  echo "   $image runs: $(docker run --rm --network none "$image" --version 2>&1 | head -1)"
done
