#!/usr/bin/env bash
# Builds the real S3 server the scale-out tests run distribution's S3 storage driver against:
# SeaweedFS's `weed` (one process serves master, volume, filer and S3: `weed mini` /
# `weed server -s3`), from the pinned Go module in tools/s3.
#
# Output: $STOWAGE_TOOLS_DIR (default ~/.cache/stowage/tools)/s3-<key>/bin, where <key> is a
# hash of tools/s3 (go.mod, go.sum, tools.go), this script and the Go version; prints that bin
# folder on stdout. A folder already built for the same key is reused, so a warm run costs
# nothing. `--check` prints the folder only when already built (exit 1 otherwise).
# Needs Go >= 1.26 (the machine's /usr/local/go; Debian's golang-go is older).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/s3"

export PATH="/usr/local/go/bin:$PATH"
# The machine's toolchain, never a downloaded one; no VCS stamping (the binary is keyed below).
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -buildvcs=false"
command -v go >/dev/null || { echo "build-s3: Go is not installed (need Go >= 1.26 at /usr/local/go or on PATH)" >&2; exit 1; }
gov=$(go env GOVERSION | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/')
read -r gomaj gomin <<<"$gov"
if [ "$gomaj" -lt 1 ] || { [ "$gomaj" -eq 1 ] && [ "$gomin" -lt 26 ]; }; then
  echo "build-s3: $(go env GOVERSION) is too old; the pinned SeaweedFS needs Go >= 1.26" >&2; exit 1
fi

seaweed_version=$(awk '$1=="require" && $2=="github.com/seaweedfs/seaweedfs"{print $3; exit}' "$mod/go.mod")
ldflags="-s -w"
# The key names what decides the binary: the pins, the flags, this script and the toolchain.
key=$( (cd "$mod" && cat go.mod go.sum tools.go "$root/scripts/build-s3.sh"; echo "$ldflags"; go env GOVERSION) | sha256sum | cut -c1-16)
cache="${STOWAGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stowage/tools}"
out="$cache/s3-$key"

if [ -x "$out/bin/weed" ]; then echo "$out/bin"; exit 0; fi
# --check: say where the binary is if it is built, and fail rather than build.
[ "${1:-}" = "--check" ] && exit 1

echo "build-s3: building SeaweedFS $seaweed_version (weed) into $out (first time: ~7 min on 2 busy cores)" >&2
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-s3.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$mod"
echo "build-s3: downloading modules" >&2
go mod download
echo "build-s3: compiling weed (go build -v lists each package as it compiles)" >&2
# -v prints one package per line: every hundredth is shown as progress; the whole output is kept
# in build-s3.log and its end shown when the build fails.
set +e
CGO_ENABLED=0 go build -v -trimpath -ldflags "$ldflags" -o "$tmp/weed" \
  github.com/seaweedfs/seaweedfs/weed 2>&1 | tee "$cache/build-s3.log" | awk '{ n++; if (n % 100 == 0) printf "build-s3: %d packages compiled (%s)\n", n, $0 > "/dev/stderr" }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "build-s3: go build failed (exit $status); the end of $cache/build-s3.log:" >&2
  tail -n 30 "$cache/build-s3.log" >&2
  exit 1
fi
[ -x "$tmp/weed" ] || { echo "build-s3: weed was not built" >&2; exit 1; }
rm -rf "$out"; mkdir -p "$out/bin"; mv "$tmp/weed" "$out/bin/weed"
echo "build-s3: done: $("$out/bin/weed" version 2>&1 | head -1)" >&2
echo "$out/bin"
