/**
 * Fan-out when a peer fails (issue 15), on real containerds: a peer killed mid-transfer, a peer
 * token the peer refuses, and what the agent reports of both in its NodeCache status.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type RunningAgent, startAgent } from "../../src/agent/command.ts";
import type { CriClient } from "../../src/agent/cri.ts";
import { applyMirrorConfig } from "../../src/agent/hostsToml.ts";
import { ContainerdContent } from "../../src/agent/peer/content.ts";
import { type Mirror, startMirror } from "../../src/agent/peer/mirror.ts";
import { fanoutStateOf } from "../../src/agent/peer/node.ts";
import { type PeerServer, startPeerServer } from "../../src/agent/peer/server.ts";
import { issuePeerToken } from "../../src/agent/peer/token.ts";
import { type AgentConfig, defaultAgentConfig } from "../../src/agent/reconciler.ts";
import { loadCrd } from "../../src/api/crds.ts";
import {
  type FanoutPiece,
  type NodeCache,
  type NodeCacheImage,
  NodeCacheResource,
  type NodeCacheSpec,
} from "../../src/api/nodeCache.ts";
import type { KubeClient } from "../../src/kube/client.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import type { RunningContainerd } from "../../testkit/containerd.ts";
import type { FaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import type { RunningRegistry } from "../../testkit/registry.ts";
import { startCluster } from "../kube/helpers.ts";
import { eventually } from "../support/eventually.ts";
import { startTwoNodes, type TwoNodes } from "./support/twoNodes.ts";

const MiB = 1024 * 1024;
const secret = Buffer.alloc(32, 7);
const PEER_PROCESS = fileURLToPath(new URL("./support/peerProcess.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../../", import.meta.url));

let api: TestCluster;
let client: KubeClient;
let two: TwoNodes;
let nodeA: RunningContainerd;
let nodeB: RunningContainerd;
let cache: RunningRegistry;
let cacheProxy: FaultProxy;
let registryClient: RegistryClient;
let runtimeA: CriClient;
let runtimeB: CriClient;
let storeA: ContainerdContent;
let storeB: ContainerdContent;
let upstreamHost: string;
/** Closed after each test, last first. */
let cleanups: (() => Promise<void> | void)[] = [];

interface Layer {
  digest: string;
  size: number;
}

