/**
 * A cluster (the API double or the real control plane, with the ModelImage CRD), real registries,
 * and the ModelImage controller in-process.
 */
import { loadCrd } from "../../src/api/crds.ts";
import { type ModelImage, ModelImageResource } from "../../src/api/modelImage.ts";
import { createCredentialProvider } from "../../src/auth/index.ts";
import { type ControllerConfig, controllerConfig } from "../../src/controller/config.ts";
import { setupModelImageController } from "../../src/controller/modelimage/index.ts";
import { KubeClient, type KubeObject, Resources } from "../../src/kube/client.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { Manager } from "../../src/kube/manager.ts";
import { createRegistry, createRuntimeMetrics, createStowageMetrics } from "../../src/metrics.ts";
import { type Clock, systemClock } from "../../src/util/clock.ts";
import { startTestCluster, type TestCluster } from "../../testkit/cluster.ts";
import { eventually } from "../kube/helpers.ts";

/** Real time plus an offset a test can move forward (for lag), sleeping in real time. */
export class OffsetClock implements Clock {
  offsetMs = 0;
  now(): number {
    return Date.now() + this.offsetMs;
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return systemClock.sleep(ms, signal);
  }
}

export async function startCluster(): Promise<{ api: TestCluster; client: KubeClient }> {
  const api = await startTestCluster({ crds: [loadCrd("stowage.dev_modelimages") as never] });
  const client = KubeClient.load({ path: api.kubeconfigPath });
  return { api, client };
}

export async function startController(
  client: KubeClient,
  config: Partial<ControllerConfig> & { cache: ControllerConfig["cache"] },
  clock: Clock = new OffsetClock(),
) {
  const registry = createRegistry();
  const runtimeMetrics = createRuntimeMetrics(registry);
  const metrics = createStowageMetrics(registry);
  const manager = new Manager({ client, metrics: runtimeMetrics });
  const events = new EventRecorder({
    client,
    reportingController: "stowage.dev/controller",
    reportingInstance: "test",
  });
  const credentials = createCredentialProvider({
    kube: client,
    cacheRegistry: config.cache.registry,
    ecr: false,
  });
  const { cache, ...overrides } = config;
  const setup = setupModelImageController(manager, {
    client,
    config: controllerConfig(cache, { workers: 3, maxConcurrentSyncs: 2, ...overrides }),
    credentials,
    metrics,
    events,
    clock,
    registryOptions: { retry: { attempts: 2, baseDelayMs: 50, maxDelayMs: 200 } },
  });
  await manager.start();
  await manager.waitForSync();
  return {
    manager,
    metrics,
    registry,
    runtimeMetrics,
    ...setup,
    async stop() {
      await manager.stop();
      await setup.registries.client.close();
      await credentials.close();
    },
  };
}

export const modelImages = (client: KubeClient) => client.resource<ModelImage>(ModelImageResource);

export async function createModelImage(
  client: KubeClient,
  namespace: string,
  name: string,
  spec: ModelImage["spec"],
): Promise<ModelImage> {
  return modelImages(client).create({
    apiVersion: "stowage.dev/v1alpha1",
    kind: "ModelImage",
    metadata: { name, namespace },
    spec,
  });
}

export function condition(mi: ModelImage | undefined, type: string) {
  return mi?.status?.conditions?.find((c) => c.type === type);
}

/** Waits until the condition has `status` (and `reason`, when given); returns the object then. */
export async function waitForCondition(
  client: KubeClient,
  namespace: string,
  name: string,
  type: string,
  status: string,
  reason?: string,
  timeoutMs = 30_000,
): Promise<ModelImage> {
  let found: ModelImage | undefined;
  await eventually(
    `${namespace}/${name} ${type}=${status}${reason ? ` (${reason})` : ""}`,
    async () => {
      found = await modelImages(client).find(name, namespace);
      const c = condition(found, type);
      return c?.status === status && (reason === undefined || c.reason === reason);
    },
    timeoutMs,
  );
  return found!;
}

export async function createNamespaces(client: KubeClient, ...names: string[]): Promise<void> {
  for (const name of names) await client.resource(Resources.Namespace).create({ metadata: { name } });
}

export async function eventsFor(client: KubeClient, namespace: string, name: string) {
  const list = await client
    .resource<KubeObject & { reason?: string; note?: string; type?: string; regarding?: { name?: string } }>(
      Resources.Event,
    )
    .list({ namespace });
  return list.items.filter((e) => e.regarding?.name === name);
}

/** Blob uploads completed in a registry (the PUT that closes an upload session). */
export async function blobPuts(
  registry: { requests(): Promise<{ method: string; path: string }[]> },
  repository?: string,
) {
  return (await registry.requests()).filter(
    (r) =>
      r.method === "PUT" &&
      r.path.includes("/blobs/uploads/") &&
      (!repository || r.path.includes(`/v2/${repository}/`)),
  ).length;
}
