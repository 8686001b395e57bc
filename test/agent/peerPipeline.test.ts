/**
 * A fan-out plan is written ahead: a node's source may not have started its own pull, or be part
 * way through it, when the node asks. On two real containerds: the receiver waits for its source,
 * and the source serves the pieces its containerd has already downloaded (its ingest), so pieces
 * pass down the tree while the source is still pulling.
 */
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CriClient } from "../../src/agent/cri.ts";
import { applyMirrorConfig } from "../../src/agent/hostsToml.ts";
import { ContainerdContent } from "../../src/agent/peer/content.ts";
import { containerdIngests } from "../../src/agent/peer/ingest.ts";
import { type BlobAssignment, type Mirror, startMirror } from "../../src/agent/peer/mirror.ts";
import { type PartialBlobs, type PeerServer, startPeerServer } from "../../src/agent/peer/server.ts";
import { issuePeerToken } from "../../src/agent/peer/token.ts";
import type { FanoutPiece } from "../../src/api/nodeCache.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import type { RunningContainerd } from "../../testkit/containerd.ts";
import type { FaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import type { RunningRegistry } from "../../testkit/registry.ts";
import { eventually } from "../support/eventually.ts";
import { startTwoNodes, type TwoNodes } from "./support/twoNodes.ts";

const MiB = 1024 * 1024;
const secret = Buffer.alloc(32, 9);
let two: TwoNodes;
let nodeA: RunningContainerd;
let nodeB: RunningContainerd;
let cache: RunningRegistry;
let cacheProxy: FaultProxy;
let registryClient: RegistryClient;
let runtimeA: CriClient;
let runtimeB: CriClient;
let storeA: ContainerdContent;
let peerA: PeerServer;
let upstreamHost: string;
const assignments = new Map<string, BlobAssignment>();
let peerToken = "";
/** Ranges A served from its containerd's ingest (a blob it was still downloading): digest → count. */
const servedWhileDownloading = new Map<string, number>();

function allFromA(image: PushedImage): void {
  assignments.clear();
  for (const { digest, size } of image.image.layers.map((l) => l.descriptor)) {
    const pieces: FanoutPiece[] = [];
    for (let offset = 0; offset < size; offset += MiB)
      pieces.push({ digest, offset, length: Math.min(MiB, size - offset), source: "node-a", wave: 2 });
    assignments.set(digest, { pieces });
  }
  peerToken = issuePeerToken(secret, {
    receiver: "node-b",
    digests: [...assignments.keys()].sort(),
    exp: Date.now() / 1000 + 600,
  });
}

/** B's mirror over `assignments`, A as its one peer, and B's containerd pointed at it. */
async function mirrorForB(options: { sourceWaitMs?: number; spoolDir?: string } = {}): Promise<Mirror> {
  const mirror = await startMirror({
    cacheEndpoint: cacheProxy.url,
    host: "127.0.0.1",
    port: 0,
    stallTimeoutMs: 2000,
    ...options,
    state: {
      assignment: (digest) => assignments.get(digest),
      endpoint: (node) => (node === "node-a" ? peerA.url : undefined),
      token: () => peerToken,
    },
  });
  await applyMirrorConfig(nodeB.certsDir, [upstreamHost], {
    cacheEndpoint: cacheProxy.url,
    localMirror: { port: mirror.port },
  });
  return mirror;
}

const cacheBlobGets = (digest: string) => two.blobGets(digest);

beforeAll(async () => {
  // A pulls from the cache through the proxy, which paces its blobs in the first test.
  two = await startTwoNodes({ aViaProxy: true });
  ({ nodeA, nodeB, cache, cacheProxy, registryClient, upstreamHost, runtimeA, runtimeB } = two);
  storeA = new ContainerdContent(nodeA.socketPath);
  const ingests = containerdIngests(join(nodeA.dir, "root"));
  const watched: PartialBlobs = {
    async get(digest) {
      const partial = await ingests.get(digest);
      if (partial && partial.available() < partial.size)
        servedWhileDownloading.set(digest, (servedWhileDownloading.get(digest) ?? 0) + 1);
      return partial;
    },
  };
  peerA = await startPeerServer({ store: storeA, partial: watched, secret, host: "127.0.0.1", port: 0 });
});

afterAll(async () => {
  await peerA?.close();
  storeA?.close();
  await two?.stop();
});

describe("pieces passing down a fan-out tree while the source still pulls, on two real containerds", () => {
  it("B waits for A, which has not started, and reads every piece from A, the first ones from A's download in progress", async () => {
    const image = await pushSinglePlatformImage(
      registryClient,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/pipeline` },
      "1.0",
      { layerSizes: [6 * MiB + 11, 300 * 1024], seed: "pipeline" },
    );
    allFromA(image);
    const mirrorB = await mirrorForB();
    try {
      const [big, small] = image.image.layers.map((l) => l.descriptor);
      // A's blobs come at 3 MiB/s: its 6 MiB layer takes about two seconds to download.
      cacheProxy.addRule({
        match: { method: "GET", path: /\/blobs\// },
        times: Number.POSITIVE_INFINITY,
        action: { kind: "throttle", bytesPerSecond: 3 * MiB, latencyMs: 0 },
      });
      const reference = `${upstreamHost}/acme/pipeline@${image.digest}`;
      const pullB = runtimeB.pullImage(reference);
      await new Promise((resolve) => setTimeout(resolve, 300)); // A has not started
      const [idA, idB] = await Promise.all([runtimeA.pullImage(reference), pullB]);
      expect(idB).toBe(idA);

      expect(mirrorB.stats.peerFailures.size).toBe(0);
      expect(Object.fromEntries(mirrorB.stats.sources.get(big.digest) ?? [])).toEqual({ "node-a": big.size });
      expect(Object.fromEntries(mirrorB.stats.sources.get(small.digest) ?? [])).toEqual({
        "node-a": small.size,
      });
      // The cache sent the layers once, to A; B's blobs came from A.
      expect(cacheBlobGets(big.digest)).toHaveLength(1);
      expect(cacheBlobGets(small.digest)).toHaveLength(1);
      // Some of B's pieces were served from A's ingest, before A had the whole layer.
      expect(servedWhileDownloading.get(big.digest) ?? 0).toBeGreaterThan(0);
    } finally {
      cacheProxy.clearRules();
      await mirrorB.close();
    }
  });

  it("A and B each feed the other's next piece: each passes on a piece as soon as it has it, so neither waits on the other", async () => {
    const image = await pushSinglePlatformImage(
      registryClient,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/mutual` },
      "1.0",
      { layerSizes: [2 * MiB], seed: "mutual" },
    );
    const [layer] = image.image.layers.map((l) => l.descriptor);
    // Piece 0: A from the cache, B from A. Piece 1: B from the cache, A from B.
    const plan = (first: string, second: string): BlobAssignment => ({
      pieces: [
        { digest: layer.digest, offset: 0, length: MiB, source: first, wave: first === "cache" ? 1 : 2 },
        { digest: layer.digest, offset: MiB, length: MiB, source: second, wave: second === "cache" ? 1 : 2 },
      ],
    });
    const forA = plan("cache", "node-b");
    const forB = plan("node-a", "cache");
    const tokenFor = (receiver: string) =>
      issuePeerToken(secret, { receiver, digests: [layer.digest], exp: Date.now() / 1000 + 600 });
    const storeB = new ContainerdContent(nodeB.socketPath);
    const peerB = await startPeerServer({
      store: storeB,
      partial: containerdIngests(join(nodeB.dir, "root")),
      secret,
      host: "127.0.0.1",
      port: 0,
    });
    const mirrorOf = async (node: RunningContainerd, assignment: BlobAssignment, receiver: string) => {
      const mirror = await startMirror({
        cacheEndpoint: cacheProxy.url,
        host: "127.0.0.1",
        port: 0,
        // A deadlock would show as a Stalled source after this long, and the cache serving the rest.
        sourceWaitMs: 5000,
        state: {
          assignment: (digest) => (digest === layer.digest ? assignment : undefined),
          endpoint: (peer) => (peer === "node-a" ? peerA.url : peer === "node-b" ? peerB.url : undefined),
          token: () => tokenFor(receiver),
        },
      });
      await applyMirrorConfig(node.certsDir, [upstreamHost], {
        cacheEndpoint: cacheProxy.url,
        localMirror: { port: mirror.port },
      });
      return mirror;
    };
    const mirrorA = await mirrorOf(nodeA, forA, "node-a");
    const mirrorB = await mirrorOf(nodeB, forB, "node-b");
    try {
      const reference = `${upstreamHost}/acme/mutual@${image.digest}`;
      const [idA, idB] = await Promise.all([runtimeA.pullImage(reference), runtimeB.pullImage(reference)]);
      expect(idA).toBe(idB);
      expect([...mirrorA.stats.peerFailures.values()]).toEqual([]);
      expect([...mirrorB.stats.peerFailures.values()]).toEqual([]);
      expect(Object.fromEntries(mirrorA.stats.sources.get(layer.digest) ?? [])).toEqual({
        cache: MiB,
        "node-b": MiB,
      });
      expect(Object.fromEntries(mirrorB.stats.sources.get(layer.digest) ?? [])).toEqual({
        cache: MiB,
        "node-a": MiB,
      });
    } finally {
      await Promise.all([mirrorA.close(), mirrorB.close(), peerB.close()]);
      storeB.close();
      await applyMirrorConfig(nodeA.certsDir, [upstreamHost], { cacheEndpoint: cacheProxy.url });
    }
  });

  it("with a spool, B fetches a later piece while an earlier one waits for its source, and serves it to peers out of order", async () => {
    const image = await pushSinglePlatformImage(
      registryClient,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/spooled` },
      "1.0",
      { layerSizes: [3 * MiB], seed: "spooled" },
    );
    const [layer] = image.image.layers.map((l) => l.descriptor);
    // Piece 0 from A (which has not pulled yet), pieces 1 and 2 from the cache.
    assignments.clear();
    assignments.set(layer.digest, {
      pieces: [0, 1, 2].map((i) => ({
        digest: layer.digest,
        offset: i * MiB,
        length: MiB,
        source: i === 0 ? "node-a" : "cache",
        wave: i === 0 ? 2 : 1,
      })),
    });
    peerToken = issuePeerToken(secret, {
      receiver: "node-b",
      digests: [layer.digest],
      exp: Date.now() / 1000 + 600,
    });
    const spoolDir = await mkdtemp(join(tmpdir(), "stowage-spool-test-"));
    const mirrorB = await mirrorForB({ spoolDir });
    try {
      const reference = `${upstreamHost}/acme/spooled@${image.digest}`;
      const pullB = runtimeB.pullImage(reference);
      // Pieces 1 and 2 arrive from the cache while piece 0 still waits for A: the spool holds
      // them, and would serve them to B's own peers, though the prefix is not there.
      await eventually("B's spool holds pieces 1 and 2 but not piece 0", async () => {
        const partial = await mirrorB.partial.get(layer.digest);
        await partial?.close?.();
        return partial?.covers?.(MiB, 3 * MiB - 1) === true && partial.covers(0, MiB - 1) === false;
      });
      const idA = await runtimeA.pullImage(reference);
      expect(await pullB).toBe(idA);
      expect(Object.fromEntries(mirrorB.stats.sources.get(layer.digest) ?? [])).toEqual({
        "node-a": MiB,
        cache: 2 * MiB,
      });
      expect([...mirrorB.stats.peerFailures.values()]).toEqual([]);
      expect(await readdir(spoolDir)).toEqual([]); // the spool is gone with the response
    } finally {
      await mirrorB.close();
      await rm(spoolDir, { recursive: true, force: true });
    }
  });

  it("B gives up on a source that never gets the piece after the wait, reports it Stalled, and the cache serves it", async () => {
    const image = await pushSinglePlatformImage(
      registryClient,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/never` },
      "1.0",
      { layerSizes: [2 * MiB + 5, 100 * 1024], seed: "never" },
    );
    allFromA(image);
    const mirrorB = await mirrorForB({ sourceWaitMs: 800 });
    try {
      const reference = `${upstreamHost}/acme/never@${image.digest}`;
      expect(await runtimeB.pullImage(reference)).toMatch(/^sha256:/);
      expect(mirrorB.stats.peerFailures.get("node-a")).toMatchObject({ node: "node-a", reason: "Stalled" });
      const [big] = image.image.layers.map((l) => l.descriptor);
      expect(Object.fromEntries(mirrorB.stats.sources.get(big.digest) ?? [])).toEqual({ cache: big.size });
    } finally {
      await mirrorB.close();
    }
  });
});
