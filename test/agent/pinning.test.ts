/**
 * Pre-warmed images and the kubelet's image garbage collection, on the real containerd here
 * (Debian's 1.6): the agent labels what it holds `io.cri-containerd.pinned=pinned` (what
 * containerd 1.7+ turns into CRI `pinned: true`, which the kubelet's GC skips), reports the
 * runtime's own answer in status (1.6: not pinned), unlabels an image that leaves the spec, and
 * when a present image vanishes (as the kubelet's GC removes it: CRI RemoveImage by id) says so:
 * reason Evicted while it pulls it again, a Warning event and stowage_agent_images_evicted_total.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningAgent, startAgent } from "../../src/agent/command.ts";
import { CriClient, type ImageRuntime } from "../../src/agent/cri.ts";
import { ContainerdPinner } from "../../src/agent/pin.ts";
import { containerdProgressProbe } from "../../src/agent/progress.ts";
import { defaultAgentConfig, pullReferences } from "../../src/agent/reconciler.ts";
import { loadCrd } from "../../src/api/crds.ts";
import {
  type NodeCache,
  type NodeCacheImage,
  NodeCacheResource,
  type NodeImageStatus,
} from "../../src/api/nodeCache.ts";
import { type KubeClient, Resources } from "../../src/kube/client.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type RunningContainerd, startContainerd } from "../../testkit/containerd.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { startCluster } from "../kube/helpers.ts";
import { eventually } from "../support/eventually.ts";

let api: TestCluster;
let client: KubeClient;
let node: RunningContainerd;
let cache: RunningRegistry;
let proxy: FaultProxy;
let registryClient: RegistryClient;
let runtime: CriClient;
let pinner: ContainerdPinner;
let agent: RunningAgent | undefined;
let upstreamHost: string;

const nodeCaches = () => client.resource<NodeCache>(NodeCacheResource);

async function cachedImage(repo: string, sizes: number[]): Promise<NodeCacheImage> {
  const pushed = await pushSinglePlatformImage(
    registryClient,
    { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/${repo}` },
    "1.0",
    { layerSizes: sizes, seed: repo },
  );
  return { image: `${upstreamHost}/${repo}:1.0`, digest: pushed.digest };
}

const imageStatus = async (digest: string, nodeName = "node-pin") =>
  (await nodeCaches().get(nodeName)).status?.images?.find((i) => i.digest === digest);

async function evictedCount(of: RunningAgent | undefined = agent): Promise<number> {
  const port = of?.manager.healthAddress?.port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("stowage_agent_images_evicted_total "));
  return Number(line?.split(" ")[1] ?? Number.NaN);
}

/** An agent for `nodeName`, whose NodeCache asks for `images` through the proxy in front of the cache. */
async function startNodeAgent(
  nodeName: string,
  images: NodeCacheImage[],
  through: ImageRuntime = runtime,
): Promise<RunningAgent> {
  await nodeCaches().create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "NodeCache",
    metadata: { name: nodeName },
    spec: { nodeName, cacheEndpoint: proxy.url, mirrorHosts: [upstreamHost], images },
  });
  const root = join(node.dir, "root");
  return startAgent({
    config: {
      ...defaultAgentConfig,
      nodeName,
      agentVersion: "0.0.0-test",
      containerdConfigPath: node.certsDir,
      containerdConfigFile: node.configFile,
      containerdRoot: root,
      stallTimeoutMs: 60_000,
      resyncIntervalMs: 500,
    },
    client,
    runtime: through,
    progress: containerdProgressProbe(runtime, root),
    pinner,
    healthPort: 0,
    healthHost: "127.0.0.1",
  });
}

/**
 * Every status of `digest` the agent writes to `nodeName` from now on, through a watch: a poll can
 * miss a transient one when the re-pull is quick on an idle machine or the poll slow on a loaded one.
 */
async function watchStatuses(nodeName: string, digest: string) {
  const written: NodeImageStatus[] = [];
  const stop = new AbortController();
  const watching = client
    .watch(
      nodeCaches().collectionPath(),
      { resourceVersion: (await nodeCaches().get(nodeName)).metadata?.resourceVersion },
      (_type, object) => {
        const image = (object as NodeCache).status?.images?.find((i) => i.digest === digest);
        if ((object as NodeCache).metadata?.name === nodeName && image) written.push(image);
      },
      { signal: stop.signal },
    )
    .catch((err: unknown) => err);
  return {
    /** The first written status with reason Evicted (waits up to a minute for it). */
    evicted: () =>
      eventually(
        "reason Evicted while pulling again",
        () => {
          const seen = written.find((s) => s.reason === "Evicted");
          if (seen) return seen;
          throw new Error(`statuses written: ${JSON.stringify(written.map((s) => [s.state, s.reason]))}`);
        },
        60_000,
      ),
    /** Ends the watch; resolves to its error, if it failed. */
    stop: async () => {
      stop.abort();
      return watching;
    },
  };
}

beforeAll(async () => {
  [{ cluster: api, client }, node, cache] = await Promise.all([
    startCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startContainerd(),
    startRegistry(),
  ]);
  proxy = await startFaultProxy(cache.url);
  upstreamHost = `127.0.0.1:${await freePort()}`;
  registryClient = new RegistryClient({ insecureHosts: [cache.host] });
  runtime = new CriClient(node.socketPath);
  pinner = new ContainerdPinner(node.socketPath);
});

afterAll(async () => {
  await agent?.stop();
  runtime?.close();
  pinner?.close();
  await registryClient?.close();
  await proxy?.stop();
  await Promise.all([node?.dispose(), cache?.stop(), api?.stop()]);
});

