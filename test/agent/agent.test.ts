import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningAgent, startAgent } from "../../src/agent/command.ts";
import { CriClient } from "../../src/agent/cri.ts";
import { STOWAGE_MARKER } from "../../src/agent/hostsToml.ts";
import { containerdProgressProbe } from "../../src/agent/progress.ts";
import { type AgentConfig, defaultAgentConfig } from "../../src/agent/reconciler.ts";
import { loadCrd } from "../../src/api/crds.ts";
import {
  type NodeCache,
  type NodeCacheImage,
  NodeCacheResource,
  type NodeImageStatus,
} from "../../src/api/nodeCache.ts";
import { type KubeClient, Resources } from "../../src/kube/client.ts";
import { getCondition } from "../../src/kube/conditions.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { cuttableClient } from "../kube/apiFaults.ts";
import { startCluster } from "../kube/helpers.ts";
import { eventually as waitFor } from "../support/eventually.ts";

let api: TestCluster;
let client: KubeClient;
let node: RunningContainerd;
let cache: RunningRegistry;
let proxy: FaultProxy;
let registryClient: RegistryClient;
/** An upstream registry host nothing listens on: every pull must come from the cache. */
let upstreamHost: string;
const agents: RunningAgent[] = [];
const criClients: CriClient[] = [];
const extraNodes: RunningContainerd[] = [];

const nodeCaches = () => client.resource<NodeCache>(NodeCacheResource);

function cri(target: RunningContainerd): CriClient {
  const c = new CriClient(target.socketPath);
  criClients.push(c);
  return c;
}

