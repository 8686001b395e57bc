import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { verifyPeerToken } from "../../src/agent/peer/token.ts";
import type { ModelImage } from "../../src/api/modelImage.ts";
import type { FanoutPiece, NodeCache, NodeCacheSpec } from "../../src/api/nodeCache.ts";
import { parseControllerArgs, readFanoutSecret } from "../../src/controller/command.ts";
import { prewarmConfig } from "../../src/controller/prewarm/config.ts";
import { type FanoutSettings, planPeerFanout } from "../../src/controller/prewarm/fanout.ts";
import type { ImageBlob, ImageResolver, Resolution } from "../../src/controller/prewarm/images.ts";
import type { PlannerNode } from "../../src/controller/prewarm/nodes.ts";
import { createPrewarmReconciler } from "../../src/controller/prewarm/reconciler.ts";
import type { ObjectClient } from "../../src/kube/client.ts";
import type { EventRecorder } from "../../src/kube/events.ts";
import { createLogger } from "../../src/util/log.ts";

const MiB = 1024 * 1024;
const secret = Buffer.from("a-fan-out-secret-of-some-bytes");
const now = Date.parse("2026-12-05T19:00:00Z");
const manifest = `sha256:${"m".repeat(64)}`;
const blobs: ImageBlob[] = [
  { digest: `sha256:${"c".repeat(64)}`, size: 700 },
  { digest: `sha256:${"1".repeat(64)}`, size: 3 * MiB + 5 },
  { digest: `sha256:${"2".repeat(64)}`, size: MiB },
];
const settings: FanoutSettings = { secret, peerPort: 5007, peerSlots: 2, cacheSlots: 1, pieceBytes: MiB };
const names = ["n1", "n2", "n3", "n4", "n5"];

function node(name: string, ip?: string): PlannerNode {
  return {
    metadata: { name, labels: { "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64" } },
    status: {
      conditions: [{ type: "Ready", status: "True" }],
      ...(ip ? { addresses: [{ type: "InternalIP", address: ip }] } : {}),
    },
  };
}

// n5 reports no InternalIP: it may pull but can never serve.
const nodes = names.map((n, i) => node(n, n === "n5" ? undefined : `127.0.0.${11 + i}`));

function specs(): Map<string, NodeCacheSpec> {
  return new Map(
    names.map((n) => [
      n,
      {
        nodeName: n,
        cacheEndpoint: "http://10.0.0.5:5000",
        images: [{ image: "docker.io/acme/llama:1.0", digest: manifest }],
      },
    ]),
  );
}

function asNodeCaches(
  written: ReadonlyMap<string, NodeCacheSpec>,
  status: Record<string, NodeCache["status"]> = {},
): Map<string, NodeCache> {
  return new Map(
    [...written].map(([n, spec]) => [
      n,
      {
        apiVersion: "stowage.dev/v1alpha1",
        kind: "NodeCache",
        metadata: { name: n },
        spec,
        ...(status[n] ? { status: status[n] } : {}),
      } as NodeCache,
    ]),
  );
}

const blobsOf = (digest: string) => (digest === manifest ? blobs : undefined);

/** Per node and piece (`node|digest@offset`): its source (one planner decision per piece). */
function sources(written: ReadonlyMap<string, NodeCacheSpec>): Map<string, string> {
  const out = new Map<string, string>();
  for (const [n, spec] of written) {
    for (const piece of spec.images?.[0]?.fanout ?? [])
      out.set(`${n}|${piece.digest}@${piece.offset}`, piece.source);
  }
  return out;
}