describe("pinning and evictions on the real containerd", () => {
  it("labels a present image pinned, reports the runtime's answer, counts and reports its eviction, and unlabels it when it leaves the spec", async () => {
    const model = await cachedImage("acme/pinned", [2 * 1024 * 1024, 1024 * 1024]);
    const refs = pullReferences(model);
    agent = await startNodeAgent("node-pin", [model]);

    await eventually("Present and labelled", async () => {
      const s = await imageStatus(model.digest);
      return s?.state === "Present" && (await pinner.isLabelled(refs.byTag ?? "")) ? s : undefined;
    });
    expect(await pinner.isLabelled(refs.byDigest)).toBe(true);
    const present = await runtime.imageStatus(refs.byDigest);
    expect(await pinner.isLabelled(present?.id ?? "")).toBe(true);
    // What the runtime does with the label, checked, not assumed: 1.6 keeps it and pins nothing.
    const version = (await runtime.version()).runtimeVersion;
    const pinsByLabel = !/^v?1\.[0-6]\./.test(version);
    expect(present?.pinned).toBe(pinsByLabel);
    expect((await imageStatus(model.digest))?.pinned).toBe(pinsByLabel);
    expect(await evictedCount()).toBe(0);

    // The kubelet's image GC removes by image id; slow the re-pull so it is seen.
    proxy.addRule({
      times: Number.POSITIVE_INFINITY,
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      action: { kind: "throttle", bytesPerSecond: 512 * 1024, latencyMs: 0 },
    });
    const statuses = await watchStatuses("node-pin", model.digest);
    await runtime.removeImage(present?.id ?? "");
    const evicted = await statuses.evicted();
    expect(await statuses.stop()).toBeUndefined();
    expect(["Pending", "Pulling"]).toContain(evicted.state);
    expect(evicted.message).toContain("without the agent removing it");
    expect(await evictedCount()).toBe(1);
    const events = await client
      .resource<NodeCache & { reason?: string; note?: string; type?: string; regarding?: { name?: string } }>(
        Resources.Event,
      )
      .list({ namespace: "default" });
    const warnings = events.items.filter((e) => e.regarding?.name === "node-pin" && e.reason === "Evicted");
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toMatchObject({ type: "Warning" });
    expect(warnings[0].note).toContain(model.digest);

    proxy.clearRules();
    const back = await eventually(
      "Present again and labelled again",
      async () => {
        const s = await imageStatus(model.digest);
        return s?.state === "Present" && (await pinner.isLabelled(refs.byDigest)) ? s : undefined;
      },
      120_000,
    );
    expect(back.reason).toBeUndefined();
    expect(await evictedCount()).toBe(1);

    // An image the node had before the agent (not the agent's to remove) stays, unlabelled, once
    // it leaves the spec.
    const own = await cachedImage("acme/own", [512 * 1024]);
    const ownRefs = pullReferences(own);
    await runtime.pullImage(ownRefs.byDigest);
    await nodeCaches().patch("node-pin", { spec: { images: [model, own] } });
    await eventually("the node's own image labelled too", async () =>
      (await pinner.isLabelled(ownRefs.byDigest)) ? true : undefined,
    );
    expect((await imageStatus(own.digest))?.ownedByAgent).toBe(false);
    await nodeCaches().patch("node-pin", { spec: { images: [model] } });
    await eventually("its label removed, the image kept", async () =>
      (await pinner.isLabelled(ownRefs.byDigest)) === false ? true : undefined,
    );
    expect(await runtime.imageStatus(ownRefs.byDigest)).toBeDefined();
    expect(await pinner.isLabelled(refs.byDigest)).toBe(true);
  }, 240_000);

  it("reports an image removed between its digest's and its tag's lookups as evicted, not as a missing tag", async () => {
    const model = await cachedImage("acme/gc-race", [1024 * 1024]);
    const refs = pullReferences(model);
    // The kubelet's GC runs when it runs: here it removes the image just after the agent found
    // its digest and before the agent asks for its tag, the window a busy machine may hit.
    let removeBeforeTagLookup: string | undefined;
    const racing: ImageRuntime = {
      version: () => runtime.version(),
      imageStatus: async (image) => {
        const id = removeBeforeTagLookup;
        if (id && image === refs.byTag) {
          removeBeforeTagLookup = undefined;
          await runtime.removeImage(id);
        }
        return runtime.imageStatus(image);
      },
      pullImage: (image, options) => runtime.pullImage(image, options),
      removeImage: (image) => runtime.removeImage(image),
      imageFsInfo: () => runtime.imageFsInfo(),
      listImages: () => runtime.listImages(),
      runtimeConfig: () => runtime.runtimeConfig(),
    };
    const raced = await startNodeAgent("node-gc-race", [model], racing);
    try {
      await eventually("Present", async () =>
        (await imageStatus(model.digest, "node-gc-race"))?.state === "Present" ? true : undefined,
      );
      const present = await runtime.imageStatus(refs.byDigest);
      const statuses = await watchStatuses("node-gc-race", model.digest);
      removeBeforeTagLookup = present?.id;
      const evicted = await statuses.evicted();
      expect(await statuses.stop()).toBeUndefined();
      expect(removeBeforeTagLookup).toBeUndefined();
      expect(evicted.message).toContain("without the agent removing it");
      expect(await evictedCount(raced)).toBe(1);
      await eventually("Present again", async () =>
        (await imageStatus(model.digest, "node-gc-race"))?.state === "Present" ? true : undefined,
      );
    } finally {
      await raced.stop();
    }
  }, 120_000);
});
