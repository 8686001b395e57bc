# syntax=docker/dockerfile:1
# One image for every `stowage` command: `controller` (Deployment) and `agent` (DaemonSet).
# Node runs the TypeScript sources directly (type stripping), which it refuses under
# node_modules, so the sources live in /app/src and only dependencies in /app/node_modules;
# the stripped sources are kept in a compile cache made at build time (below).
#
# The bases are build arguments so the image can be built where no registry is reachable
# (scripts/build-image.sh makes both from Debian's archive and Node from npm). BUILD_IMAGE needs
# node and npm on PATH and a shell; RUNTIME_IMAGE needs node at /nodejs/bin/node.
ARG BUILD_IMAGE=node:24-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/nodejs24-debian12:nonroot

# Production dependencies only, installed with the full Node image (npm, a shell).
FROM ${BUILD_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Type declarations and source maps are never loaded at run time (a third of the dependencies'
# bytes: @kubernetes/client-node alone ships 38 MB of them).
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force \
 && find node_modules -type f \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' \) -delete

# Run time: distroless Node 24 — no shell, no package manager, non-root by default.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="stowage" \
      org.opencontainers.image.description="Keeps large ML container images warm next to the GPU and CPU nodes that run them" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /app
ENV NODE_ENV=production
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
# Node's compile cache, filled once here: every process the image starts finds its TypeScript
# already stripped and compiled, so none loads the type stripper (≈ 20 MB less resident memory
# per agent, on every node, and a faster start). Read-only at run time (an entry that no longer
# matches its file is ignored); Node keeps a folder per uid: root (the agent) and 65532.
ENV NODE_COMPILE_CACHE=/app/compile-cache
USER 0:0
RUN ["/nodejs/bin/node", "/app/bin/warm-compile-cache.js", "/app/compile-cache", "65532"]
# 65532 is distroless's nonroot user; the chart's agent DaemonSet runs as root (CRI socket) on purpose.
USER 65532:65532
ENTRYPOINT ["/nodejs/bin/node", "/app/bin/stowage.js"]
CMD ["--help"]