describe("peer fan-out in the pre-warm pass", () => {
  it("names a source for every piece: the cache for one node per piece, peers for the rest, with their endpoints and a token for exactly the peer-read blobs", () => {
    const result = planPeerFanout({ specs: specs(), nodes, nodeCaches: new Map(), blobsOf, settings, now });
    const planned = sources(result.specs);
    for (const blob of blobs) {
      for (let offset = 0; offset < blob.size; offset += MiB) {
        const fromCache = names.filter((n) => planned.get(`${n}|${blob.digest}@${offset}`) === "cache");
        expect(fromCache, `${blob.digest}@${offset}`).toHaveLength(1);
      }
    }
    // Each piece has its own tree: the big layer's four pieces are not all fed by the same nodes.
    const big = blobs[1].digest;
    const feeders = (offset: number) => names.map((n) => planned.get(`${n}|${big}@${offset}`)).join(",");
    expect(new Set([0, MiB, 2 * MiB, 3 * MiB].map(feeders)).size).toBeGreaterThan(1);
    for (const n of names) {
      const spec = result.specs.get(n) as NodeCacheSpec;
      const pieces = spec.images?.[0]?.fanout ?? [];
      for (const blob of blobs) {
        const own = pieces.filter((p) => p.digest === blob.digest);
        // contiguous pieces of at most pieceBytes covering the blob, one source per blob
        let offset = 0;
        for (const p of own) {
          expect(p.offset).toBe(offset);
          expect(p.length).toBeLessThanOrEqual(MiB);
          offset += p.length;
        }
        expect(offset, `${n} ${blob.digest}`).toBe(blob.size);
      }
      const peerPieces = pieces.filter((p) => p.source !== "cache");
      expect(peerPieces.map((p) => p.source)).not.toContain("n5");
      expect(peerPieces.map((p) => p.source)).not.toContain(n);
      const peerNodes = [...new Set(peerPieces.map((p) => p.source))].sort();
      expect(spec.peers ?? []).toEqual(
        peerNodes.map((p) => ({ node: p, endpoint: `http://127.0.0.${11 + names.indexOf(p)}:5007` })),
      );
      const peerDigests = [...new Set(peerPieces.map((p) => p.digest))].sort();
      if (peerDigests.length === 0) {
        expect(spec.peerToken).toBeUndefined();
        continue;
      }
      const claims = verifyPeerToken(secret, spec.peerToken?.token ?? "", now);
      expect(claims.receiver).toBe(n);
      expect(claims.digests).toEqual(peerDigests);
    }
    // Every node but the cache-fed first wave reads something from a peer.
    expect(names.filter((n) => result.specs.get(n)?.peerToken).length).toBeGreaterThanOrEqual(3);
    expect(result.nextRenewal).toBe(
      Date.parse(result.specs.get("n2")?.peerToken?.expiresAt ?? "") - 30 * 60_000,
    );
  });

  it("plans the same specs, tokens included, from its own output: a steady cluster writes nothing", () => {
    const first = planPeerFanout({ specs: specs(), nodes, nodeCaches: new Map(), blobsOf, settings, now });
    const again = planPeerFanout({
      specs: specs(),
      nodes,
      nodeCaches: asNodeCaches(first.specs),
      blobsOf,
      settings,
      now: now + 60_000,
    });
    expect(again.specs).toEqual(first.specs);
    expect(again.replanned).toEqual([]);
  });

  it("re-signs a peer token past half its life, and at once under another secret", () => {
    const first = planPeerFanout({ specs: specs(), nodes, nodeCaches: new Map(), blobsOf, settings, now });
    const token = (r: typeof first, n: string) => r.specs.get(n)?.peerToken?.token;
    const receiver = names.find((n) => token(first, n)) as string;
    const later = planPeerFanout({
      specs: specs(),
      nodes,
      nodeCaches: asNodeCaches(first.specs),
      blobsOf,
      settings,
      now: now + 31 * 60_000,
    });
    expect(token(later, receiver)).not.toBe(token(first, receiver));
    const rotated = planPeerFanout({
      specs: specs(),
      nodes,
      nodeCaches: asNodeCaches(first.specs),
      blobsOf,
      settings: { ...settings, secret: Buffer.from("another-fan-out-secret-bytes") },
      now: now + 60_000,
    });
    expect(token(rotated, receiver)).not.toBe(token(first, receiver));
    expect(sources(rotated.specs)).toEqual(sources(first.specs));
  });

  it("stops reading from a peer an agent reported failed, and moves only the nodes it fed", () => {
    const first = planPeerFanout({ specs: specs(), nodes, nodeCaches: new Map(), blobsOf, settings, now });
    const before = sources(first.specs);
    const failed = [...before.values()].find((s) => s !== "cache") as string;
    expect(failed).toBeDefined();
    const reporter = names.find((n) => n !== failed) as string;
    const second = planPeerFanout({
      specs: specs(),
      nodes,
      nodeCaches: asNodeCaches(first.specs, {
        [reporter]: { peerFailures: [{ node: failed, reason: "Failed", since: "2026-12-05T19:00:00Z" }] },
      }),
      blobsOf,
      settings,
      now: now + 60_000,
    });
    const after = sources(second.specs);
    expect([...after.values()]).not.toContain(failed);
    for (const [key, source] of before) {
      if (source !== failed) expect(after.get(key), key).toBe(source);
    }
    expect(second.replanned.length).toBe([...before.values()].filter((s) => s === failed).length);
    expect(second.replanned.every((r) => r.reason === "PeerUnavailable")).toBe(true);
  });

  it("gives a node that holds the image no pieces and lets it serve the others", () => {
    const present = {
      images: [{ image: "docker.io/acme/llama:1.0", digest: manifest, state: "Present" as const }],
    };
    const result = planPeerFanout({
      specs: specs(),
      nodes,
      nodeCaches: asNodeCaches(specs(), { n3: present }),
      blobsOf,
      settings,
      now,
    });
    expect(result.specs.get("n3")?.images?.[0]?.fanout).toBeUndefined();
    expect(result.specs.get("n3")?.peerToken).toBeUndefined();
    const fedByHolder = [...sources(result.specs).values()].filter((s) => s === "n3");
    expect(fedByHolder.length).toBeGreaterThan(0);
  });

  it("feeds a node from a holder in its own zone (topology.kubernetes.io/zone) before one in another", () => {
    const zoned = nodes.map((n, i) => ({
      ...n,
      metadata: {
        ...n.metadata,
        labels: { ...n.metadata?.labels, "topology.kubernetes.io/zone": i % 2 === 0 ? "zone-a" : "zone-b" },
      },
    }));
    const present = {
      images: [{ image: "docker.io/acme/llama:1.0", digest: manifest, state: "Present" as const }],
    };
    // n1 (zone-a) and n2 (zone-b) hold the image; n4 is in zone-b.
    const result = planPeerFanout({
      specs: specs(),
      nodes: zoned,
      nodeCaches: asNodeCaches(specs(), { n1: present, n2: present }),
      blobsOf,
      settings,
      now,
    });
    const fed = sources(result.specs);
    for (const blob of blobs)
      for (let offset = 0; offset < blob.size; offset += MiB)
        expect(fed.get(`n4|${blob.digest}@${offset}`), `${blob.digest}@${offset}`).toBe("n2");
  });

  it("leaves an image whose manifest was not read to the cache: no pieces, peers or token", () => {
    const result = planPeerFanout({
      specs: specs(),
      nodes,
      nodeCaches: new Map(),
      blobsOf: () => undefined,
      settings,
      now,
    });
    for (const n of names) {
      expect(result.specs.get(n)).toEqual(specs().get(n));
    }
  });

  it("drops the fan-out fields from a spec the plan no longer gives pieces", () => {
    const first = planPeerFanout({ specs: specs(), nodes, nodeCaches: new Map(), blobsOf, settings, now });
    const withPieces = names.find((n) => first.specs.get(n)?.peers) as string;
    const gone = new Map(specs());
    gone.set(withPieces, { nodeName: withPieces, cacheEndpoint: "http://10.0.0.5:5000", images: [] });
    const second = planPeerFanout({
      specs: gone,
      nodes,
      nodeCaches: asNodeCaches(first.specs),
      blobsOf,
      settings,
      now,
    });
    const spec = second.specs.get(withPieces) as NodeCacheSpec & { fanout?: FanoutPiece[] };
    expect(spec).toEqual({ nodeName: withPieces, cacheEndpoint: "http://10.0.0.5:5000", images: [] });
  });
});

