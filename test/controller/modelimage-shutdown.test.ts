/**
 * Stopping the controller (SIGTERM, or losing the lease) aborts the copies its reconciles started:
 * an old leader must not keep copying for minutes after the new one took over.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCredentialProvider } from "../../src/auth/index.ts";
import { controllerConfig } from "../../src/controller/config.ts";
import { setupModelImageController } from "../../src/controller/modelimage/index.ts";
import type { KubeClient } from "../../src/kube/client.ts";
import { EventRecorder } from "../../src/kube/events.ts";
import { Manager } from "../../src/kube/manager.ts";
import { createRegistry, createStowageMetrics } from "../../src/metrics.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import type { TestCluster } from "../../testkit/cluster.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import {
  createModelImage,
  createNamespaces,
  modelImages,
  startCluster,
  waitForCondition,
} from "./modelimage-harness.ts";

const BLOB_DELAY_MS = 3_000;

let api: TestCluster;
let client: KubeClient;
let upstream: RunningRegistry;
let cache: RunningRegistry;
let proxy: FaultProxy;
let reader: RegistryClient;

beforeAll(async () => {
  [{ api, client }, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  const owner = new RegistryClient({ insecureHosts: [upstream.host] });
  await pushSinglePlatformImage(owner, { registry: upstream.host, repository: "models/slow" }, "v1");
  await owner.close();
  proxy = await startFaultProxy(upstream.url);
  reader = new RegistryClient({ insecureHosts: [cache.host] });
  await createNamespaces(client, "ml");
}, 60_000);

afterAll(async () => {
  await reader?.close();
  await proxy?.stop();
  await Promise.all([api?.stop(), upstream?.stop(), cache?.stop()]);
  client?.close();
});

describe("ModelImage controller shutdown", () => {
  it("aborts a copy in flight when the controller stops, so nothing reaches the cache afterwards", async () => {
    proxy.addRule({
      match: { method: "GET", path: /\/blobs\// },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "delay", ms: BLOB_DELAY_MS },
    });
    const manager = new Manager({ client, shutdownDeadlineMs: 200 });
    const credentials = createCredentialProvider({ kube: client, cacheRegistry: cache.host, ecr: false });
    const setup = setupModelImageController(manager, {
      client,
      config: controllerConfig(
        { registry: cache.host, insecure: true },
        { insecureRegistries: [proxy.host] },
      ),
      credentials,
      metrics: createStowageMetrics(createRegistry()),
      events: new EventRecorder({
        client,
        reportingController: "stowage.dev/controller",
        reportingInstance: "test",
      }),
    });
    await manager.start();
    await createModelImage(client, "ml", "slow", { image: `${proxy.host}/models/slow:v1` });
    await waitForCondition(client, "ml", "slow", "Reconciling", "True");
    await manager.stop();
    // Past the delay a copy that was not aborted gets its blobs and pushes the manifest.
    await new Promise((resolve) => setTimeout(resolve, BLOB_DELAY_MS * 2));
    const tags = await reader
      .listTags({ registry: cache.host, repository: `${proxy.host.replace(":", "_")}/models/slow` })
      .catch(() => []);
    expect(tags).toEqual([]);
    const mi = await modelImages(client).get("slow", "ml");
    await setup.registries.client.close();
    await credentials.close();
    expect(mi.status?.conditions?.find((c) => c.type === "Synced")?.status).not.toBe("True");
  }, 60_000);
});
