/**
 * Live pull progress: while the real containerd pulls a throttled image, the agent reports the
 * bytes it holds so far in the NodeCache status (what `stowage status` shows as `pulling 42%`),
 * read from containerd's content store; before, bytes appeared only at Present.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningAgent, startAgent } from "../../src/agent/command.ts";
import { CriClient } from "../../src/agent/cri.ts";
import { containerdProgressProbe, pulledBytes } from "../../src/agent/progress.ts";
import { defaultAgentConfig } from "../../src/agent/reconciler.ts";
import { loadCrd } from "../../src/api/crds.ts";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import type { KubeClient } from "../../src/kube/client.ts";
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
let agent: RunningAgent | undefined;
let runtime: CriClient | undefined;

beforeAll(async () => {
  [{ cluster: api, client }, node, cache] = await Promise.all([
    startCluster({ crds: [loadCrd("stowage.dev_nodecaches") as never] }),
    startContainerd(),
    startRegistry(),
  ]);
  proxy = await startFaultProxy(cache.url);
  registryClient = new RegistryClient({ insecureHosts: [cache.host] });
});

afterAll(async () => {
  await agent?.stop();
  runtime?.close();
  await registryClient?.close();
  await proxy?.stop();
  await Promise.all([node?.dispose(), cache?.stop(), api?.stop()]);
});

describe("live pull progress", () => {
  it("reports growing bytes while Pulling, below the image's size, then Present with all of it", async () => {
    const upstreamHost = `127.0.0.1:${await freePort()}`;
    const layerSizes = [6 * 1024 * 1024, 3 * 1024 * 1024];
    const pushed = await pushSinglePlatformImage(
      registryClient,
      { registry: cache.host, repository: `${upstreamHost.replace(":", "_")}/acme/progress` },
      "1.0",
      { layerSizes, seed: "progress" },
    );
    // 1 MiB/s per connection: long enough to be seen pulling, whatever the machine's load.
    proxy.addRule({
      times: Number.POSITIVE_INFINITY,
      match: { method: "GET", path: /\/blobs\/sha256:/ },
      action: { kind: "throttle", bytesPerSecond: 1024 * 1024, latencyMs: 0 },
    });
    const nodeCaches = client.resource<NodeCache>(NodeCacheResource);
    await nodeCaches.create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "NodeCache",
      metadata: { name: "node-p" },
      spec: {
        nodeName: "node-p",
        cacheEndpoint: proxy.url,
        mirrorHosts: [upstreamHost],
        images: [{ image: `${upstreamHost}/acme/progress:1.0`, digest: pushed.digest }],
      },
    });
    runtime = new CriClient(node.socketPath);
    const root = join(node.dir, "root");
    agent = await startAgent({
      config: {
        ...defaultAgentConfig,
        nodeName: "node-p",
        agentVersion: "0.0.0-test",
        containerdConfigPath: node.certsDir,
        containerdConfigFile: node.configFile,
        containerdRoot: root,
        stallTimeoutMs: 60_000,
        progressIntervalMs: 200,
        resyncIntervalMs: 2_000,
      },
      client,
      runtime,
      progress: containerdProgressProbe(runtime, root),
    });

    const pullingBytes: number[] = [];
    const final = await eventually(
      "the image Present",
      async () => {
        const image = (await nodeCaches.get("node-p")).status?.images?.[0];
        if (image?.state === "Pulling" && image.bytes !== undefined && image.bytes !== pullingBytes.at(-1))
          pullingBytes.push(image.bytes);
        return image?.state === "Present" ? image : undefined;
      },
      120_000,
      50,
    );
    const total = (await pulledBytes(root, pushed.digest))?.totalBytes ?? 0;
    expect(total).toBeGreaterThan(9 * 1024 * 1024);
    // Seen mid-pull: some bytes, not all of them, and never going backwards.
    expect(pullingBytes.some((b) => b > 0 && b < total)).toBe(true);
    expect([...pullingBytes].sort((a, b) => a - b)).toEqual(pullingBytes);
    expect(final.bytes).toBeGreaterThan(0);
    expect(await pulledBytes(root, pushed.digest)).toEqual({ bytes: total, totalBytes: total });
  }, 180_000);
});