describe("the controller's fan-out flags", () => {
  const base = ["--cache-registry", "http://127.0.0.1:5000"];
  const parse = async (args: string[]) => {
    const invocation = await parseControllerArgs([...base, ...args], { POD_NAMESPACE: "stowage-system" });
    if (invocation === "help") throw new Error("unexpected help");
    return invocation;
  };

  it("plans nothing by default and in external mode", async () => {
    expect((await parse([])).prewarm?.fanout).toBeUndefined();
    expect((await parse(["--fanout-mode", "external"])).prewarm?.fanout).toBeUndefined();
  });

  it("takes planned mode's settings, with the defaults the agents and the simulator use", async () => {
    expect((await parse(["--fanout-mode", "planned", "--fanout-secret-file", "/s"])).prewarm?.fanout).toEqual(
      {
        secretFile: "/s",
        peerPort: 5007,
        peerSlots: 3,
        cacheSlots: 1,
        pieceBytes: 64 * MiB,
      },
    );
    const tuned = await parse([
      "--fanout-mode=planned",
      "--fanout-secret-file=/s",
      "--fanout-peer-port=6007",
      "--fanout-peer-slots=0",
      "--fanout-cache-slots=2",
      "--fanout-piece-size=16Mi",
    ]);
    expect(tuned.prewarm?.fanout).toEqual({
      secretFile: "/s",
      peerPort: 6007,
      peerSlots: 0,
      cacheSlots: 2,
      pieceBytes: 16 * MiB,
    });
  });

  it("refuses a mode typo, planned without a secret, a piece under 1Mi and no cache slot, naming the flag", async () => {
    await expect(parse(["--fanout-mode", "planed"])).rejects.toThrow(
      /--fanout-mode must be planned, external or off/,
    );
    await expect(parse(["--fanout-mode", "planned"])).rejects.toThrow(/needs --fanout-secret-file/);
    const planned = ["--fanout-mode", "planned", "--fanout-secret-file", "/s"];
    await expect(parse([...planned, "--fanout-piece-size", "512Ki"])).rejects.toThrow(/--fanout-piece-size/);
    await expect(parse([...planned, "--fanout-cache-slots", "0"])).rejects.toThrow(/--fanout-cache-slots/);
    await expect(parse([...planned, "--fanout-peer-port", "70000"])).rejects.toThrow(/--fanout-peer-port/);
  });

  it("reads the secret byte for byte as the agents do, and refuses a missing or short one", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fanout-secret-"));
    try {
      const file = join(dir, "secret");
      await writeFile(file, "sixteen-bytes-or-more\n");
      expect((await readFanoutSecret(file)).toString()).toBe("sixteen-bytes-or-more\n");
      await writeFile(file, "short");
      await expect(readFanoutSecret(file)).rejects.toThrow(/fewer than 16 bytes/);
      await expect(readFanoutSecret(join(dir, "missing"))).rejects.toThrow(/--fanout-secret-file .*missing/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("the pre-warm pass when fan-out cannot be planned", () => {
  it("still writes every node's images, without pieces, and says why in a warning", async () => {
    const modelImage: ModelImage = {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "llama", namespace: "ml" },
      spec: {
        variants: [{ name: "cpu", image: "docker.io/acme/llama:1.0", nodeSelector: {} }],
        prewarm: { maxConcurrentNodes: 10 },
      },
      status: { variants: [{ name: "cpu", cacheDigest: manifest }] },
    };
    const resolver = {
      resolve: async (): Promise<Resolution> => ({ ok: true, image: { digest: manifest, sizeBytes: 1000 } }),
      blobsOf,
    } as unknown as ImageResolver;
    const stored = new Map<string, NodeCache>();
    const write = async (nc: NodeCache) => {
      stored.set(nc.metadata.name ?? "", structuredClone(nc));
      return nc;
    };
    const lines: string[] = [];
    const log = createLogger({ level: "warn", destination: { write: (line: string) => lines.push(line) } });
    const reconcile = createPrewarmReconciler({
      modelImages: () => [modelImage],
      nodes: () => nodes,
      nodeCaches: () => [...stored.values()],
      nodeCacheClient: { create: write, update: write } as unknown as ObjectClient<NodeCache>,
      nodeClient: { patch: async () => ({}) } as unknown as ObjectClient<PlannerNode>,
      resolver,
      // A piece size of 0 makes the fan-out spec refuse the plan (the flag parser never allows it).
      config: prewarmConfig({ warmingTaint: false, fanout: { ...settings, pieceBytes: 0 } }),
      cacheEndpoint: "http://10.0.0.5:5000",
      events: { event: async () => {} } as unknown as EventRecorder,
      clock: { now: () => now, sleep: async () => {} },
      log,
      onPlan: () => {},
    });
    await reconcile("cluster", { signal: new AbortController().signal } as never);
    expect([...stored.keys()].sort()).toEqual(names);
    for (const nc of stored.values()) {
      expect(nc.spec.images?.map((i) => i.digest)).toEqual([manifest]);
      expect(nc.spec.images?.[0].fanout).toBeUndefined();
      expect(nc.spec.peerToken).toBeUndefined();
    }
    const warning = lines.map((line) => JSON.parse(line)).find((entry) => entry.level === "warn");
    expect(warning?.msg).toMatch(/fan-out not planned this pass, nodes pull from the cache: .*pieceBytes/);
    expect(warning?.reason).toBe("InvalidArgument");
  });
});
