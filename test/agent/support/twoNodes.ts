/**
 * Two containerd "nodes" (A and B), a cache registry behind a fault proxy (which records, and can
 * pace, what the nodes read from it), an upstream host name the nodes' hosts.toml mirrors, and a
 * CRI client per node: what the fan-out tests on real containerd start with. A pulls from the
 * cache directly (through the proxy with `viaProxy`); B is set up by each test.
 */
import { CriClient } from "../../../src/agent/cri.ts";
import { applyMirrorConfig } from "../../../src/agent/hostsToml.ts";
import { RegistryClient } from "../../../src/oci/registry.ts";
import { type RunningContainerd, startContainerd } from "../../../testkit/containerd.ts";
import { type FaultProxy, type SeenRequest, startFaultProxy } from "../../../testkit/faultProxy.ts";
import { freePort } from "../../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../../testkit/registry.ts";

export interface TwoNodes {
  nodeA: RunningContainerd;
  nodeB: RunningContainerd;
  cache: RunningRegistry;
  cacheProxy: FaultProxy;
  /** Pushes into the cache. */
  registryClient: RegistryClient;
  /** The upstream host the images are named after (nothing listens there). */
  upstreamHost: string;
  runtimeA: CriClient;
  runtimeB: CriClient;
  /** The GETs of `digest` the cache proxy saw. */
  blobGets(digest: string): SeenRequest[];
  stop(): Promise<void>;
}

export async function startTwoNodes(options: { aViaProxy?: boolean } = {}): Promise<TwoNodes> {
  const [nodeA, nodeB, cache] = await Promise.all([startContainerd(), startContainerd(), startRegistry()]);
  const cacheProxy = await startFaultProxy(cache.url);
  const registryClient = new RegistryClient({ insecureHosts: [cache.host] });
  const upstreamHost = `127.0.0.1:${await freePort()}`;
  const runtimeA = new CriClient(nodeA.socketPath);
  const runtimeB = new CriClient(nodeB.socketPath);
  await applyMirrorConfig(nodeA.certsDir, [upstreamHost], {
    cacheEndpoint: options.aViaProxy ? cacheProxy.url : cache.url,
  });
  return {
    nodeA,
    nodeB,
    cache,
    cacheProxy,
    registryClient,
    upstreamHost,
    runtimeA,
    runtimeB,
    blobGets: (digest) =>
      cacheProxy
        .seen()
        .filter((r) => r.method === "GET" && r.path.split("?")[0].endsWith(`/blobs/${digest}`)),
    async stop() {
      runtimeA.close();
      runtimeB.close();
      await registryClient.close();
      await cacheProxy.stop();
      await Promise.all([nodeA.dispose(), nodeB.dispose(), cache.stop()]);
    },
  };
}
