#!/usr/bin/env bash
# Builds the real Kubernetes components the tests run (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl) and helm from the pinned Go
# module in tools/k8s, in one `go build` so the k8s.io packages they share compile once.
#
# Output: $STOWAGE_TOOLS_DIR (default ~/.cache/stowage/tools)/<key>/bin, where <key> is a hash
# of tools/k8s (go.mod, go.sum, sources) and this script; prints that bin folder on stdout.
# A folder already built for the same key is reused, so a warm run costs nothing. Go's module
# and build caches stay where Go keeps them (GOMODCACHE, GOCACHE), so a changed pin rebuilds
# only what changed. `--check` prints the folder only when already built (exit 1 otherwise).
# Needs Go >= 1.26 (the machine's /usr/local/go; Debian's golang-go is older).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/k8s"

export PATH="/usr/local/go/bin:$PATH"
# The machine's toolchain, never a downloaded one; no VCS stamping (the binaries are keyed below).
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -buildvcs=false"
command -v go >/dev/null || { echo "build-k8s: Go is not installed (need Go >= 1.26 at /usr/local/go or on PATH)" >&2; exit 1; }
gov=$(go env GOVERSION | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/')
read -r gomaj gomin <<<"$gov"
if [ "$gomaj" -lt 1 ] || { [ "$gomaj" -eq 1 ] && [ "$gomin" -lt 26 ]; }; then
  echo "build-k8s: $(go env GOVERSION) is too old; k8s.io/kubernetes v1.37 needs Go >= 1.26" >&2; exit 1
fi

k8s_version=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$mod/go.mod")
helm_version=$(awk '$1=="helm.sh/helm/v4"{print $2; exit}' "$mod/go.mod")
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl helm)
cv=k8s.io/component-base/version
ldflags="-s -w -X $cv.gitVersion=$k8s_version -X $cv.gitMajor=$(echo "$k8s_version" | sed -E 's/^v([0-9]+)\..*/\1/') \
 -X $cv.gitMinor=$(echo "$k8s_version" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/') -X $cv.gitTreeState=clean \
 -X $cv.buildDate=1970-01-01T00:00:00Z -X helm.sh/helm/v4/internal/version.version=$helm_version"
# The key names what decides the binaries: the pins, the sources, the flags and the toolchain.
key=$( (cd "$mod" && cat go.mod go.sum tools.go cmd/etcd/main.go; echo "${binaries[*]} $ldflags"; go env GOVERSION) | sha256sum | cut -c1-16)
cache="${STOWAGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stowage/tools}"
out="$cache/k8s-$k8s_version-$key"

complete=1
for b in "${binaries[@]}"; do [ -x "$out/bin/$b" ] || complete=0; done
if [ "$complete" -eq 1 ]; then echo "$out/bin"; exit 0; fi
# --check: say where the binaries are if they are built, and fail rather than build.
[ "${1:-}" = "--check" ] && exit 1

echo "build-k8s: building Kubernetes $k8s_version, etcd and helm $helm_version into $out (first time: 15-40 min on 2 cores)" >&2
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$mod"
echo "build-k8s: downloading modules" >&2
go mod download
echo "build-k8s: compiling ${binaries[*]} (go build -v lists each package as it compiles)" >&2
# -v prints one package per line: every hundredth is shown as progress; the whole output is kept
# in build.log and its end shown when the build fails.
set +e
CGO_ENABLED=0 go build -v -trimpath -ldflags "$ldflags" -o "$tmp/" \
  ./cmd/etcd \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubectl \
  helm.sh/helm/v4/cmd/helm 2>&1 | tee "$cache/build.log" | awk '{ n++; if (n % 100 == 0) printf "build-k8s: %d packages compiled (%s)\n", n, $0 > "/dev/stderr" }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "build-k8s: go build failed (exit $status); the end of $cache/build.log:" >&2
  tail -n 30 "$cache/build.log" >&2
  exit 1
fi
for b in "${binaries[@]}"; do [ -x "$tmp/$b" ] || { echo "build-k8s: $b was not built" >&2; exit 1; }; done
rm -rf "$out"; mkdir -p "$out"; mv "$tmp" "$out/bin"; trap - EXIT
echo "build-k8s: done: $("$out/bin/kube-apiserver" --version), $("$out/bin/helm" version --short)" >&2
echo "$out/bin"
