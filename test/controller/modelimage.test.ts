import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Resources } from "../../src/kube/client.ts";
import { cacheRepository } from "../../src/oci/reference.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushMultiArchIndex, pushSharedBaseImages, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually, metricSum } from "../kube/helpers.ts";
import {
  blobPuts,
  condition,
  createModelImage,
  createNamespaces,
  eventsFor,
  modelImages,
  OffsetClock,
  startCluster,
  startController,
  waitForCondition,
} from "./modelimage-harness.ts";

let cluster: Awaited<ReturnType<typeof startCluster>>;
let upstream: RunningRegistry;
let proxy: FaultProxy; // the upstream as the controller sees it
let cache: RunningRegistry;
let controller: Awaited<ReturnType<typeof startController>>;
const clock = new OffsetClock();
let pushClient: RegistryClient;

beforeAll(async () => {
  [cluster, upstream, cache] = await Promise.all([startCluster(), startRegistry(), startRegistry()]);
  proxy = await startFaultProxy(upstream.url);
  pushClient = new RegistryClient({ insecureHosts: [upstream.host, cache.host] });
  await createNamespaces(cluster.client, "ml", "other");
  await cluster.client.resource(Resources.Node).create({
    metadata: {
      name: "gpu-1",
      labels: { "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", gpu: "true" },
    },
    status: { conditions: [{ type: "Ready", status: "True" }] },
  } as never);
  controller = await startController(
    cluster.client,
    {
      cache: { registry: cache.host, insecure: true },
      insecureRegistries: [proxy.host],
      retainOnDelete: false,
    },
    clock,
  );
}, 60_000);

afterAll(async () => {
  await controller?.stop();
  await Promise.all([cluster?.api.stop(), upstream?.stop(), cache?.stop(), proxy?.stop()]);
  cluster?.client.close();
  await pushClient?.close();
});

const up = (repository: string) => ({ registry: upstream.host, repository });
const cacheRepoOf = (repository: string) => cacheRepository({ registry: proxy.host, repository });
const cacheHead = (repository: string, reference: string) =>
  pushClient.headManifest({ registry: cache.host, repository: cacheRepoOf(repository) }, reference);

function stowageSum(name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricSum({ registry: controller.registry } as Parameters<typeof metricSum>[0], name, labels);
}

async function reconciles(): Promise<number> {
  return metricSum(controller.runtimeMetrics, "controller_reconcile_total", { controller: "modelimage" });
}

