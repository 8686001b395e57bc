import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CriClient } from "../../src/agent/cri.ts";
import { applyMirrorConfig, renderHostsToml } from "../../src/agent/hostsToml.ts";
import { ContainerdContent } from "../../src/agent/peer/content.ts";
import { type BlobAssignment, type Mirror, startMirror } from "../../src/agent/peer/mirror.ts";
import { type PeerServer, startPeerServer } from "../../src/agent/peer/server.ts";
import { issuePeerToken } from "../../src/agent/peer/token.ts";
import type { FanoutPiece } from "../../src/api/nodeCache.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import type { RunningContainerd } from "../../testkit/containerd.ts";
import type { FaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import type { RunningRegistry } from "../../testkit/registry.ts";
import { startTwoNodes, type TwoNodes } from "./support/twoNodes.ts";

const MiB = 1024 * 1024;
const secret = Buffer.alloc(32, 5);
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
let mirrorB: Mirror;
let upstreamHost: string;
const closers: (() => Promise<void>)[] = [];

// B's NodeCache spec as the agent would hold it: pieces by digest, A's endpoint, B's peer token.
const assignments = new Map<string, BlobAssignment>();
let endpointA = "";
let peerToken = "";

function pieces(digest: string, size: number, sources: string[]): FanoutPiece[] {
  return sources.map((source, i) => ({
    digest,
    offset: i * MiB,
    length: Math.min(MiB, size - i * MiB),
    source,
    wave: source === "cache" ? 1 : 2,
  }));
}

async function pushed(name: string): Promise<PushedImage> {
  return pushSinglePlatformImage(
    registryClient,
    { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/${name}` },
    "1.0",
    { layerSizes: [3 * MiB + 17, 200 * 1024], seed: name },
  );
}

function planFor(
  image: PushedImage,
  bigSources: string[],
): { big: string; small: string; bigSize: number; smallSize: number } {
  const [big, small] = image.image.layers.map((l) => l.descriptor);
  assignments.set(big.digest, { pieces: pieces(big.digest, big.size, bigSources) });
  assignments.set(small.digest, { pieces: pieces(small.digest, small.size, ["node-a"]) });
  peerToken = issuePeerToken(secret, {
    receiver: "node-b",
    digests: [big.digest, small.digest],
    exp: Date.now() / 1000 + 600,
  });
  return { big: big.digest, small: small.digest, bigSize: big.size, smallSize: small.size };
}

const cacheBlobRequests = (digest: string) => two.blobGets(digest);

beforeAll(async () => {
  two = await startTwoNodes();
  ({ nodeA, nodeB, cache, cacheProxy, registryClient, upstreamHost, runtimeA, runtimeB } = two);
  storeA = new ContainerdContent(nodeA.socketPath);
  peerA = await startPeerServer({ store: storeA, secret, host: "127.0.0.1", port: 0 });
  endpointA = peerA.url;
  mirrorB = await startMirror({
    cacheEndpoint: cacheProxy.url,
    host: "127.0.0.1",
    port: 0,
    // Long enough that a busy machine's pause in A's serving is not taken for a stall (the first
    // test expects no peer failure); the stall test's A never resumes, so it only waits this long.
    stallTimeoutMs: 3_000,
    state: {
      assignment: (digest) => assignments.get(digest),
      endpoint: (node) => (node === "node-a" ? endpointA : undefined),
      token: () => peerToken,
    },
  });
  await applyMirrorConfig(nodeB.certsDir, [upstreamHost], {
    cacheEndpoint: cacheProxy.url,
    localMirror: { port: mirrorB.port },
  });
});

afterAll(async () => {
  for (const close of closers) await close();
  await mirrorB?.close();
  await peerA?.close();
  storeA?.close();
  await two?.stop();
});

describe("the agent as its node's mirror, on two real containerds", () => {
  it("B's containerd pulls through its agent, the layers' peer pieces from A and only the cache's piece from the cache", async () => {
    const image = await pushed("fanout-a");
    await runtimeA.pullImage(`${upstreamHost}/acme/fanout-a@${image.digest}`);
    const { big, small, bigSize, smallSize } = planFor(image, ["cache", "node-a", "node-a", "node-a"]);

    const id = await runtimeB.pullImage(`${upstreamHost}/acme/fanout-a@${image.digest}`);
    expect(id).toMatch(/^sha256:/);
    expect((await runtimeB.imageStatus(`${upstreamHost}/acme/fanout-a@${image.digest}`))?.id).toBe(id);

    expect(peerA.stats.bytesServed.get(big)).toBe(bigSize - MiB);
    expect(peerA.stats.bytesServed.get(small)).toBe(smallSize);
    expect(cacheBlobRequests(big).map((r) => r.range)).toEqual([`bytes=0-${MiB - 1}`]);
    expect(cacheBlobRequests(small)).toEqual([]);
    expect(Object.fromEntries(mirrorB.stats.sources.get(big) ?? [])).toEqual({
      cache: MiB,
      "node-a": bigSize - MiB,
    });
    expect(mirrorB.stats.peerFailures.size).toBe(0);
  });

  it("falls back to the cache for the rest of a piece when A stalls, and reports A as Stalled", async () => {
    const image = await pushed("fanout-stall");
    await runtimeA.pullImage(`${upstreamHost}/acme/fanout-stall@${image.digest}`);
    // A stalls after its first chunk: its pacer's sleep never ends.
    const stalled = await startPeerServer({
      store: storeA,
      secret,
      host: "127.0.0.1",
      port: 0,
      bytesPerSecond: MiB,
      sleep: () => new Promise(() => {}),
    });
    closers.push(() => stalled.close());
    endpointA = stalled.url;
    const { big, bigSize } = planFor(image, ["node-a", "node-a", "node-a", "node-a"]);

    const id = await runtimeB.pullImage(`${upstreamHost}/acme/fanout-stall@${image.digest}`);
    expect(id).toMatch(/^sha256:/);

    const failure = mirrorB.stats.peerFailures.get("node-a");
    expect(failure).toMatchObject({ node: "node-a", reason: "Stalled" });
    const bySource = Object.fromEntries(mirrorB.stats.sources.get(big) ?? []);
    expect(bySource.cache + (bySource["node-a"] ?? 0)).toBe(bigSize);
    // A may get its first chunk (containerd reads 1 MiB at a time: a whole piece) out before it stalls.
    expect(bySource.cache).toBeGreaterThanOrEqual(bigSize - MiB);
    // Once A stalled it is not asked again for this blob: the later pieces are whole cache ranges.
    const ranges = cacheBlobRequests(big).map((r) => r.range);
    expect(ranges).toContain(`bytes=${MiB}-${2 * MiB - 1}`);
    expect(ranges).toContain(`bytes=${3 * MiB}-${bigSize - 1}`);
  });

  it("lists the external mirror, then the cache, then the upstream in external mode; the agent first in planned mode", () => {
    const tables = (text: string) => [...text.matchAll(/^\[host\."([^"]+)"\]/gm)].map((m) => m[1]);
    const external = renderHostsToml("nvcr.io", {
      cacheEndpoint: "http://10.0.0.5:5000",
      externalMirror: "http://127.0.0.1:30020/",
    });
    expect(tables(external)).toEqual(["http://127.0.0.1:30020", "http://10.0.0.5:5000/v2/nvcr.io"]);
    expect(external).toMatch(/^server = "https:\/\/nvcr.io"$/m);
    // Spegel and dfdaemon answer containerd's own /v2/<repo> paths: no override_path for them.
    expect(external.split("[host.")[1]).not.toContain("override_path");
    const planned = renderHostsToml("docker.io", {
      cacheEndpoint: "http://10.0.0.5:5000",
      localMirror: { port: 5008 },
    });
    expect(tables(planned)).toEqual([
      "http://127.0.0.1:5008/v2/docker.io",
      "http://10.0.0.5:5000/v2/docker.io",
    ]);
    expect(planned.split("[host.")[1]).toContain("override_path = true");
  });
});
