/**
 * The ModelImage sync folds pre-warm into the status it writes, reading which variants the cache
 * holds from that status. It read them from the status it replaced, which on a first sync held
 * none: Prewarmed and Ready stayed False ("waiting for the cache to hold variant(s)") until a plan
 * change refreshed them — on the real control plane with no nodes (helm-lifecycle.test.ts), up to
 * the next sync interval. Here the planner never reports a change, so only the sync's own write
 * can make the ModelImage Ready.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type NodeCache, NodeCacheResource } from "../../src/api/nodeCache.ts";
import { createCredentialProvider } from "../../src/auth/index.ts";
import { controllerConfig } from "../../src/controller/config.ts";
import { setupModelImageController } from "../../src/controller/modelimage/index.ts";
import type { PrewarmController } from "../../src/controller/prewarm/index.ts";
import type { PlannerNode } from "../../src/controller/prewarm/nodes.ts";
import { type KubeClient, Resources } from "../../src/kube/client.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { Manager } from "../../src/kube/manager.ts";
import { createRegistry, createStowageMetrics } from "../../src/metrics.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { condition, createModelImage, createNamespaces, waitForCondition } from "./modelimage-harness.ts";
import { startCluster } from "./prewarm-harness.ts";

let api: TestCluster;
let client: KubeClient;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let manager: Manager;
let stop: () => Promise<void>;

beforeAll(async () => {
  [{ api, client }, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/first" }, "v1");
  await owner.close();
  await createNamespaces(client, "ml");

  manager = new Manager({ client });
  // A planner that has planned nothing and never reports a change: the NodeCaches it would read
  // are the cluster's (none), its plan is empty.
  const quietPlanner: Pick<PrewarmController, "nodeCacheInformer" | "plan" | "planChanges"> = {
    nodeCacheInformer: manager.addInformer<NodeCache>({ type: NodeCacheResource }),
    plan: () => undefined,
    planChanges: { addEventHandler: () => () => {} },
  };
  const credentials = createCredentialProvider({ kube: client, cacheRegistry: cache.host, ecr: false });
  const setup = setupModelImageController(manager, {
    client,
    config: controllerConfig(
      { registry: cache.host, insecure: true },
      { insecureRegistries: [upstream.host] },
    ),
    credentials,
    metrics: createStowageMetrics(createRegistry()),
    events: new EventRecorder({
      client,
      reportingController: "stowage.dev/controller",
      reportingInstance: "test",
    }),
    // the ModelImage controller reads only these three of the planner
    prewarm: quietPlanner as PrewarmController,
  });
  await manager.start();
  await manager.waitForSync();
  stop = async () => {
    await manager.stop();
    await setup.registries.client.close();
    await credentials.close();
  };
});

afterAll(async () => {
  await stop?.();
  await Promise.all([upstream?.stop(), cache?.stop(), api?.stop()]);
});

describe("the first sync of a ModelImage with pre-warm on and no matching node", () => {
  it("writes Prewarmed and Ready True with Synced, without waiting for the planner", async () => {
    await createModelImage(client, "ml", "first", { image: `${upstream.host}/models/first:v1` });
    const ready = await waitForCondition(client, "ml", "first", "Ready", "True", undefined, 15_000);
    expect(condition(ready, "Synced")?.status).toBe("True");
    expect(condition(ready, "Prewarmed")).toMatchObject({ status: "True", reason: "NodesWarm" });
    expect(ready.status?.variants?.[0]?.cacheDigest).toMatch(/^sha256:/);
  });

  it("recomputes Prewarmed and Ready when a matching node is uncordoned after the sync, with no plan change", async () => {
    // Ready but cordoned: it takes no new images, so nothing is desired at the first sync.
    await client.resource<PlannerNode>(Resources.Node).create({
      metadata: { name: "gpu-cordoned", labels: { "kubernetes.io/arch": "amd64", pool: "gpu" } },
      spec: { unschedulable: true },
      status: { conditions: [{ type: "Ready", status: "True" }] },
    });
    await createModelImage(client, "ml", "gpu-only", {
      variants: [{ name: "gpu", image: `${upstream.host}/models/first:v1`, nodeSelector: { pool: "gpu" } }],
    });
    const warm = await waitForCondition(client, "ml", "gpu-only", "Ready", "True", undefined, 15_000);
    expect(warm.status?.variants?.[0]?.nodes?.desired ?? 0).toBe(0);

    await client
      .resource<PlannerNode>(Resources.Node)
      .patch("gpu-cordoned", { spec: { unschedulable: false } });
    // Not the sync interval (10m): the node change itself brings the count and the conditions.
    const pulling = await waitForCondition(
      client,
      "ml",
      "gpu-only",
      "Prewarmed",
      "False",
      "NodesPulling",
      15_000,
    );
    expect(pulling.status?.variants?.[0]?.nodes?.desired).toBe(1);
    expect(condition(pulling, "Ready")?.status).toBe("False");
  });
});
