import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isGated } from "../../src/controller/gates/reconciler.ts";
import { nodePlatform } from "../../src/controller/modelimage/plan.ts";
import {
  acceptsNewImages,
  hasWarmingTaint,
  internalIpOf,
  isNodeReady,
  nodeCudaDriver,
  type PlannerNode,
  platformOf,
} from "../../src/controller/prewarm/nodes.ts";
import type { KubeClient, KubeObject } from "../../src/kube/client.ts";
import { Resources } from "../../src/kube/client.ts";
import { Manager } from "../../src/kube/manager.ts";
import { trimNode, trimPod } from "../../src/kube/trim.ts";
import { createRuntimeMetrics } from "../../src/metrics.ts";
import { parseHeldFor } from "../../src/webhook/patch.ts";
import { createNamespace, eventually, startCluster, type TestCluster } from "./helpers.ts";

/** A GPU node as a kubelet reports it, with the bulk the controller never reads. */
function gpuNode(name: string, extra: { ready?: boolean; cordoned?: boolean } = {}): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      uid: "3f1c",
      resourceVersion: "42",
      labels: {
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "nvidia.com/cuda.driver.major": "550",
        "nvidia.com/cuda.driver.minor": "54",
        "topology.kubernetes.io/zone": "zone-a",
      },
      annotations: {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
      },
      managedFields: [{ manager: "kubelet", operation: "Update", fieldsV1: { "f:status": {} } }],
    } as KubeObject["metadata"],
    spec: {
      unschedulable: extra.cordoned ?? false,
      podCIDR: "10.0.0.0/24",
      taints: [{ key: "stowage.dev/warming", value: "true", effect: "PreferNoSchedule" }],
    },
    status: {
      conditions: [
        { type: "MemoryPressure", status: "False", reason: "KubeletHasSufficientMemory", message: "ok" },
        {
          type: "Ready",
          status: extra.ready === false ? "False" : "True",
          reason: "KubeletReady",
          message: "ok",
        },
      ],
      nodeInfo: {
        operatingSystem: "linux",
        architecture: "amd64",
        kubeletVersion: "v1.37.2",
        machineID: "m",
      },
      addresses: [
        { type: "InternalIP", address: "10.0.0.7" },
        { type: "ExternalIP", address: "192.0.2.7" },
        { type: "Hostname", address: "gpu-host-7" },
      ],
      capacity: { cpu: "96", memory: "1Ti", "nvidia.com/gpu": "8" },
      images: Array.from({ length: 50 }, (_, i) => ({
        names: [`registry.example/team/model-${i}@sha256:${String(i).padStart(64, "0")}`],
        sizeBytes: 10_000_000_000,
      })),
    },
  } as KubeObject;
}

describe("trimmed informer caches", () => {
  it("a trimmed Node answers every question the planners ask exactly as the full Node does", () => {
    for (const node of [gpuNode("a"), gpuNode("b", { ready: false }), gpuNode("c", { cordoned: true })]) {
      const trimmed = trimNode(node) as PlannerNode;
      const full = node as PlannerNode;
      expect(isNodeReady(trimmed)).toBe(isNodeReady(full));
      expect(acceptsNewImages(trimmed)).toBe(acceptsNewImages(full));
      expect(hasWarmingTaint(trimmed)).toBe(hasWarmingTaint(full));
      expect(platformOf(trimmed)).toEqual(platformOf(full));
      expect(nodePlatform(trimmed)).toEqual(nodePlatform(full));
      expect(nodeCudaDriver(trimmed)).toEqual(nodeCudaDriver(full));
      expect(internalIpOf(trimmed)).toBe(internalIpOf(full));
      expect(trimmed.metadata).toMatchObject({
        name: full.metadata?.name,
        uid: "3f1c",
        resourceVersion: "42",
      });
      expect(trimmed.spec?.taints).toEqual(full.spec?.taints);
    }
  });

  it("a trimmed Node drops the image list, addresses but the InternalIP, capacity and managed fields", () => {
    const full = gpuNode("a");
    const trimmed = trimNode(full);
    const text = JSON.stringify(trimmed);
    expect(internalIpOf(trimmed as PlannerNode)).toBe("10.0.0.7");
    expect(text).not.toContain("model-1");
    expect(text).not.toContain("192.0.2.7");
    expect(text).not.toContain("gpu-host-7");
    expect(text).not.toContain("managedFields");
    expect(text).not.toContain('nvidia.com/gpu":"8');
    expect(text.length).toBeLessThan(JSON.stringify(full).length / 5);
  });

  it("a trimmed Pod keeps its scheduling gates, node and Stowage annotations and drops the rest", () => {
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name: "trainer",
        namespace: "ml",
        uid: "u1",
        resourceVersion: "7",
        creationTimestamp: "2026-12-04T00:00:00Z",
        annotations: {
          "stowage.dev/held-for": "ml/llama",
          "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(10_000),
        },
      },
      spec: {
        schedulingGates: [{ name: "stowage.dev/prewarm" }, { name: "other.example/gate" }],
        containers: [
          { name: "main", image: "registry.example/team/llama:v1", env: [{ name: "A", value: "b" }] },
        ],
      },
      status: { phase: "Pending" },
    } as KubeObject;
    const trimmed = trimPod(pod) as Parameters<typeof isGated>[0];
    expect(isGated(trimmed)).toBe(isGated(pod as Parameters<typeof isGated>[0]));
    expect(isGated(trimmed)).toBe(true);
    expect(parseHeldFor(trimmed.metadata?.annotations)).toEqual(["ml/llama"]);
    expect(trimmed.spec?.schedulingGates).toEqual([
      { name: "stowage.dev/prewarm" },
      { name: "other.example/gate" },
    ]);
    expect(trimmed.metadata?.creationTimestamp).toBe("2026-12-04T00:00:00Z");
    expect(JSON.stringify(trimmed)).not.toContain("last-applied");
    expect(JSON.stringify(trimmed)).not.toContain("containers");
  });
});