/** Push an image into the cache under the cache layout for `upstreamHost/repo`. */
async function cachedImage(repo: string, tag: string, layerSizes: number[]): Promise<NodeCacheImage> {
  const pushed = await pushSinglePlatformImage(
    registryClient,
    { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/${repo}` },
    tag,
    { layerSizes, seed: `${repo}:${tag}` },
  );
  return {
    image: `${upstreamHost}/${repo}:${tag}`,
    digest: pushed.digest,
    sizeBytes: layerSizes.reduce((a, b) => a + b),
  };
}

async function createNodeCache(
  name: string,
  images: NodeCacheImage[],
  cacheEndpoint = proxy.url,
): Promise<void> {
  await nodeCaches().create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name },
    spec: { nodeName: name, cacheEndpoint, mirrorHosts: [upstreamHost], images },
  });
}

async function setSpecImages(name: string, images: NodeCacheImage[]): Promise<void> {
  await nodeCaches().patch(name, { spec: { images } });
}

async function runAgent(
  nodeName: string,
  target: RunningContainerd,
  overrides: Partial<AgentConfig> = {},
  kube: KubeClient = client,
): Promise<RunningAgent> {
  const runtime = cri(target);
  const agent = await startAgent({
    config: {
      ...defaultAgentConfig,
      nodeName,
      agentVersion: "0.0.0-test",
      containerdConfigPath: target.certsDir,
      containerdConfigFile: target.configFile,
      maxConcurrentPulls: 1,
      stallTimeoutMs: 20_000,
      heartbeatIntervalMs: 60_000,
      resyncIntervalMs: 2_000,
      retryInitialMs: 300,
      retryMaxMs: 2_000,
      ...overrides,
    },
    client: kube,
    runtime,
    progress: containerdProgressProbe(runtime, join(target.dir, "root")),
  });
  agents.push(agent);
  return agent;
}

async function status(name: string): Promise<NodeCache["status"]> {
  return (await nodeCaches().get(name)).status;
}

function imageState(nc: NodeCache["status"], digest: string): NodeImageStatus | undefined {
  return nc?.images?.find((i) => i.digest === digest);
}

/** Poll status until `done`, recording every state each image was seen in. */
async function recordStates(
  name: string,
  done: (s: NodeCache["status"]) => boolean,
): Promise<{ final: NodeCache["status"]; seen: Map<string, string[]> }> {
  const seen = new Map<string, string[]>();
  const final = await waitFor(`NodeCache ${name} to settle`, async () => {
    const s = await status(name);
    for (const image of s?.images ?? []) {
      const states = seen.get(image.digest) ?? [];
      if (states.at(-1) !== image.state) states.push(image.state);
      seen.set(image.digest, states);
    }
    return done(s) ? s : undefined;
  });
  return { final, seen };
}

beforeAll(async () => {
  [{ cluster: api, client }, node, cache] = await Promise.all([
    startCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startContainerd(),
    startRegistry(),
  ]);
  proxy = await startFaultProxy(cache.url);
  upstreamHost = `127.0.0.1:${await freePort()}`;
  registryClient = new RegistryClient({ insecureHosts: [cache.host], retry: { attempts: 2 } });
});

afterAll(async () => {
  for (const agent of agents) await agent.stop();
  for (const c of criClients) c.close();
  await registryClient?.close();
  await proxy?.stop();
  await Promise.all([node?.dispose(), cache?.stop(), api?.stop(), ...extraNodes.map((n) => n.dispose())]);
});

describe("node agent against the API server and a real containerd", () => {
  it("pulls every spec image through the cache: Pending, then Pulling, then Present with bytes, timestamps, counts and imageFs", async () => {
    const first = await cachedImage("acme/llama", "1.0", [2 * 1024 * 1024, 1024 * 1024]);
    const second = await cachedImage("acme/whisper", "2.0", [1024 * 1024]);
    // Slow the blob downloads so each state is visible while the agent pulls one at a time.
    proxy.addRule({
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      times: 6,
      action: { kind: "delay", ms: 700 },
    });
    await createNodeCache("node-a", [first, { ...second, priority: -1 }]);
    await runAgent("node-a", node);

    const { final, seen } = await recordStates("node-a", (s) => s?.counts?.present === 2);
    expect(seen.get(second.digest)?.[0]).toBe("Pending"); // queued behind the one pull allowed
    expect(seen.get(first.digest)).toContain("Pulling");
    expect(seen.get(second.digest)).toContain("Pulling");
    for (const [, states] of seen) expect(states.at(-1)).toBe("Present");

    const llama = imageState(final, first.digest);
    expect(llama).toMatchObject({ image: first.image, state: "Present", ownedByAgent: true });
    expect(llama?.bytes).toBeGreaterThan(3 * 1024 * 1024);
    expect(Date.parse(llama?.finishedAt ?? "")).toBeGreaterThanOrEqual(Date.parse(llama?.startedAt ?? ""));
    expect(final?.counts).toEqual({ images: 2, present: 2, pulling: 0, failed: 0 });
    expect(final?.agentVersion).toBe("0.0.0-test");
    expect(final?.containerdConfigPath).toBe(node.certsDir);
    expect(final?.heartbeatTime).toBeTruthy();
    expect(getCondition(final?.conditions, "Ready")?.status).toBe("True");
    expect(getCondition(final?.conditions, "MirrorConfigured")).toMatchObject({
      status: "True",
      reason: "Configured",
    });

    const fs = await waitFor("imageFs usage", async () => {
      const s = await status("node-a");
      return (s?.imageFs?.usedBytes ?? 0) > 0 ? s?.imageFs : undefined;
    });
    expect(fs.capacityBytes).toBeGreaterThan(fs.usedBytes ?? 0);
    expect((await status("node-a"))?.diskUsed).toMatch(/ \/ /);

    // The kubelet's later pull of image:tag is a local hit: the runtime knows the tag.
    const runtime = cri(node);
    expect((await runtime.imageStatus(first.image))?.repoDigests).toContain(
      `${upstreamHost}/acme/llama@${first.digest}`,
    );
    // Every byte came from the cache (the upstream does not exist).
    expect(
      proxy.seen().some((r) => r.path.includes(`/v2/${upstreamHost.replace(":", "_")}/acme/llama/`)),
    ).toBe(true);
  });

  it("removes an image dropped from spec only when the agent pulled it itself, also after an agent restart", async () => {
    const owned = await cachedImage("acme/owned", "1.0", [256 * 1024]);
    const preexisting = await cachedImage("acme/preexisting", "1.0", [256 * 1024]);
    await createNodeCache("node-b", [owned]);
    await runAgent("node-b", node);
    await waitFor(
      "owned image present",
      async () => imageState(await status("node-b"), owned.digest)?.state === "Present",
    );

    // Someone else (the kubelet) pulled this one before it was listed.
    const runtime = cri(node);
    await runtime.pullImage(`${upstreamHost}/acme/preexisting@${preexisting.digest}`);
    await setSpecImages("node-b", [owned, preexisting]);
    const listed = await waitFor("preexisting image reported", async () => {
      const s = imageState(await status("node-b"), preexisting.digest);
      return s?.state === "Present" ? s : undefined;
    });
    expect(listed.ownedByAgent).toBe(false);

    // A restarted agent knows what it owns from the status alone.
    const first = agents.pop();
    await first?.stop();
    await runAgent("node-b", node);
    await setSpecImages("node-b", []);
    await waitFor(
      "both dropped from status",
      async () => ((await status("node-b"))?.images?.length ?? 1) === 0,
    );
    expect(await runtime.imageStatus(`${upstreamHost}/acme/owned@${owned.digest}`)).toBeUndefined();
    expect(await runtime.imageStatus(`${upstreamHost}/acme/owned:1.0`)).toBeUndefined();
    expect(await runtime.imageStatus(`${upstreamHost}/acme/preexisting@${preexisting.digest}`)).toBeDefined();
  });

  it("reports a pull of an unknown digest as Failed with the runtime's error and retries it with backoff", async () => {
    const missing: NodeCacheImage = {
      image: `${upstreamHost}/acme/ghost:1.0`,
      digest: `sha256:${"ab".repeat(32)}`,
    };
    await createNodeCache("node-c", [missing]);
    await runAgent("node-c", node);
    const failed = await waitFor("second failed attempt", async () => {
      const s = imageState(await status("node-c"), missing.digest);
      return s?.state === "Failed" && /attempt [2-9]/.test(s.message ?? "") ? s : undefined;
    });
    expect(failed.reason).toBe("PullFailed");
    // containerd's own words, naming what it could not pull.
    expect(failed.message).toContain(missing.digest);
    const s = await status("node-c");
    expect(s?.counts).toMatchObject({ images: 1, failed: 1, present: 0 });
    expect(getCondition(s?.conditions, "Ready")).toMatchObject({ status: "False", reason: "PullFailed" });
    const events = await client
      .resource<NodeCache & { reason?: string; note?: string; regarding?: { name?: string } }>(
        Resources.Event,
      )
      .list({ namespace: "default" });
    const pullFailed = events.items.filter(
      (e) => e.regarding?.name === "node-c" && e.reason === "PullFailed",
    );
    expect(pullFailed.length).toBeGreaterThan(0);
    expect(pullFailed[0].note).toContain(missing.digest);
  });

  it("says so in status when containerd has no registry config_path", async () => {
    const bare = await startContainerd({ withoutConfigPath: true });
    extraNodes.push(bare);
    await createNodeCache("node-d", []);
    await runAgent("node-d", bare);
    const s = await waitFor("MirrorConfigured condition", async () => {
      const current = await status("node-d");
      return getCondition(current?.conditions, "MirrorConfigured") ? current : undefined;
    });
    expect(s?.containerdConfigPath).toBe("");
    const condition = getCondition(s?.conditions, "MirrorConfigured");
    expect(condition).toMatchObject({ status: "False", reason: "ConfigPathNotSet" });
    expect(condition?.message).toContain("config_path");
    expect(await readdir(bare.certsDir)).toEqual([]);
  });

  it("writes no containerd config when mirror configuration is disabled", async () => {
    const other = await startContainerd();
    extraNodes.push(other);
    await createNodeCache("node-e", []);
    await runAgent("node-e", other, { mirrorConfig: false });
    const s = await waitFor("MirrorConfigured condition", async () => {
      const current = await status("node-e");
      return getCondition(current?.conditions, "MirrorConfigured") ? current : undefined;
    });
    expect(getCondition(s?.conditions, "MirrorConfigured")).toMatchObject({
      status: "False",
      reason: "Disabled",
    });
    expect(await readdir(other.certsDir)).toEqual([]);
    // With it enabled, the same spec writes the mirror host's hosts.toml.
    const hosts = await readdir(node.certsDir);
    expect(hosts).toContain(upstreamHost);
    const { readFile } = await import("node:fs/promises");
    expect(
      (await readFile(join(node.certsDir, upstreamHost, "hosts.toml"), "utf8")).startsWith(STOWAGE_MARKER),
    ).toBe(true);
  });

  it("cancels a pull that makes no progress for the stall timeout and retries it", async () => {
    const stuck = await cachedImage("acme/stuck", "1.0", [512 * 1024]);
    // The first layer request hangs far longer than the stall timeout.
    const manifest = await registryClient.getManifest(
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/stuck` },
      stuck.digest,
    );
    const layerDigest = (JSON.parse(manifest.bytes.toString()) as { layers: { digest: string }[] }).layers[0]
      .digest;
    proxy.addRule({
      match: { method: "GET", path: new RegExp(`/blobs/${layerDigest}`) },
      times: 1,
      action: { kind: "delay", ms: 60_000 },
    });
    await createNodeCache("node-f", [stuck]);
    await runAgent("node-f", node, { stallTimeoutMs: 2_000 });
    const { seen } = await recordStates("node-f", (s) => imageState(s, stuck.digest)?.state === "Present");
    expect(seen.get(stuck.digest)).toContain("Failed");
    const layerGets = proxy
      .seen()
      .filter((r) => r.method === "GET" && r.path.includes(`/blobs/${layerDigest}`));
    expect(layerGets.length).toBeGreaterThanOrEqual(2);
  });

  it("finishes a large pull after containerd is killed mid-pull and restarted", async () => {
    const big = await startContainerd();
    extraNodes.push(big);
    const large = await cachedImage("acme/large", "1.0", [50 * 1024 * 1024, 50 * 1024 * 1024]);
    proxy.addRule({
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      times: 2,
      action: { kind: "delay", ms: 3_000 },
    });
    await createNodeCache("node-g", [large]);
    await runAgent("node-g", big, { stallTimeoutMs: 30_000 });
    await waitFor(
      "pull under way",
      async () => imageState(await status("node-g"), large.digest)?.state === "Pulling",
    );
    await big.kill();
    await new Promise((resolve) => setTimeout(resolve, 500));
    await big.restart();
    const { final, seen } = await recordStates(
      "node-g",
      (s) => imageState(s, large.digest)?.state === "Present",
    );
    expect(seen.get(large.digest)?.at(-1)).toBe("Present");
    expect(imageState(final, large.digest)?.bytes).toBeGreaterThan(100 * 1024 * 1024);
    expect(await cri(big).imageStatus(large.image)).toBeDefined();
  });

  it("refreshes heartbeatTime on its interval, and in a steady state that is the only write", async () => {
    await createNodeCache("node-h", []);
    await runAgent("node-h", node, { heartbeatIntervalMs: 1_500, resyncIntervalMs: 300 });
    await waitFor("first status", async () => (await status("node-h"))?.heartbeatTime);
    const versions: NodeCache[] = [];
    const until = Date.now() + 5_000;
    while (Date.now() < until) {
      const current = await nodeCaches().get("node-h");
      if (versions.at(-1)?.metadata.resourceVersion !== current.metadata.resourceVersion)
        versions.push(current);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(versions.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < versions.length; i++) {
      const before = versions[i - 1].status;
      const after = versions[i].status;
      expect(Date.parse(after?.heartbeatTime ?? "")).toBeGreaterThan(Date.parse(before?.heartbeatTime ?? ""));
      // imageFs may be refreshed with the heartbeat; nothing else changes.
      expect({ ...after, heartbeatTime: 0, imageFs: 0, diskUsed: 0 }).toEqual({
        ...before,
        heartbeatTime: 0,
        imageFs: 0,
        diskUsed: 0,
      });
    }
  });

  it("keeps pulling while the API server cannot be reached and reports Present once it can again", async () => {
    const image = await cachedImage("acme/outage", "1.0", [4 * 1024 * 1024]);
    proxy.addRule({
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      times: 2,
      action: { kind: "delay", ms: 1_500 },
    });
    await createNodeCache("node-i", [image]);
    // The agent reaches the API through a proxy the test takes down: an outage, every connection
    // (its watch too) reset and new ones refused.
    const link = await cuttableClient(api);
    await runAgent("node-i", node, {}, link.client);
    try {
      await waitFor(
        "pull under way",
        async () => imageState(await status("node-i"), image.digest)?.state === "Pulling",
      );
      await link.proxy.down();
      const runtime = cri(node);
      await waitFor("image in containerd", async () => runtime.imageStatus(image.image));
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      // Nothing got through meanwhile: the API still has the image Pulling.
      expect(imageState(await status("node-i"), image.digest)?.state).toBe("Pulling");
      await link.proxy.up();
      const present = await waitFor("Present reported after the outage", async () => {
        const s = imageState(await status("node-i"), image.digest);
        return s?.state === "Present" ? s : undefined;
      });
      expect(present.ownedByAgent).toBe(true);
    } finally {
      await agents.pop()?.stop();
      await link.stop();
    }
  });
});
