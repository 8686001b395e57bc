import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadCrd } from "../../src/api/crds.ts";
import { type ModelImage, ModelImageResource } from "../../src/api/modelImage.ts";
import { createCredentialProvider } from "../../src/auth/index.ts";
import { controllerConfig } from "../../src/controller/config.ts";
import { setupModelImageController } from "../../src/controller/modelimage/index.ts";
import { setupPrewarmController } from "../../src/controller/prewarm/index.ts";
import { KubeClient, Resources } from "../../src/kube/client.ts";
import { getCondition } from "../../src/kube/conditions.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { Manager } from "../../src/kube/manager.ts";
import {
  createPrewarmMetrics,
  createRegistry,
  createRuntimeMetrics,
  createStowageMetrics,
} from "../../src/metrics.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { startTestCluster, type TestCluster } from "../../testkit/cluster.ts";
import { type PushedIndex, pushMultiArchIndex } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually, metricSum } from "../kube/helpers.ts";
import { createNode, findNodeCache, report } from "./prewarm-harness.ts";

let cluster: TestCluster;
let client: KubeClient;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let push: RegistryClient;
let manager: Manager;
let runtimeMetrics: ReturnType<typeof createRuntimeMetrics>;
let closeAll: () => Promise<void>;
let pushed: PushedIndex;
let enqueue: { sync: (key: string) => void; plan: () => void; status: (key: string) => void };

const modelImages = () => client.resource<ModelImage>(ModelImageResource);

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([
    startTestCluster({
      crds: [loadCrd("stowage.dev_modelimages") as never, loadCrd("stowage.dev_nodecaches") as never],
    }),
    startRegistry(),
    startRegistry(),
  ]);
  client = KubeClient.load({ path: cluster.kubeconfigPath });
  push = new RegistryClient({ insecureHosts: [upstream.host] });
  pushed = await pushMultiArchIndex(push, { registry: upstream.host, repository: "acme/llama" }, "1.0");
  await client.resource(Resources.Namespace).create({ metadata: { name: "ml" } });
  await createNode(client, "int-1", { labels: { suite: "integration" } });

  const registry = createRegistry();
  runtimeMetrics = createRuntimeMetrics(registry);
  manager = new Manager({ client, metrics: runtimeMetrics });
  const events = new EventRecorder({
    client,
    reportingController: "stowage.dev/controller",
    reportingInstance: "test",
  });
  const config = controllerConfig(
    { registry: cache.host, insecure: true },
    { insecureRegistries: [upstream.host] },
  );
  const credentials = createCredentialProvider({ kube: client, cacheRegistry: cache.host, ecr: false });
  const planner = setupPrewarmController(manager, {
    client,
    config,
    events,
    metrics: createPrewarmMetrics(registry),
  });
  const mi = setupModelImageController(manager, {
    client,
    config,
    credentials,
    metrics: createStowageMetrics(registry),
    events,
    prewarm: planner,
  });
  enqueue = {
    sync: (key) => mi.controller.enqueue(key),
    plan: () => planner.controller.enqueue("cluster"),
    status: (key) => mi.prewarmStatusController?.enqueue(key),
  };
  await manager.start();
  await manager.waitForSync();
  closeAll = async () => {
    await manager.stop();
    await planner.close();
    await mi.registries.client.close();
    await credentials.close();
  };
}, 60_000);

afterAll(async () => {
  await closeAll?.();
  await push?.close();
  await Promise.all([cluster?.stop(), upstream?.stop(), cache?.stop()]);
  client?.close();
});

async function statusOf(): Promise<ModelImage> {
  return modelImages().get("llama", "ml");
}

describe("ModelImage status with the pre-warm planner", () => {
  it("is Synced but not Ready while the node pulls, and Ready once the node reports the image Present", async () => {
    await modelImages().create({
      apiVersion: "stowage.dev/v1alpha1",
      kind: "ModelImage",
      metadata: { name: "llama", namespace: "ml" },
      spec: {
        variants: [
          { name: "cpu", image: `${upstream.host}/acme/llama:1.0`, nodeSelector: { suite: "integration" } },
        ],
      },
    });
    let mi: ModelImage | undefined;
    await eventually("Synced, pulling on one node", async () => {
      mi = await statusOf();
      return (
        getCondition(mi.status?.conditions, "Synced")?.status === "True" &&
        mi.status?.variants?.[0].nodes?.pulling === 1
      );
    });
    expect(mi?.status?.nodes).toBe("0/1");
    expect(getCondition(mi?.status?.conditions, "Prewarmed")).toMatchObject({
      status: "False",
      reason: "NodesPulling",
    });
    expect(getCondition(mi?.status?.conditions, "Ready")).toMatchObject({
      status: "False",
      reason: "NodesPulling",
    });
    expect(getCondition(mi?.status?.conditions, "Reconciling")).toMatchObject({
      status: "True",
      reason: "NodesPulling",
    });

    const nc = await findNodeCache(client, "int-1");
    expect(nc?.spec.mirrorHosts).toEqual([upstream.host]);
    expect(nc?.spec.images?.map((e) => [e.image, e.digest])).toEqual([
      [`${upstream.host}/acme/llama:1.0`, pushed.images[0].manifest.digest],
    ]);

    await report(client, "int-1", { [pushed.images[0].manifest.digest]: "Present" });
    await eventually("Ready", async () => {
      mi = await statusOf();
      return getCondition(mi.status?.conditions, "Ready")?.status === "True";
    });
    expect(mi?.status?.nodes).toBe("1/1");
    expect(mi?.status?.variants?.[0].nodes).toEqual({
      desired: 1,
      ready: 1,
      pulling: 0,
      failed: 0,
      skipped: 0,
    });
    expect(getCondition(mi?.status?.conditions, "Prewarmed")).toMatchObject({
      status: "True",
      reason: "NodesWarm",
    });
    expect(getCondition(mi?.status?.conditions, "Reconciling")).toMatchObject({ status: "False" });
  });

  it("makes no API writes while nothing changes", async () => {
    const reconciles = (controller: string) =>
      metricSum(runtimeMetrics, "controller_reconcile_total", { controller });
    const everyController = async () => {
      for (const [controller, kick] of [
        ["modelimage", () => enqueue.sync("ml/llama")],
        ["prewarm", () => enqueue.plan()],
        ["modelimage-prewarm", () => enqueue.status("ml/llama")],
      ] as const) {
        const target = (await reconciles(controller)) + 1;
        kick();
        await eventually(`${controller} reconciled`, async () => (await reconciles(controller)) >= target);
      }
    };
    await everyController(); // settle whatever the previous test left in flight
    await cluster.resetRequestLog();
    await everyController();
    await everyController();
    const writes = (await cluster.requestLog()).filter(
      (r) => r.method !== "GET" && !r.path.includes("/events"),
    );
    expect(writes).toEqual([]);
  });
});
