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
import { CriClient } from "../../src/agent/cri.ts";
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

const imageStatus = async (digest: string) =>
  (await nodeCaches().get("node-pin")).status?.images?.find((i) => i.digest === digest);

async function evictedCount(): Promise<number> {
  const port = agent?.manager.healthAddress?.port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("stowage_agent_images_evicted_total "));
  return Number(line?.split(" ")[1] ?? Number.NaN);
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
    await nodeCaches().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-pin" },
      spec: { nodeName: "node-pin", cacheEndpoint: proxy.url, mirrorHosts: [upstreamHost], images: [model] },
    });
    const root = join(node.dir, "root");
    agent = await startAgent({
      config: {
        ...defaultAgentConfig,
        nodeName: "node-pin",
        agentVersion: "0.0.0-test",
        containerdConfigPath: node.certsDir,
        containerdConfigFile: node.configFile,
        containerdRoot: root,
        stallTimeoutMs: 60_000,
        resyncIntervalMs: 500,
      },
      client,
      runtime,
      progress: containerdProgressProbe(runtime, root),
      pinner,
      healthPort: 0,
      healthHost: "127.0.0.1",
    });

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
    // Every status the agent writes from here on, through a watch: a poll can miss a transient
    // one when the re-pull is quick on an idle machine or the poll slow on a loaded one.
    const written: NodeImageStatus[] = [];
    const stopWatch = new AbortController();
    const watching = client
      .watch(
        nodeCaches().collectionPath(),
        { resourceVersion: (await nodeCaches().get("node-pin")).metadata?.resourceVersion },
        (_type, object) => {
          const image = (object as NodeCache).status?.images?.find((i) => i.digest === model.digest);
          if ((object as NodeCache).metadata?.name === "node-pin" && image) written.push(image);
        },
        { signal: stopWatch.signal },
      )
      .catch((err: unknown) => err);
    await runtime.removeImage(present?.id ?? "");
    const evicted = await eventually(
      "reason Evicted while pulling again",
      () => {
        const seen = written.find((s) => s.reason === "Evicted");
        if (seen) return seen;
        throw new Error(`statuses written: ${JSON.stringify(written.map((s) => [s.state, s.reason]))}`);
      },
      60_000,
    );
    stopWatch.abort();
    expect(await watching).toBeUndefined();
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
});