describe("shared informers on the real API server", () => {
  let cluster: TestCluster;
  let client: KubeClient;

  beforeAll(async () => {
    ({ cluster, client } = await startCluster());
    await createNamespace(client, "shared-a");
    await createNamespace(client, "shared-b");
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it("asking twice for the same kind and scope gives one informer; another scope or transform gives another", () => {
    const manager = new Manager({ client, metrics: createRuntimeMetrics() });
    const nodesA = manager.addInformer({ type: Resources.Node, transform: trimNode });
    const nodesB = manager.addInformer({ type: Resources.Node, transform: trimNode });
    expect(nodesB).toBe(nodesA);
    expect(manager.addInformer({ type: Resources.Node })).not.toBe(nodesA);
    const podsA = manager.addInformer({ type: Resources.Pod, namespace: "shared-a" });
    expect(manager.addInformer({ type: Resources.Pod, namespace: "shared-a" })).toBe(podsA);
    expect(manager.addInformer({ type: Resources.Pod, namespace: "shared-b" })).not.toBe(podsA);
  });

  it("a shared, trimmed Node informer caches nodes without their image lists and tells both subscribers", async () => {
    const nodes = client.resource(Resources.Node);
    const full = gpuNode("trim-node-1");
    const { status, ...withoutStatus } = full as KubeObject & { status: unknown };
    const {
      uid: _uid,
      resourceVersion: _rv,
      managedFields: _mf,
      ...metadata
    } = full.metadata as Record<string, unknown>;
    await nodes.create({ ...withoutStatus, metadata } as KubeObject);
    await nodes.patchStatus("trim-node-1", { status } as never);

    const manager = new Manager({ client, metrics: createRuntimeMetrics() });
    const first = manager.addInformer({ type: Resources.Node, transform: trimNode });
    const second = manager.addInformer({ type: Resources.Node, transform: trimNode });
    const seen = { first: 0, second: 0 };
    first.addEventHandler({ add: () => seen.first++ });
    second.addEventHandler({ add: () => seen.second++ });
    await manager.start();
    try {
      await eventually("the node is cached", () => first.get("trim-node-1") !== undefined);
      const cached = first.get("trim-node-1") as PlannerNode;
      expect(JSON.stringify(cached)).not.toContain("model-1");
      expect(isNodeReady(cached)).toBe(true);
      expect(platformOf(cached)).toEqual(platformOf(full as PlannerNode));
      expect(seen.first).toBeGreaterThanOrEqual(1);
      expect(seen.second).toBe(seen.first);

      // Updates reach the shared cache trimmed too.
      await nodes.patch("trim-node-1", { metadata: { labels: { "stowage.dev/test": "updated" } } });
      await eventually(
        "the label update is cached",
        () => first.get("trim-node-1")?.metadata?.labels?.["stowage.dev/test"] === "updated",
      );
      expect(JSON.stringify(first.get("trim-node-1"))).not.toContain("model-1");
    } finally {
      await manager.stop();
      await nodes.delete("trim-node-1");
    }
  });
});
