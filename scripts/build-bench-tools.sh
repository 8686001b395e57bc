#!/usr/bin/env bash
# Builds the peer tools bench:mirror runs next to `stowage mirror` (crane, from the pinned
# github.com/google/go-containerregistry in tools/bench) through the Go module proxy.
#
# Output: $STOWAGE_TOOLS_DIR (default ~/.cache/stowage/tools)/bench-<key>/bin, where <key> is a
# hash of tools/bench/go.mod, go.sum, this script and the Go version; prints that bin folder on
# stdout. A folder already built for the same key is reused, so a warm run costs nothing.
# `--check` prints the folder only when already built (exit 1 otherwise). Same pattern as
# scripts/build-k8s.sh. Needs Go >= 1.26 (the machine's /usr/local/go).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/bench"

export PATH="/usr/local/go/bin:$PATH"
# The machine's toolchain, never a downloaded one; no VCS stamping (the binaries are keyed below).
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -buildvcs=false"
command -v go >/dev/null || { echo "build-bench-tools: Go is not installed (need Go >= 1.26 at /usr/local/go or on PATH)" >&2; exit 1; }

binaries=(crane)
key=$( (cd "$mod" && cat go.mod go.sum tools.go; cat "$root/scripts/build-bench-tools.sh"; go env GOVERSION) | sha256sum | cut -c1-16)
cache="${STOWAGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stowage/tools}"
out="$cache/bench-$key"

complete=1
for b in "${binaries[@]}"; do [ -x "$out/bin/$b" ] || complete=0; done
if [ "$complete" -eq 1 ]; then echo "$out/bin"; exit 0; fi
[ "${1:-}" = "--check" ] && exit 1

echo "build-bench-tools: building ${binaries[*]} into $out (first time: a few minutes on 2 cores)" >&2
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$mod"
go mod download
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/crane" github.com/google/go-containerregistry/cmd/crane
mkdir -p "$out"
# Rename into place last, so a half-built folder never looks complete.
rm -rf "$out/bin"
mv "$tmp" "$out/bin"
trap - EXIT
echo "$out/bin"