describe("ModelImage reconciler", () => {
  it("mirrors a ModelImage into <cache>/<upstream host_port>/<repo>:<tag> byte-exact and reports it Ready", async () => {
    const pushed = await pushSinglePlatformImage(pushClient, up("models/tiny"), "v1");
    await createModelImage(cluster.client, "ml", "tiny", { image: `${proxy.host}/models/tiny:v1` });
    const mi = await waitForCondition(cluster.client, "ml", "tiny", "Ready", "True");

    const cached = await pushClient.getManifest(
      { registry: cache.host, repository: `${proxy.host.replace(":", "_")}/models/tiny` },
      "v1",
    );
    expect(cached.digest).toBe(pushed.digest);
    expect(cached.bytes.equals(pushed.image.manifest.bytes)).toBe(true);
    const variant = mi.status?.variants?.[0];
    expect(variant).toMatchObject({
      name: "default",
      image: `${proxy.host}/models/tiny:v1`,
      cacheImage: `${cache.host}/${cacheRepoOf("models/tiny")}:v1`,
      sourceDigest: pushed.digest,
      cacheDigest: pushed.digest,
      platforms: ["linux/amd64"],
    });
    expect(variant?.sizeBytes).toBeGreaterThan(64 * 1024 + 256 * 1024);
    expect(variant?.syncedAt).toBeTruthy();
    expect(variant?.lastCheckedAt).toBeTruthy();
    expect(variant?.upstreamChangedAt).toBeUndefined();
    expect(mi.status?.observedGeneration).toBe(mi.metadata.generation);
    expect(condition(mi, "Synced")).toMatchObject({ status: "True", reason: "UpToDate" });
    expect(condition(mi, "Reconciling")?.status).toBe("False");
    expect(condition(mi, "Stalled")).toBeUndefined();
    expect(mi.metadata.finalizers).toContain("stowage.dev/cache-cleanup");
    // Events are recorded after the status write: the last may land a moment later.
    await eventually("SyncStarted and Synced Events", async () => {
      const reasons = (await eventsFor(cluster.client, "ml", "tiny")).map((e) => e.reason);
      return reasons.includes("SyncStarted") && reasons.includes("Synced");
    });
  });

  it("mirrors only the platforms of the Ready nodes a variant selects, and every platform when none match", async () => {
    const index = await pushMultiArchIndex(pushClient, up("models/multi"), "v1");
    await pushMultiArchIndex(pushClient, up("models/multi-elsewhere"), "v1");
    await createModelImage(cluster.client, "ml", "multi", {
      variants: [
        { name: "gpu", image: `${proxy.host}/models/multi:v1`, nodeSelector: { gpu: "true" } },
        { name: "nowhere", image: `${proxy.host}/models/multi-elsewhere:v1`, nodeSelector: { pool: "none" } },
      ],
    });
    const mi = await waitForCondition(cluster.client, "ml", "multi", "Ready", "True");
    const [gpu, nowhere] = mi.status?.variants ?? [];
    expect(gpu.platforms).toEqual(["linux/amd64"]);
    expect(gpu.cacheDigest).not.toBe(index.digest); // a filtered index
    expect(nowhere.platforms).toEqual(["linux/amd64", "linux/arm64/v8"]);
    expect(condition(mi, "Synced")?.message).toContain('variant "nowhere"');
    expect(condition(mi, "Synced")?.message).toContain("NoMatchingNodes");
    await eventually("a NoMatchingNodes warning", async () =>
      (await eventsFor(cluster.client, "ml", "multi")).some(
        (e) => e.reason === "NoMatchingNodes" && e.type === "Warning",
      ),
    );
  });

  it("keeps every platform ModelImages sharing an image want in its one cache tag, instead of each overwriting it", async () => {
    await pushMultiArchIndex(pushClient, up("models/shared-tag"), "v1");
    const image = `${proxy.host}/models/shared-tag:v1`;
    await createModelImage(cluster.client, "other", "arm-only", {
      image,
      sync: { platforms: ["linux/arm64/v8"] },
    });
    await waitForCondition(cluster.client, "other", "arm-only", "Ready", "True");
    await createModelImage(cluster.client, "ml", "gpu-only", {
      variants: [{ name: "gpu", image, nodeSelector: { gpu: "true" } }],
    });
    const gpuOnly = await waitForCondition(cluster.client, "ml", "gpu-only", "Ready", "True");
    expect(gpuOnly.status?.variants?.[0].platforms).toEqual(["linux/amd64", "linux/arm64/v8"]);
    const tagged = await pushClient.getManifest(
      { registry: cache.host, repository: cacheRepoOf("models/shared-tag") },
      "v1",
    );
    const platforms = (
      JSON.parse(tagged.bytes.toString()) as { manifests: { platform: { architecture: string } }[] }
    ).manifests
      .map((m) => m.platform.architecture)
      .sort();
    expect(platforms).toEqual(["amd64", "arm64"]);
    // The first one's next check adopts the shared tag; after that neither pushes again.
    controller.controller.enqueue("other/arm-only");
    await eventually("both record the shared cache digest", async () => {
      const arm = await modelImages(cluster.client).get("arm-only", "other");
      return arm.status?.variants?.[0].cacheDigest === tagged.digest;
    });
    const manifestPuts = async () =>
      (await cache.requests()).filter(
        (r) => r.method === "PUT" && r.path.includes(`/v2/${cacheRepoOf("models/shared-tag")}/manifests/`),
      ).length;
    const before = await manifestPuts();
    const reconciled = await reconciles();
    controller.controller.enqueue("other/arm-only");
    controller.controller.enqueue("ml/gpu-only");
    await eventually("both checked again", async () => (await reconciles()) >= reconciled + 2);
    expect(await manifestPuts()).toBe(before);
  });

  it("re-mirrors a variant for a new platform when a matching node of another architecture becomes Ready", async () => {
    await waitForCondition(cluster.client, "ml", "multi", "Ready", "True");
    const nodes = cluster.client.resource(Resources.Node);
    await nodes.create({
      metadata: {
        name: "gpu-arm-1",
        labels: { "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64", gpu: "true" },
      },
      status: { conditions: [{ type: "Ready", status: "False" }] },
    } as never);
    // Not Ready yet: nothing changes.
    let mi = await waitForCondition(cluster.client, "ml", "multi", "Ready", "True");
    expect(mi.status?.variants?.[0].platforms).toEqual(["linux/amd64"]);
    const node = await nodes.get("gpu-arm-1");
    await nodes.updateStatus({
      ...node,
      status: { conditions: [{ type: "Ready", status: "True" }] },
    } as never);
    await eventually("the gpu variant holds arm64 too", async () => {
      mi = (await modelImages(cluster.client).get("multi", "ml")) as typeof mi;
      return mi.status?.variants?.[0].platforms?.length === 2;
    });
    expect(mi.status?.variants?.[0].platforms).toEqual(["linux/amd64", "linux/arm64/v8"]);
    await nodes.delete("gpu-arm-1");
  });

  it("re-syncs a moved tag moving only the new blobs, with the lag metric rising while the cache lags and back to 0", async () => {
    const base = { seed: "moving/base", size: 300 * 1024 };
    await pushSinglePlatformImage(pushClient, up("models/moving"), "v1", {
      layers: [base, { seed: "moving/a", size: 20 * 1024 }],
    });
    await createModelImage(cluster.client, "ml", "moving", {
      image: `${proxy.host}/models/moving:v1`,
      sync: { interval: "30s" },
    });
    await waitForCondition(cluster.client, "ml", "moving", "Ready", "True");
    // The metric is read from the controller's informer, which sees a status write a moment after
    // the API server answers it: waited for, not read once.
    const lag = () => stowageSum("stowage_modelimage_sync_lag_seconds", { namespace: "ml", name: "moving" });
    const lagIs = (what: string, check: (seconds: number) => boolean) =>
      eventually(`the lag metric ${what}`, async () => check(await lag()));
    await lagIs("at 0", (seconds) => seconds === 0);

    const moved = await pushSinglePlatformImage(pushClient, up("models/moving"), "v1", {
      layers: [base, { seed: "moving/b", size: 40 * 1024 }],
    });
    const putsBefore = await blobPuts(cache, cacheRepoOf("models/moving"));
    // Upstream blobs fail for now: the change is seen but cannot be mirrored yet.
    proxy.addRule({
      match: { method: "GET", path: /\/blobs\// },
      times: 1000,
      action: { kind: "status", status: 503 },
    });
    controller.controller.enqueue("ml/moving");
    let mi = await waitForCondition(cluster.client, "ml", "moving", "Synced", "False", "UpstreamUnavailable");
    expect(mi.status?.variants?.[0].upstreamChangedAt).toBeTruthy();
    expect(mi.status?.lagSince).toBe(mi.status?.variants?.[0].upstreamChangedAt);
    clock.offsetMs += 120_000;
    await lagIs("at 120 s or more", (seconds) => seconds >= 120);

    proxy.clearRules();
    controller.controller.enqueue("ml/moving");
    mi = await waitForCondition(cluster.client, "ml", "moving", "Synced", "True");
    expect(mi.status?.variants?.[0].cacheDigest).toBe(moved.digest);
    expect(mi.status?.variants?.[0].upstreamChangedAt).toBeUndefined();
    expect(mi.status?.lagSince).toBeUndefined();
    await lagIs("back at 0", (seconds) => seconds === 0);
    // New layer + new config; the 300 KiB base stayed where it was.
    expect((await blobPuts(cache, cacheRepoOf("models/moving"))) - putsBefore).toBe(2);
    expect(await stowageSum("stowage_sync_bytes_total", { kind: "skipped" })).toBeGreaterThanOrEqual(
      300 * 1024,
    );
  });

  it("mirrors an image two ModelImages reference once", async () => {
    const pushed = await pushSinglePlatformImage(pushClient, up("models/popular"), "v1", {
      layerSizes: [200 * 1024, 100 * 1024],
    });
    await Promise.all([
      createModelImage(cluster.client, "ml", "popular-a", { image: `${proxy.host}/models/popular:v1` }),
      createModelImage(cluster.client, "other", "popular-b", { image: `${proxy.host}/models/popular:v1` }),
    ]);
    await waitForCondition(cluster.client, "ml", "popular-a", "Ready", "True");
    await waitForCondition(cluster.client, "other", "popular-b", "Ready", "True");
    // Two layers and a config, each uploaded once.
    expect(await blobPuts(cache, cacheRepoOf("models/popular"))).toBe(pushed.image.blobs.length);
  });

  it("mounts layers shared with an image already in the cache instead of uploading them", async () => {
    const [first, second] = await pushSharedBaseImages(pushClient, upstream.host, {
      prefix: "base/app",
      count: 2,
    });
    await createModelImage(cluster.client, "ml", "app-0", {
      image: `${proxy.host}/${first.repo.repository}:v1`,
    });
    await waitForCondition(cluster.client, "ml", "app-0", "Ready", "True");
    const mountedBefore = await stowageSum("stowage_sync_bytes_total", { kind: "mounted" });
    await createModelImage(cluster.client, "ml", "app-1", {
      image: `${proxy.host}/${second.repo.repository}:v1`,
    });
    await waitForCondition(cluster.client, "ml", "app-1", "Ready", "True");
    const mounted = (await stowageSum("stowage_sync_bytes_total", { kind: "mounted" })) - mountedBefore;
    expect(mounted).toBe(mountedBase(second));
    let note = "";
    await eventually("the Synced Event", async () => {
      note = (await eventsFor(cluster.client, "ml", "app-1")).find((e) => e.reason === "Synced")?.note ?? "";
      return note !== "";
    });
    expect(note).toMatch(/KiB mounted/);
  });

  it("makes no API writes while nothing changes over several checks", async () => {
    await waitForCondition(cluster.client, "ml", "tiny", "Ready", "True");
    const before = await reconciles();
    await cluster.api.resetRequestLog();
    const eventsBefore = (await eventsFor(cluster.client, "ml", "tiny")).length;
    const upstreamBefore = proxy.seen().length;
    for (let i = 0; i < 3; i++) {
      const done = (await reconciles()) + 1;
      controller.controller.enqueue("ml/tiny");
      await eventually("the check finished", async () => (await reconciles()) >= done);
    }
    expect(await reconciles()).toBeGreaterThanOrEqual(before + 3);
    const writes = (await cluster.api.requestLog()).filter(
      (r) => r.method !== "GET" && r.path.includes("/modelimages/"),
    );
    expect(writes).toEqual([]);
    expect((await eventsFor(cluster.client, "ml", "tiny")).length).toBe(eventsBefore);
    // Each unchanged check costs one upstream manifest HEAD.
    const upstreamRequests = proxy.seen().slice(upstreamBefore);
    expect(upstreamRequests.every((r) => r.method === "HEAD" && r.path.includes("/manifests/"))).toBe(true);
    expect(upstreamRequests.length).toBe(3);
  });

  it("stops all registry traffic while suspended, says so, and resumes when unsuspended", async () => {
    await waitForCondition(cluster.client, "ml", "tiny", "Ready", "True");
    await modelImages(cluster.client).patch("tiny", { spec: { suspend: true } }, { namespace: "ml" });
    const mi = await waitForCondition(cluster.client, "ml", "tiny", "Ready", "False", "Suspended");
    expect(condition(mi, "Ready")?.message).toContain("suspend");
    expect(condition(mi, "Synced")?.status).toBe("True");
    const seen = proxy.seen().length;
    const cacheSeen = (await cache.requests()).length;
    const done = (await reconciles()) + 1;
    controller.controller.enqueue("ml/tiny");
    await eventually("the suspended reconcile finished", async () => (await reconciles()) >= done);
    expect(proxy.seen().length).toBe(seen);
    expect((await cache.requests()).length).toBe(cacheSeen);
    await modelImages(cluster.client).patch("tiny", { spec: { suspend: false } }, { namespace: "ml" });
    await waitForCondition(cluster.client, "ml", "tiny", "Ready", "True");
  });

  it("deletes cache tags no other ModelImage uses and keeps shared ones, and drops the object's metric series", async () => {
    await pushSinglePlatformImage(pushClient, up("models/lonely"), "v1");
    await createModelImage(cluster.client, "ml", "lonely", { image: `${proxy.host}/models/lonely:v1` });
    await waitForCondition(cluster.client, "ml", "lonely", "Ready", "True");
    expect(await cacheHead("models/lonely", "v1")).toBeDefined();
    const series = async () => (await controller.registry.metrics()).includes('name="lonely"');
    expect(await series()).toBe(true);

    await modelImages(cluster.client).delete("lonely", "ml");
    await eventually(
      "lonely is gone",
      async () => (await modelImages(cluster.client).find("lonely", "ml")) === undefined,
    );
    expect(await cacheHead("models/lonely", "v1")).toBeUndefined();
    expect(await series()).toBe(false);

    await modelImages(cluster.client).delete("popular-a", "ml");
    await eventually(
      "popular-a is gone",
      async () => (await modelImages(cluster.client).find("popular-a", "ml")) === undefined,
    );
    expect(await cacheHead("models/popular", "v1")).toBeDefined(); // other/popular-b still uses it
  });
});

function mountedBase(image: { image: { blobs: { descriptor: { size: number } }[] } }): number {
  return image.image.blobs.find((b) => b.descriptor.size >= 512 * 1024)?.descriptor.size ?? -1;
}
