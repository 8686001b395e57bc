import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseAgentArgs } from "../../src/agent/command.ts";
import type { MirrorStats } from "../../src/agent/peer/mirror.ts";
import { fanoutStateOf, imageSources, peerFailures, startFanoutNode } from "../../src/agent/peer/node.ts";
import {
  currentPeerFailures,
  imageTally,
  nextPeerFailureExpiry,
  PEER_FAILURE_EXPIRY_MS,
  sourcesOf,
} from "../../src/agent/peer/report.ts";
import type { NodeCache } from "../../src/api/nodeCache.ts";

const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;

function nodeCache(token: string): NodeCache {
  const shared = [
    { digest: D1, offset: 0, length: 10, source: "cache", wave: 1 },
    { digest: D1, offset: 10, length: 5, source: "node-a", wave: 2 },
  ];
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name: "node-b" },
    spec: {
      nodeName: "node-b",
      images: [
        { image: "x/a:1", digest: `sha256:${"a".repeat(64)}`, fanout: [...shared] },
        {
          image: "x/b:1",
          digest: `sha256:${"b".repeat(64)}`,
          fanout: [...shared, { digest: D2, offset: 0, length: 7, source: "node-c", wave: 1 }],
        },
      ],
      peers: [
        { node: "node-a", endpoint: "http://10.0.0.1:5007" },
        { node: "node-c", endpoint: "http://10.0.0.3:5007" },
      ],
      peerToken: { token, expiresAt: "2026-12-05T04:00:00Z" },
    },
  };
}

describe("the agent's fan-out view of its NodeCache", () => {
  it("indexes the spec's pieces by digest once per spec version, a blob shared by two images once", () => {
    let current = nodeCache("stwp1.first.sig");
    const state = fanoutStateOf(() => current);
    expect(state.assignment(D1)?.pieces.map((p) => [p.offset, p.source])).toEqual([
      [0, "cache"],
      [10, "node-a"],
    ]);
    expect(state.assignment(D2)?.pieces).toHaveLength(1);
    expect(state.assignment(`sha256:${"9".repeat(64)}`)).toBeUndefined();
    expect(state.endpoint("node-c")).toBe("http://10.0.0.3:5007");
    expect(state.endpoint("node-z")).toBeUndefined();
    expect(state.token()).toBe("stwp1.first.sig");
    current = nodeCache("stwp1.second.sig");
    current.spec.images = [];
    expect(state.assignment(D1)).toBeUndefined();
    expect(state.token()).toBe("stwp1.second.sig");
  });

  it("reports each image's bytes by source and the peer failures, sorted", () => {
    const stats: MirrorStats = {
      sources: new Map([
        [
          D1,
          new Map([
            ["node-a", 5],
            ["cache", 10],
          ]),
        ],
        [D2, new Map([["cache", 7]])],
      ]),
      peerFailures: new Map([
        ["node-c", { node: "node-c", reason: "Stalled", since: "2026-12-05T02:00:00.000Z" }],
        ["node-a", { node: "node-a", reason: "Failed", since: "2026-12-05T02:01:00.000Z" }],
      ]),
      proxied: 0,
    };
    const [a, b] = nodeCache("t").spec.images ?? [];
    expect(imageSources(a, stats)).toEqual([
      { source: "cache", bytes: 10 },
      { source: "node-a", bytes: 5 },
    ]);
    expect(imageSources(b, stats)).toEqual([
      { source: "cache", bytes: 17 },
      { source: "node-a", bytes: 5 },
    ]);
    expect(imageSources({ image: "x", digest: D2 }, stats)).toBeUndefined();
    expect(peerFailures(stats).map((f) => f.node)).toEqual(["node-a", "node-c"]);
  });

  it("reports only the bytes since a baseline, so an image pulled again counts its new pull alone", () => {
    const stats: MirrorStats = {
      sources: new Map([[D1, new Map([["cache", 10]])]]),
      peerFailures: new Map(),
      proxied: 0,
    };
    const [a] = nodeCache("t").spec.images ?? [];
    const baseline = imageTally(a, stats);
    (stats.sources.get(D1) as Map<string, number>).set("cache", 25);
    (stats.sources.get(D1) as Map<string, number>).set("node-a", 5);
    expect(sourcesOf(imageTally(a, stats), baseline)).toEqual([
      { source: "cache", bytes: 15 },
      { source: "node-a", bytes: 5 },
    ]);
    expect(sourcesOf(imageTally(a, stats), imageTally(a, stats))).toBeUndefined();
  });

  it("keeps a peer failure, from status or from the mirror, until the expiry after its latest since", () => {
    const at = (iso: string) => Date.parse(iso);
    const reported = [
      { node: "node-a", reason: "Stalled" as const, since: "2026-12-05T02:00:00.000Z" },
      { node: "node-c", reason: "Failed" as const, since: "2026-12-05T02:00:00.000Z" },
      { node: "node-x", reason: "Failed" as const, since: "not a time" },
    ];
    const observed = [{ node: "node-a", reason: "Failed" as const, since: "2026-12-05T02:08:00.000Z" }];
    // 02:09: node-c (a restarted agent's status only) and node-a's later failure are both current.
    expect(currentPeerFailures(reported, observed, at("2026-12-05T02:09:00Z"))).toEqual([
      observed[0],
      reported[1],
    ]);
    // 02:10: ten minutes after node-c's since it expires; node-a's later since keeps it.
    expect(currentPeerFailures(reported, observed, at("2026-12-05T02:10:00Z"))).toEqual([observed[0]]);
    expect(currentPeerFailures(reported, observed, at("2026-12-05T02:18:00Z"))).toEqual([]);
    expect(currentPeerFailures(reported, observed, at("2026-12-05T02:01:00Z"), 30_000)).toEqual([
      observed[0],
    ]);
    expect(nextPeerFailureExpiry([...reported, ...observed])).toBe(
      at("2026-12-05T02:00:00Z") + PEER_FAILURE_EXPIRY_MS,
    );
    expect(nextPeerFailureExpiry([])).toBeUndefined();
  });

  it("refuses planned mode without a fan-out secret and starts nothing in external or off mode", async () => {
    const base = {
      criSocket: "/nonexistent.sock",
      bindAddress: "127.0.0.1",
      peerPort: 0,
      mirrorPort: 0,
      cacheEndpoint: () => "http://127.0.0.1:1",
      getNodeCache: () => undefined,
    };
    await expect(startFanoutNode({ ...base, mode: "planned" })).rejects.toThrow(/needs the fan-out secret/);
    for (const mode of ["external", "off"] as const) {
      const node = await startFanoutNode({ ...base, mode });
      expect(node.peer).toBeUndefined();
      expect(node.mirror).toBeUndefined();
      await node.stop();
    }
  });

  it("clears the spools a previous agent process left in its spool directory when planned mode starts", async () => {
    const spoolDir = await mkdtemp(join(tmpdir(), "stowage-fanout-spool-"));
    try {
      await writeFile(join(spoolDir, "sha256-abc-1-1.part"), "left behind");
      await writeFile(join(spoolDir, "notes.txt"), "not ours");
      const node = await startFanoutNode({
        mode: "planned",
        criSocket: "/nonexistent.sock",
        secret: Buffer.alloc(32, 3),
        bindAddress: "127.0.0.1",
        peerPort: 0,
        mirrorPort: 0,
        spoolDir,
        cacheEndpoint: () => "http://127.0.0.1:1",
        getNodeCache: () => undefined,
      });
      expect(node.peer?.port).toBeGreaterThan(0);
      expect(await readdir(spoolDir)).toEqual(["notes.txt"]);
      await node.stop();
    } finally {
      await rm(spoolDir, { recursive: true, force: true });
    }
  });
});