async function pushed(name: string): Promise<{ image: PushedImage; big: Layer; small: Layer; ref: string }> {
  const image = await pushSinglePlatformImage(
    registryClient,
    { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/${name}` },
    "1.0",
    { layerSizes: [3 * MiB + 17, 200 * 1024], seed: name },
  );
  const [big, small] = image.image.layers.map((l) => ({
    digest: l.descriptor.digest,
    size: l.descriptor.size,
  }));
  return { image, big, small, ref: `${upstreamHost}/acme/${name}@${image.digest}` };
}

/** A blob cut into pieces of `pieceSize`, the i-th from sources[i]. */
function pieces(layer: Layer, pieceSize: number, sources: string[]): FanoutPiece[] {
  return sources.map((source, i) => ({
    digest: layer.digest,
    offset: i * pieceSize,
    length: Math.min(pieceSize, layer.size - i * pieceSize),
    source,
    wave: source === "cache" ? 1 : 2,
  }));
}

function peerTokenFor(digests: string[], signedWith = secret): string {
  return issuePeerToken(signedWith, { receiver: "node-b", digests, exp: Date.now() / 1000 + 600 });
}

function fanoutSpec(
  image: NodeCacheImage,
  peers: Record<string, string>,
  token: string,
): Omit<NodeCacheSpec, "nodeName"> {
  return {
    cacheEndpoint: cacheProxy.url,
    mirrorHosts: [upstreamHost],
    images: [image],
    peers: Object.entries(peers).map(([node, endpoint]) => ({ node, endpoint })),
    peerToken: { token, expiresAt: new Date(Date.now() + 600_000).toISOString() },
  };
}

/** Node B's mirror, reading its fan-out state from `nodeCache()` as the agent does, with its log kept. */
async function mirrorForB(
  nodeCache: () => NodeCache | undefined,
  stallTimeoutMs: number,
): Promise<{ mirror: Mirror; log: string[] }> {
  const log: string[] = [];
  const mirror = await startMirror({
    cacheEndpoint: () => nodeCache()?.spec.cacheEndpoint,
    state: fanoutStateOf(nodeCache),
    host: "127.0.0.1",
    port: 0,
    stallTimeoutMs,
    log: (message) => log.push(message),
  });
  cleanups.push(() => mirror.close());
  return { mirror, log };
}

const cacheBlobRanges = (digest: string) =>
  cacheProxy
    .seen()
    .filter((r) => r.method === "GET" && r.path.split("?")[0].endsWith(`/blobs/${digest}`))
    .map((r) => r.range);

async function sha256Of(store: ContainerdContent, layer: Layer): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of store.read(layer.digest, 0, layer.size)) hash.update(chunk);
  return `sha256:${hash.digest("hex")}`;
}

/** Node A's peer endpoint in a process of its own, serving at `bytesPerSecond`. */
async function peerProcess(bytesPerSecond: number): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [PEER_PROCESS, nodeA.socketPath, String(bytesPerSecond)], {
    env: { ...process.env, STOWAGE_TEST_FANOUT_SECRET: secret.toString("hex") },
    stdio: ["ignore", "pipe", "pipe"],
  });
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const url = await new Promise<string>((resolve, reject) => {
    let stdout = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      const line = stdout.split("\n")[0];
      if (stdout.includes("\n")) resolve((JSON.parse(line) as { url: string }).url);
    });
    child.once("exit", (code) =>
      reject(new Error(`the peer process exited (${code}) before listening: ${stderr}`)),
    );
  });
  return { url, child };
}

beforeAll(async () => {
  [{ cluster: api, client }, two] = await Promise.all([
    startCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startTwoNodes(),
  ]);
  ({ nodeA, nodeB, cache, cacheProxy, registryClient, upstreamHost, runtimeA, runtimeB } = two);
  storeA = new ContainerdContent(nodeA.socketPath);
  storeB = new ContainerdContent(nodeB.socketPath);
});

afterEach(async () => {
  const pending = cleanups.reverse();
  cleanups = [];
  for (const cleanup of pending) await cleanup();
});

afterAll(async () => {
  storeA?.close();
  storeB?.close();
  await Promise.all([two?.stop(), api?.stop()]);
});

describe("fan-out when a peer fails, on real containerds", () => {
  it("completes B's pull with the right digest when A's peer process is killed mid-transfer: the rest from the cache, A reported Failed", async () => {
    const { image, big, small, ref } = await pushed("fanout-killed");
    await runtimeA.pullImage(ref);
    // A serves slowly: its first chunk at once, the next ones many seconds apart.
    const peer = await peerProcess(64 * 1024);
    const nodeCache: NodeCache = {
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-b" },
      spec: {
        nodeName: "node-b",
        ...fanoutSpec(
          {
            image: `${upstreamHost}/acme/fanout-killed:1.0`,
            digest: image.digest,
            fanout: [...pieces(big, 2 * MiB, ["node-a", "node-a"]), ...pieces(small, MiB, ["node-a"])],
          },
          { "node-a": peer.url },
          peerTokenFor([big.digest, small.digest]),
        ),
      },
    };
    // No stall in this test: A dies, it does not go quiet.
    const { mirror } = await mirrorForB(() => nodeCache, 60_000);
    await applyMirrorConfig(nodeB.certsDir, [upstreamHost], {
      cacheEndpoint: cacheProxy.url,
      localMirror: { port: mirror.port },
    });

    const pull = runtimeB.pullImage(ref);
    await eventually(
      "A to have sent B the first bytes of the big layer",
      () => mirror.stats.sources.get(big.digest)?.get("node-a"),
      30_000,
      10,
    );
    const exited = new Promise((resolve) => peer.child.once("exit", resolve));
    peer.child.kill("SIGKILL");
    await exited;
    const id = await pull;

    expect(id).toMatch(/^sha256:/);
    expect((await runtimeB.imageStatus(ref))?.id).toBe(id);
    expect(await sha256Of(storeB, big)).toBe(big.digest);
    expect(await sha256Of(storeB, small)).toBe(small.digest);
    // Killed inside its first piece: the piece's rest and the second piece came from the cache.
    const bySource = Object.fromEntries(mirror.stats.sources.get(big.digest) ?? []);
    const fromA = bySource["node-a"];
    expect(fromA).toBeGreaterThan(0);
    expect(fromA).toBeLessThan(2 * MiB);
    expect(bySource).toEqual({ "node-a": fromA, cache: big.size - fromA });
    expect(cacheBlobRanges(big.digest)).toEqual(
      expect.arrayContaining([`bytes=${fromA}-${2 * MiB - 1}`, `bytes=${2 * MiB}-${big.size - 1}`]),
    );
    expect(mirror.stats.peerFailures.get("node-a")).toMatchObject({ node: "node-a", reason: "Failed" });
  });

  it("serves no byte for a peer token signed with another secret or naming other digests: B's pull completes from the cache, A reported Failed, the token in no log", async () => {
    const peerLog: string[] = [];
    const peer: PeerServer = await startPeerServer({
      store: storeA,
      secret,
      host: "127.0.0.1",
      port: 0,
      log: (message) => peerLog.push(message),
    });
    cleanups.push(() => peer.close());
    const unrelated = `sha256:${"e".repeat(64)}`;
    const cases = [
      { name: "fanout-other-secret", token: (_: string[]) => peerTokenFor(_, Buffer.alloc(32, 9)) },
      { name: "fanout-other-digests", token: (_: string[]) => peerTokenFor([unrelated]) },
    ];
    for (const { name, token: tokenFor } of cases) {
      const { image, big, small, ref } = await pushed(name);
      await runtimeA.pullImage(ref);
      const token = tokenFor([big.digest, small.digest]);
      const nodeCache: NodeCache = {
        apiVersion: "stowage.dev/v1alpha1",
        kind: "NodeCache",
        metadata: { name: "node-b" },
        spec: {
          nodeName: "node-b",
          ...fanoutSpec(
            {
              image: `${upstreamHost}/acme/${name}:1.0`,
              digest: image.digest,
              fanout: [
                ...pieces(big, MiB, ["node-a", "node-a", "node-a", "node-a"]),
                ...pieces(small, MiB, ["node-a"]),
              ],
            },
            { "node-a": peer.url },
            token,
          ),
        },
      };
      const { mirror, log: mirrorLog } = await mirrorForB(() => nodeCache, 5_000);
      await applyMirrorConfig(nodeB.certsDir, [upstreamHost], {
        cacheEndpoint: cacheProxy.url,
        localMirror: { port: mirror.port },
      });

      const id = await runtimeB.pullImage(ref);

      expect(id, name).toMatch(/^sha256:/);
      expect(await sha256Of(storeB, big), name).toBe(big.digest);
      expect(peer.stats.bytesServed.get(big.digest), name).toBeUndefined();
      expect(peer.stats.bytesServed.get(small.digest), name).toBeUndefined();
      expect(Object.fromEntries(mirror.stats.sources.get(big.digest) ?? []), name).toEqual({
        cache: big.size,
      });
      expect(Object.fromEntries(mirror.stats.sources.get(small.digest) ?? []), name).toEqual({
        cache: small.size,
      });
      expect(mirror.stats.peerFailures.get("node-a"), name).toMatchObject({ reason: "Failed" });
      const logs = [...peerLog, ...mirrorLog, nodeA.log(), nodeB.log()].join("\n");
      expect(mirrorLog.join("\n"), name).toMatch(/peer node-a Failed/);
      const signature = token.split(".")[2];
      expect(logs.includes(token) || logs.includes(signature), name).toBe(false);
    }
    expect(peer.stats.refused.unauthorized).toBeGreaterThan(0);
    expect(peer.stats.refused.forbidden).toBeGreaterThan(0);
  });
});

describe("the agent reports what fan-out did in its NodeCache status", () => {
  const nodeCaches = () => client.resource<NodeCache>(NodeCacheResource);

  async function runAgent(
    nodeName: string,
    overrides: Partial<AgentConfig>,
    fanoutStats?: () => Mirror["stats"] | undefined,
  ): Promise<RunningAgent> {
    const agent = await startAgent({
      config: {
        ...defaultAgentConfig,
        nodeName,
        agentVersion: "0.0.0-test",
        containerdConfigPath: nodeB.certsDir,
        containerdConfigFile: nodeB.configFile,
        maxConcurrentPulls: 1,
        stallTimeoutMs: 20_000,
        resyncIntervalMs: 2_000,
        retryInitialMs: 300,
        retryMaxMs: 2_000,
        ...overrides,
      },
      client,
      runtime: runtimeB,
      ...(fanoutStats ? { fanoutStats } : {}),
    });
    cleanups.push(() => agent.stop());
    return agent;
  }

  it("writes each image's bytes by source once it is Present, and a failed peer until its failure expires", async () => {
    const { image, big, small } = await pushed("fanout-status");
    const spec: NodeCacheImage = {
      image: `${upstreamHost}/acme/fanout-status:1.0`,
      digest: image.digest,
      fanout: [
        ...pieces(big, MiB, ["cache", "node-a", "node-a", "node-a"]),
        // A peer whose agent is gone: nothing listens at its endpoint.
        ...pieces(small, MiB, ["node-gone"]),
      ],
    };
    await runtimeA.pullImage(`${upstreamHost}/acme/fanout-status@${image.digest}`);
    const peer = await startPeerServer({ store: storeA, secret, host: "127.0.0.1", port: 0 });
    cleanups.push(() => peer.close());
    const gone = `http://127.0.0.1:${await freePort()}`;
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-b" },
      spec: {
        nodeName: "node-b",
        ...fanoutSpec(
          spec,
          { "node-a": peer.url, "node-gone": gone },
          peerTokenFor([big.digest, small.digest]),
        ),
      },
    });
    // As `stowage agent --fanout-mode planned` wires it: the mirror reads the agent's informer.
    let agent: RunningAgent | undefined;
    const { mirror } = await mirrorForB(() => agent?.nodeCache(), 5_000);
    const expiryMs = 4_000;
    agent = await runAgent(
      "node-b",
      { fanoutMirror: { localMirror: { port: mirror.port } }, peerFailureExpiryMs: expiryMs },
      () => mirror.stats,
    );

    const present = await eventually("the image Present with its sources", async () => {
      const status = (await nodeCaches().get("node-b")).status;
      const entry = status?.images?.find((i) => i.digest === image.digest);
      return entry?.state === "Present" && entry.sources ? status : undefined;
    });
    expect(present?.images?.[0].sources).toEqual([
      { source: "cache", bytes: MiB + small.size },
      { source: "node-a", bytes: big.size - MiB },
    ]);
    expect(present?.peerFailures).toEqual([
      { node: "node-gone", reason: "Failed", since: expect.any(String) },
    ]);
    const since = Date.parse(present?.peerFailures?.[0].since ?? "");

    const expired = await eventually(
      "the failure of node-gone to expire",
      async () => {
        const status = (await nodeCaches().get("node-b")).status;
        return status?.peerFailures === undefined ? status : undefined;
      },
      30_000,
    );
    expect(Date.now()).toBeGreaterThanOrEqual(since + expiryMs);
    // The mirror still remembers the failure; only the report of it is over. The sources stay.
    expect(mirror.stats.peerFailures.get("node-gone")).toBeDefined();
    expect(expired?.images?.[0].sources).toEqual(present?.images?.[0].sources);

    // Settled: the passes that follow (a resync every 2 s) find nothing new to report.
    const settled = (await nodeCaches().get("node-b")).status;
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    const later = (await nodeCaches().get("node-b")).status;
    const steady = (s: NodeCache["status"]) => ({ ...s, heartbeatTime: 0, imageFs: 0, diskUsed: 0 });
    expect(steady(later)).toEqual(steady(settled));
  });

  it("`stowage agent --fanout-mode planned` serves peers, keeps the peer failures status carries until they expire, and stops cleanly", async () => {
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-p" },
      spec: { nodeName: "node-p", cacheEndpoint: cacheProxy.url, mirrorHosts: [upstreamHost] },
    });
    // What an earlier agent of this node reported: one failure still current, one long expired.
    const recent = { node: "node-a", reason: "Stalled" as const, since: new Date().toISOString() };
    const old = { node: "node-c", reason: "Failed" as const, since: "2026-01-01T00:00:00Z" };
    await nodeCaches().updateStatus({
      ...(await nodeCaches().get("node-p")),
      status: { peerFailures: [recent, old] },
    });
    const work = await mkdtemp(join(tmpdir(), "stowage-fanout-agent-"));
    cleanups.push(() => rm(work, { recursive: true, force: true }));
    await writeFile(join(work, "secret"), secret);
    const [peerPort, mirrorPort] = [await freePort(), await freePort()];
    const child = spawn(
      process.execPath,
      [
        join(ROOT, "bin/stowage.js"),
        "agent",
        "--cri-socket",
        nodeB.socketPath,
        "--containerd-config-path",
        nodeB.certsDir,
        "--containerd-config",
        nodeB.configFile,
        "--kubeconfig",
        api.kubeconfigPath,
        "--health-port",
        "0",
        "--fanout-mode",
        "planned",
        "--fanout-secret-file",
        join(work, "secret"),
        "--fanout-bind-address",
        "127.0.0.1",
        "--fanout-peer-port",
        String(peerPort),
        "--fanout-mirror-port",
        String(mirrorPort),
      ],
      { env: { ...process.env, NODE_NAME: "node-p" }, stdio: ["ignore", "ignore", "pipe"] },
    );
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    const status = await eventually("the agent's first status", async () => {
      const s = (await nodeCaches().get("node-p")).status;
      return s?.agentVersion ? s : undefined;
    });
    expect(status.peerFailures).toEqual([recent]);
    // Its peer endpoint is up and wants a peer token.
    const refused = await fetch(`http://127.0.0.1:${peerPort}/fanout/v1/blobs/sha256:${"0".repeat(64)}`);
    expect(refused.status).toBe(401);
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });

  it("removes peer failures from status when the agent runs without planned fan-out", async () => {
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-off" },
      spec: { nodeName: "node-off", cacheEndpoint: cacheProxy.url, mirrorHosts: [] },
    });
    const created = await nodeCaches().get("node-off");
    await nodeCaches().updateStatus({
      ...created,
      status: { peerFailures: [{ node: "node-a", reason: "Stalled", since: new Date().toISOString() }] },
    });
    await runAgent("node-off", {});
    const status = await eventually("the agent's first status", async () => {
      const s = (await nodeCaches().get("node-off")).status;
      return s?.agentVersion ? s : undefined;
    });
    expect(status.peerFailures).toBeUndefined();
  });
});
