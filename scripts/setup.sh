#!/usr/bin/env bash
# Installs what Stowage's tests, benchmarks and local sandbox need on a Debian 12 machine:
# Node 24 when the machine's Node is older than 22, the real components the tests start on
# loopback (CNCF distribution, containerd with CRI, skopeo, promtool, lua), npm packages, and
# the real Kubernetes control plane, kubelet, kubectl and helm at one pinned release, built from
# Go modules (scripts/build-k8s.sh: once, ~10-40 min on 2 cores; needs Go >= 1.26).
# Safe to run again: it installs only what is missing. STOWAGE_SKIP_K8S_BUILD=1 skips the build
# (the demo runs on the API test double and needs none of it).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# shellcheck source=scripts/node-version.sh
. scripts/node-version.sh
current=$(node --version 2>/dev/null || true)
if node_too_old "$current"; then
  echo "setup: Node ${current:-none} is older than ${STOWAGE_NODE_FLOOR_MAJOR}.${STOWAGE_NODE_FLOOR_MINOR}, installing Node 24 from the npm registry" >&2
  as_root npm install -g --force node@24
  hash -r
fi
echo "setup: node $(node --version)" >&2

# containernetworking-plugins (the `loopback` CNI plugin) and busybox-static (a FROM-scratch
# image that runs) are for the real kubelet nodes (testkit/kubeletNode.ts). docker.io, debootstrap
# and binutils (strip) build the Dockerfile in test/image with bases made here
# (scripts/build-image.sh): no registry serves base images to CI. tinyproxy is the real HTTP
# proxy the proxy tests go through (test/hostile/proxy.test.ts).
packages=(docker-registry skopeo containerd prometheus lua5.1 lua-dkjson apache2-utils openssl
  containernetworking-plugins busybox-static
  docker.io debootstrap binutils tinyproxy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

npm ci --no-audit --no-fund

if [ "${STOWAGE_SKIP_K8S_BUILD:-0}" = "1" ]; then
  echo "setup: STOWAGE_SKIP_K8S_BUILD=1: not building the Kubernetes binaries (the real-k8s tests will build them)" >&2
else
  bin=$(bash scripts/build-k8s.sh)
  echo "setup: kubectl $("$bin/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | head -1), helm and the control plane in $bin" >&2
fi

# The real S3 server (SeaweedFS) the scale-out tests store the cache registry in
# (scripts/build-s3.sh: once, ~7 min on 2 cores). STOWAGE_SKIP_S3_BUILD=1 skips it.
if [ "${STOWAGE_SKIP_S3_BUILD:-0}" = "1" ]; then
  echo "setup: STOWAGE_SKIP_S3_BUILD=1: not building the S3 server (the S3 tests will build it)" >&2
else
  echo "setup: SeaweedFS (S3) in $(bash scripts/build-s3.sh)" >&2
fi