describe("the agent's fan-out flags", () => {
  const parse = (...args: string[]) => {
    const parsed = parseAgentArgs(["--node-name", "n", ...args], {});
    if (parsed === "help") throw new Error("help");
    return parsed;
  };

  it("is off by default and leaves hosts.toml as today", () => {
    const parsed = parse();
    expect(parsed.fanout.mode).toBe("off");
    expect(parsed.config.fanoutMirror).toBeUndefined();
  });

  it("puts the agent's own mirror first in planned mode, with the defaults docs/fanout.md names", () => {
    const parsed = parse("--fanout-mode", "planned", "--fanout-secret-file", "/etc/stowage/fanout/secret");
    expect(parsed.config.fanoutMirror).toEqual({ localMirror: { port: 5008 } });
    expect(parsed.fanout).toEqual({
      mode: "planned",
      secretFile: "/etc/stowage/fanout/secret",
      bindAddress: "0.0.0.0",
      peerPort: 5007,
      mirrorPort: 5008,
      servingBytesPerSecond: 0,
      servingConcurrency: 3,
      stallTimeoutMs: 2000,
      spoolDir: join(tmpdir(), "stowage-fanout"),
    });
    expect(
      parse("--fanout-mode", "planned", "--fanout-secret-file", "/s", "--fanout-spool-dir", "/spool").fanout
        .spoolDir,
    ).toBe("/spool");
  });

  it("lets a peer failure expire after ten minutes by default, or --fanout-failure-expiry, in planned mode only", () => {
    const planned = ["--fanout-mode", "planned", "--fanout-secret-file", "/etc/stowage/fanout/secret"];
    expect(parse(...planned).config.peerFailureExpiryMs).toBe(10 * 60_000);
    expect(parse(...planned, "--fanout-failure-expiry", "90s").config.peerFailureExpiryMs).toBe(90_000);
    expect(parse().config.peerFailureExpiryMs).toBeUndefined();
    expect(() => parse(...planned, "--fanout-failure-expiry", "0")).toThrow(/fanout-failure-expiry/);
  });

  it("puts the external mirror first in external mode", () => {
    const parsed = parse("--fanout-mode", "external", "--fanout-external-mirror", "http://127.0.0.1:30020");
    expect(parsed.config.fanoutMirror).toEqual({ externalMirror: "http://127.0.0.1:30020" });
  });

  it("refuses an unknown mode, external without its mirror, a mirror URL with a path and planned without a secret", () => {
    expect(() => parse("--fanout-mode", "p2p")).toThrow(/must be planned, external or off, got "p2p"/);
    expect(() => parse("--fanout-mode", "external")).toThrow(/needs --fanout-external-mirror/);
    expect(() =>
      parse("--fanout-mode", "external", "--fanout-external-mirror", "http://127.0.0.1:30020/v2/docker.io"),
    ).toThrow(/with no path/);
    expect(() => parse("--fanout-mode", "planned")).toThrow(/needs --fanout-secret-file/);
    expect(() => parse("--fanout-serving-concurrency", "0")).toThrow(/fanout-serving-concurrency/);
  });
});
