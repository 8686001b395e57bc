/**
 * Pre-warm through the cache front: a ModelImage the mirror has not finished (no cache digest
 * in status) is planned onto its nodes at once, at the single-platform digest the front
 * resolves from the upstream (a real front over real registries), instead of waiting for
 * Synced. Without the front it still waits.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ModelImage } from "../../src/api/modelImage.ts";
import type { NodeCache } from "../../src/api/nodeCache.ts";
import { prewarmConfig } from "../../src/controller/prewarm/config.ts";
import { ImageResolver } from "../../src/controller/prewarm/images.ts";
import type { PlannerNode } from "../../src/controller/prewarm/nodes.ts";
import { createPrewarmReconciler } from "../../src/controller/prewarm/reconciler.ts";
import type { ObjectClient } from "../../src/kube/client.ts";
import type { EventRecorder } from "../../src/kube/events.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { silentLogger } from "../../src/util/log.ts";
import { type PushedIndex, pushMultiArchIndex } from "../../testkit/images.ts";
import { type CacheRig, rigClient, startRig } from "../cache/support.ts";

let rig: CacheRig;
let pushed: PushedIndex;
let frontClient: RegistryClient;
let storageClient: RegistryClient;

function node(name: string, arch: string): PlannerNode {
  return {
    metadata: {
      name,
      uid: `uid-${name}`,
      labels: { role: "gpu", "kubernetes.io/os": "linux", "kubernetes.io/arch": arch },
    },
    status: { conditions: [{ type: "Ready", status: "True" }] },
  };
}

/** Applied, not mirrored yet: the status has no cache digest. */
function syncingModelImage(): ModelImage {
  return {
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name: "llama", namespace: "ml" },
    spec: {
      variants: [{ name: "gpu", image: `${rig.proxy.host}/acme/llama:1`, nodeSelector: { role: "gpu" } }],
    },
    status: { variants: [{ name: "gpu" }] },
  };
}

function plannerOver(modelImages: ModelImage[], nodes: PlannerNode[], withFront: boolean) {
  const stored = new Map<string, NodeCache>();
  const write = async (nc: NodeCache) => {
    stored.set(nc.metadata.name ?? "", structuredClone(nc));
    return nc;
  };
  const reconcile = createPrewarmReconciler({
    modelImages: () => modelImages,
    nodes: () => nodes,
    nodeCaches: () => [...stored.values()],
    nodeCacheClient: { create: write, update: write } as unknown as ObjectClient<NodeCache>,
    nodeClient: { patch: async () => ({}) } as unknown as ObjectClient<PlannerNode>,
    resolver: new ImageResolver(storageClient, rig.storage.host),
    through: withFront
      ? {
          registry: new URL(rig.front.url).host,
          client: frontClient,
          resolver: new ImageResolver(frontClient, new URL(rig.front.url).host),
        }
      : undefined,
    config: prewarmConfig({ warmingTaint: false }),
    cacheEndpoint: rig.front.url,
    events: { event: async () => {} } as unknown as EventRecorder,
    clock: { now: () => Date.now(), sleep: async () => {} },
    log: silentLogger(),
    onPlan: () => {},
  });
  return { stored, pass: () => reconcile("cluster", { signal: new AbortController().signal } as never) };
}

beforeAll(async () => {
  rig = await startRig();
  const upstreamClient = rigClient(rig);
  pushed = await pushMultiArchIndex(
    upstreamClient,
    { registry: rig.upstream.host, repository: "acme/llama" },
    "1",
    { layerSizes: [64 * 1024] },
  );
  await upstreamClient.close();
  frontClient = new RegistryClient({ insecureHosts: [new URL(rig.front.url).host] });
  storageClient = new RegistryClient({ insecureHosts: [rig.storage.host] });
}, 60_000);

afterAll(async () => {
  await frontClient?.close();
  await storageClient?.close();
  await rig?.stop();
});

describe("pre-warm through the cache front", () => {
  it("plans each node's platform image before the mirror finished, at the digest the front resolves", async () => {
    const planner = plannerOver(
      [syncingModelImage()],
      [node("gpu-amd", "amd64"), node("gpu-arm", "arm64")],
      true,
    );
    await planner.pass();
    const amd = pushed.images.find((i) => i.platform?.architecture === "amd64");
    const arm = pushed.images.find((i) => i.platform?.architecture === "arm64");
    expect(planner.stored.get("gpu-amd")?.spec.images).toEqual([
      expect.objectContaining({ image: `${rig.proxy.host}/acme/llama:1`, digest: amd?.descriptor.digest }),
    ]);
    expect(planner.stored.get("gpu-arm")?.spec.images).toEqual([
      expect.objectContaining({ digest: arm?.descriptor.digest }),
    ]);
    expect(planner.stored.get("gpu-amd")?.spec.mirrorHosts).toEqual([rig.proxy.host]);
    // The front read the upstream; the storage registry the mirror fills was not needed.
    expect(rig.proxy.seen().some((seen) => seen.path.includes("/manifests/"))).toBe(true);
  });

  it("waits for the mirror without the front", async () => {
    const planner = plannerOver([syncingModelImage()], [node("gpu-amd", "amd64")], false);
    await planner.pass();
    expect(planner.stored.size).toBe(0);
  });
});
