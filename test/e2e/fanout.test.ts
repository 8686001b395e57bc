/**
 * Peer fan-out end to end, on real containerd (issue 15): the API double, an upstream and a cache
 * registry, the real `stowage controller --fanout-mode planned`, and three nodes, each its own
 * containerd with a real `stowage agent --fanout-mode planned` whose peer endpoint listens on the
 * node's own loopback address (its Node's InternalIP). One cache copy of each blob leaves the
 * cache; the other nodes read theirs from peers, and their NodeCache status says so.
 * containerd needs root: without it this file fails loudly.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyPeerToken } from "../../src/agent/peer/token.ts";
import { loadAllCrds } from "../../src/api/crds.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { KubeClient } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type AgentNode, startAgentNode } from "../../testkit/agentNode.ts";
import { startApiServer, type TestApiServer } from "../../testkit/apiserver/index.ts";
import { type ControllerProcess, startControllerProcess } from "../../testkit/controllerProcess.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort, portFreeOnAll } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../support/eventually.ts";

const MiB = 1024 * 1024;
const NODES = ["fan-1", "fan-2", "fan-3"];
const ipOf = (node: string) => `127.0.0.${41 + NODES.indexOf(node)}`;

let dir: string;
let api: TestApiServer;
let client: KubeClient;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let cacheFront: FaultProxy;
let controller: ControllerProcess | undefined;
const nodes: AgentNode[] = [];
let image: PushedImage;
let secret: Buffer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "stowage-e2e-fanout-"));
  const kubeconfigPath = join(dir, "kubeconfig");
  api = await startApiServer({ crds: loadAllCrds() as never, kubeconfigPath });
  client = KubeClient.load({ path: kubeconfigPath });
  [upstream, cache] = await Promise.all([startRegistry(), startRegistry()]);
  // Nodes reach the cache through this proxy, which records every blob range it serves them.
  cacheFront = await startFaultProxy(cache.url);
  const push = new RegistryClient({ insecureHosts: [upstream.host] });
  image = await pushSinglePlatformImage(push, { registry: upstream.host, repository: "acme/fan" }, "1.0", {
    layerSizes: [5 * MiB + 123, 700 * 1024],
    seed: "e2e-fanout",
  });
  await push.close();

  secret = randomBytes(32);
  const secretFile = join(dir, "fanout-secret");
  await writeFile(secretFile, secret, { mode: 0o600 });
  const peerPort = await portFreeOnAll(NODES.map(ipOf));
  for (const name of ["stowage-system", "ml"])
    await api.create({ apiVersion: "v1", kind: "Namespace", metadata: { name } });
  for (const name of NODES) {
    await api.create({
      apiVersion: "v1",
      kind: "Node",
      metadata: { name, labels: { "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64" } },
      spec: {},
      status: {
        addresses: [{ type: "InternalIP", address: ipOf(name) }],
        conditions: [{ type: "Ready", status: "True" }],
        nodeInfo: { architecture: "amd64", operatingSystem: "linux" },
      },
    });
  }
  controller = await startControllerProcess({
    kubeconfig: kubeconfigPath,
    cacheRegistry: cache.url,
    args: [
      "--insecure-registry",
      upstream.host,
      "--leader-elect=false",
      `--cache-endpoint-for-nodes=${cacheFront.url}`,
      "--fanout-mode=planned",
      `--fanout-secret-file=${secretFile}`,
      `--fanout-peer-port=${peerPort}`,
      "--fanout-peer-slots=2",
      "--fanout-cache-slots=1",
      "--fanout-piece-size=1Mi",
    ],
  });
  for (const name of NODES) {
    nodes.push(
      await startAgentNode(name, {
        kubeconfig: kubeconfigPath,
        logsDir: dir,
        extraArgs: [
          "--fanout-mode=planned",
          `--fanout-secret-file=${secretFile}`,
          `--fanout-bind-address=${ipOf(name)}`,
          `--fanout-peer-port=${peerPort}`,
          `--fanout-mirror-port=${await freePort()}`,
          // A loaded CI machine may pause a peer for a second; this test is about the plan.
          "--fanout-stall-timeout=15s",
        ],
      }),
    );
  }
}, 120_000);

afterAll(async () => {
  await Promise.all(nodes.map((node) => node.stop()));
  await controller?.kill("SIGTERM");
  client?.close();
  await cacheFront?.stop();
  await Promise.all([api?.stop(), upstream?.stop(), cache?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

describe("peer fan-out on three real containerd nodes", () => {
  it("pre-warms every node with one cache copy of each blob, the rest from peers, and says so in NodeCache status", async () => {
    await api.create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "fan", namespace: "ml" },
      spec: { image: `${upstream.host}/acme/fan:1.0`, prewarm: { enabled: true, maxConcurrentNodes: 3 } },
    });
    const nodeCaches = client.resource<NodeCache>(NodeCacheResource);
    const digest = image.digest;
    let caches: NodeCache[] = [];
    await eventually(
      "every node reports the image Present",
      async () => {
        caches = (await nodeCaches.list()).items.filter((nc) => NODES.includes(nc.metadata.name ?? ""));
        return (
          caches.length === NODES.length &&
          caches.every((nc) => nc.status?.images?.find((i) => i.digest === digest)?.state === "Present")
        );
      },
      180_000,
    );

    const blobs = image.image.blobs.map((b) => b.descriptor);
    const imageBytes = blobs.reduce((sum, b) => sum + b.size, 0);
    // Each node's image came whole, and from peers for all but the cache's one copy of each blob.
    const peerBytes = new Map<string, number>();
    for (const nc of caches) {
      expect(nc.status?.peerFailures ?? [], nc.metadata.name).toEqual([]);
      const sources = nc.status?.images?.find((i) => i.digest === digest)?.sources ?? [];
      expect(
        sources.reduce((sum, s) => sum + s.bytes, 0),
        `${nc.metadata.name} bytes by source`,
      ).toBe(imageBytes);
      for (const s of sources)
        if (s.source !== "cache") peerBytes.set(s.source, (peerBytes.get(s.source) ?? 0) + s.bytes);
    }
    expect([...peerBytes.values()].reduce((sum, b) => sum + b, 0)).toBe((NODES.length - 1) * imageBytes);
    for (const peer of peerBytes.keys()) expect(NODES).toContain(peer);

    // The cache sent each blob once (the proxy counts the ranges it served the nodes).
    for (const blob of blobs) {
      const served = cacheFront
        .seen()
        .filter((r) => r.method === "GET" && r.path.split("?")[0].endsWith(`/blobs/${blob.digest}`))
        .reduce((sum, r) => {
          const range = /^bytes=(\d+)-(\d+)$/.exec(r.range ?? "");
          return sum + (range ? Number(range[2]) - Number(range[1]) + 1 : blob.size);
        }, 0);
      expect(served, `cache bytes of ${blob.digest}`).toBe(blob.size);
    }

    // What the controller wrote: pieces of at most 1 MiB, the peers' InternalIP endpoints, and a
    // peer token for exactly the digests a node reads from peers (nodes still missing blobs only;
    // once Present a node's spec carries no pieces).
    for (const nc of caches) {
      for (const peer of nc.spec.peers ?? []) expect(peer.endpoint).toContain(ipOf(peer.node));
      if (nc.spec.peerToken)
        expect(verifyPeerToken(secret, nc.spec.peerToken.token, Date.now()).receiver).toBe(nc.metadata.name);
    }
  }, 240_000);
});
