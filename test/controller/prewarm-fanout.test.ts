/**
 * The pre-warm planner with peer fan-out on (`--fanout-mode planned`), on the API double and on
 * the real API server: NodeCache specs as the agents read them, a failed peer reported in status
 * and a node that finished.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyPeerToken } from "../../src/agent/peer/token.ts";
import type { NodeCache } from "../../src/api/nodeCache.ts";
import { formatTime } from "../../src/kube/time.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../kube/helpers.ts";
import {
  createCachedModelImage,
  createNode,
  findNodeCache,
  nodeCaches,
  report,
  startCluster,
  startPlanner,
} from "./prewarm-harness.ts";

const MiB = 1024 * 1024;
const secret = Buffer.from("fan-out-secret-for-the-planner-test");
const NODES = ["fo-1", "fo-2", "fo-3", "fo-4", "fo-5"];
const ipOf = (node: string) => (node === "fo-5" ? undefined : `127.0.0.${20 + NODES.indexOf(node)}`);

let cluster: Awaited<ReturnType<typeof startCluster>>;
let cache: RunningRegistry;
let planner: Awaited<ReturnType<typeof startPlanner>>;
let push: RegistryClient;
let image: PushedImage;

beforeAll(async () => {
  [cluster, cache] = await Promise.all([startCluster(), startRegistry()]);
  push = new RegistryClient({ insecureHosts: [cache.host] });
  image = await pushSinglePlatformImage(
    push,
    { registry: cache.host, repository: "docker.io/acme/fan" },
    "1.0",
    {
      layerSizes: [3 * MiB + 17, MiB],
    },
  );
  planner = await startPlanner(cluster.client, cache.host, {
    cacheEndpointForNodes: "http://10.0.0.5:5000",
    fanout: { secret, peerPort: 5007, peerSlots: 2, cacheSlots: 1, pieceBytes: MiB },
  });
  for (const node of NODES) {
    await createNode(cluster.client, node, { labels: { suite: "fanout" }, internalIp: ipOf(node) });
  }
  await createCachedModelImage(
    cluster.client,
    "default",
    "fan",
    {
      variants: [{ name: "cpu", image: "docker.io/acme/fan:1.0", nodeSelector: { suite: "fanout" } }],
      prewarm: { maxConcurrentNodes: 10 },
    },
    { cpu: image.digest },
  );
}, 60_000);

afterAll(async () => {
  await planner?.stop();
  await push?.close();
  await Promise.all([cluster?.api.stop(), cache?.stop()]);
  cluster?.client.close();
});

const blobs = () => image.image.blobs.map((b) => b.descriptor);

/** Per node and piece (`node|digest@offset`), the source its NodeCache names. */
async function sources(): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const node of NODES) {
    const nc = await findNodeCache(cluster.client, node);
    for (const piece of nc?.spec.images?.[0]?.fanout ?? [])
      out.set(`${node}|${piece.digest}@${piece.offset}`, piece.source);
  }
  return out;
}

function fullyPlanned(nc: NodeCache | undefined): boolean {
  const pieces = nc?.spec.images?.[0]?.fanout ?? [];
  return blobs().every(
    (b) => pieces.filter((p) => p.digest === b.digest).reduce((sum, p) => sum + p.length, 0) === b.size,
  );
}

describe("pre-warm with peer fan-out", () => {
  it("writes each node's pieces, each from the cache for one node only, its peers' endpoints and a peer token naming exactly what it reads from peers", async () => {
    await eventually("every node's blobs planned piece by piece", async () => {
      for (const node of NODES) if (!fullyPlanned(await findNodeCache(cluster.client, node))) return false;
      return true;
    });
    const planned = await sources();
    for (const blob of blobs()) {
      for (let offset = 0; offset < blob.size; offset += MiB) {
        const fromCache = NODES.filter((n) => planned.get(`${n}|${blob.digest}@${offset}`) === "cache");
        expect(fromCache, `${blob.digest}@${offset} read from the cache by`).toHaveLength(1);
      }
    }
    expect([...planned.values()]).not.toContain("fo-5"); // no InternalIP: it pulls, it never serves
    for (const node of NODES) {
      const nc = (await findNodeCache(cluster.client, node)) as NodeCache;
      const pieces = nc.spec.images?.[0]?.fanout ?? [];
      expect(pieces.every((p) => p.length <= MiB)).toBe(true);
      const fromPeers = pieces.filter((p) => p.source !== "cache");
      const peers = [...new Set(fromPeers.map((p) => p.source))].sort();
      expect(nc.spec.peers ?? []).toEqual(
        peers.map((p) => ({ node: p, endpoint: `http://${ipOf(p)}:5007` })),
      );
      if (fromPeers.length === 0) {
        expect(nc.spec.peerToken).toBeUndefined();
        continue;
      }
      const claims = verifyPeerToken(secret, nc.spec.peerToken?.token ?? "", Date.now());
      expect(claims.receiver).toBe(node);
      expect(claims.digests).toEqual([...new Set(fromPeers.map((p) => p.digest))].sort());
    }
  });

  it("stops naming a peer another node's agent reported failed, and moves only the nodes it fed", async () => {
    const before = await sources();
    const failed = [...before.values()].find((s) => s !== "cache") as string;
    const reporter = NODES.find((n) => n !== failed) as string;
    await nodeCaches(cluster.client).patchStatus(reporter, {
      status: { peerFailures: [{ node: failed, reason: "Failed", since: formatTime(Date.now()) }] },
    });
    let after = new Map<string, string>();
    await eventually(`no node reads from ${failed}`, async () => {
      after = await sources();
      return after.size === before.size && ![...after.values()].includes(failed);
    });
    for (const [key, source] of before) if (source !== failed) expect(after.get(key), key).toBe(source);
  });

  it("gives a node whose agent reports the image Present no pieces and no peer token", async () => {
    const node = "fo-2";
    await report(cluster.client, node, { [image.digest]: "Present" });
    await eventually(`${node} planned no pieces`, async () => {
      const nc = await findNodeCache(cluster.client, node);
      return nc?.spec.images?.length === 1 && nc.spec.images[0].fanout === undefined && !nc.spec.peerToken;
    });
  });
});
