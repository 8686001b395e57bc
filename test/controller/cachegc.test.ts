/**
 * Eviction of images nobody declared, on real registries: a front records when it served each
 * image into the storage registry; the controller's pass keeps what is tagged (declared), deletes
 * the least recently pulled of the rest until they fit the budget, and distribution's garbage
 * collection, run while the registry is read-only, frees their blobs.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningCache, startCache } from "../../src/cache/command.ts";
import { cacheHostSegment } from "../../src/cache/layout.ts";
import { PullLog, readPullRecord } from "../../src/cache/pulls.ts";
import {
  collectWhilePaused,
  type GarbageCollection,
  garbageCollect,
  READ_ONLY_REGISTRY_ENV,
} from "../../src/controller/cachegc/collect.ts";
import { evictUndeclared } from "../../src/controller/cachegc/evict.ts";
import { declaredImages } from "../../src/controller/cachegc/index.ts";
import { planEviction } from "../../src/controller/cachegc/plan.ts";
import { createEvictionMetrics, createRegistry } from "../../src/metrics.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { type Clock, systemClock } from "../../src/util/clock.ts";
import { silentLogger } from "../../src/util/log.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { frontConfig } from "../cache/support.ts";
import { eventually } from "../support/eventually.ts";

describe("planning eviction", () => {
  const image = (name: string, lastPulledAt: number, blobs: [string, number][]) => ({
    repository: `docker.io/acme/${name}`,
    digest: `sha256:${name}`,
    blobs: new Map(blobs),
    lastPulledAt,
  });

  it("evicts the least recently pulled first, counting shared and declared blobs once", () => {
    const declared = image("declared", 0, [["base", 500]]);
    const old = image("old", 10, [
      ["base", 500],
      ["old-layer", 300],
    ]);
    const middle = image("middle", 20, [
      ["shared", 200],
      ["middle-layer", 100],
    ]);
    const recent = image("recent", 30, [
      ["shared", 200],
      ["recent-layer", 100],
    ]);
    // Undeclared bytes: old-layer 300 + shared 200 + middle-layer 100 + recent-layer 100 (base is declared).
    const plan = planEviction([declared], [recent, old, middle], 450);
    expect(plan.undeclaredBytes).toBe(700);
    expect(plan.evict.map((i) => i.repository)).toEqual(["docker.io/acme/old"]);
    expect(plan.freedBytes).toBe(300);
    // Evicting middle frees only its own layer: the shared one is still recent's.
    const tighter = planEviction([declared], [recent, old, middle], 300);
    expect(tighter.evict.map((i) => i.repository)).toEqual(["docker.io/acme/old", "docker.io/acme/middle"]);
    expect(tighter.freedBytes).toBe(400);
    expect(planEviction([declared], [recent, old, middle], 700).evict).toEqual([]);
  });
});

/**
 * Storage as the chart configures it: with distribution's in-memory blob descriptor cache, which
 * after a garbage collection beside a running registry still answers for collected blobs (and
 * accepts a manifest naming them): a reason the registry restarts around the collection.
 */
const storageOptions = (extra: { port?: number; readOnly?: boolean } = {}) => ({
  storageDir,
  storage: { filesystem: { rootdirectory: storageDir }, cache: { blobdescriptor: "inmemory" } },
  ...extra,
});
let storageDir: string;

describe("evicting images pulled through the front", () => {
  let upstream: RunningRegistry;
  let storage: RunningRegistry;
  let spoolDir: string;
  let front: RunningCache | undefined;
  let client: RegistryClient;

  beforeAll(async () => {
    storageDir = await mkdtemp(join(tmpdir(), "stowage-gc-storage-"));
    spoolDir = await mkdtemp(join(tmpdir(), "stowage-gc-spool-"));
    [upstream, storage] = await Promise.all([startRegistry(), startRegistry(storageOptions())]);
  });

  afterAll(async () => {
    await front?.stop();
    await client?.close();
    await Promise.all([upstream?.stop(), storage?.stop()]);
    await rm(storageDir, { recursive: true, force: true });
    await rm(spoolDir, { recursive: true, force: true });
  });

  it("deletes the least recently pulled undeclared image over budget and collects its blobs while the registry is read-only, keeping declared and recent ones", async () => {
    const segment = cacheHostSegment(upstream.host);
    client = new RegistryClient({ insecureHosts: [upstream.host, storage.host], retry: { attempts: 2 } });
    const push = (repository: string, seed: string, registry = upstream.host) =>
      pushSinglePlatformImage(client, { registry, repository }, "v1", {
        seed,
        layerSizes: [48 * 1024, 1024 * 1024],
      });
    await push("acme/declared", "declared");
    // The controller mirrors the declared image into the cache, tagged.
    const declared = await push(`${segment}/acme/declared`, "declared", storage.host);
    const old = await push("acme/old", "old");
    const recent = await push("acme/recent", "recent");

    let now = 1_000_000;
    const clock: Clock = { now: () => now, sleep: systemClock.sleep };
    front = await startCache(
      {
        ...frontConfig(storage.url, upstream.host, spoolDir),
        pullRecordIntervalMs: 3_600_000,
        instance: "front-a",
      },
      { clock },
    );
    const pull = async (repository: string, image: PushedImage) => {
      const base = `${front?.url}/v2/${segment}/${repository}`;
      const manifest = await request(`${base}/manifests/v1`, { headers: { accept: image.mediaType } });
      expect(manifest.statusCode).toBe(200);
      await manifest.body.dump();
      for (const blob of image.image.blobs) {
        const response = await request(`${base}/blobs/${blob.descriptor.digest}`);
        expect(response.statusCode).toBe(200);
        await response.body.dump();
      }
    };
    await pull("acme/old", old);
    now += 60_000;
    await pull("acme/declared", declared);
    now += 60_000;
    await pull("acme/recent", recent);
    // The fetched manifests are promoted into the manifest store once their blobs are in.
    for (const [name, image] of [
      ["acme/old", old],
      ["acme/recent", recent],
    ] as const) {
      await eventually(
        `${name} promoted`,
        async () =>
          (await client.headManifest(
            { registry: storage.host, repository: `${segment}/${name}` },
            image.digest,
          )) !== undefined,
        10_000,
        50,
      );
    }
    await front.stop(); // writes the pull record
    front = undefined;
    const record = await readPullRecord(client, storage.host, "front-a");
    expect(record?.get(`${segment}/acme/old@${old.digest}`)).toBe(1_000_000);
    expect(record?.get(`${segment}/acme/recent@${recent.digest}`)).toBe(1_120_000);

    // Room for one undeclared image: the old one goes.
    const recentBytes =
      recent.image.blobs.reduce((sum, blob) => sum + blob.descriptor.size, 0) +
      recent.image.manifest.bytes.length;
    const metricsRegistry = createRegistry();
    const metrics = createEvictionMetrics(metricsRegistry);
    const port = Number(storage.host.split(":")[1]);
    const gcConfig = join(spoolDir, "gc-config.yml");
    await writeFile(gcConfig, `version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ${storageDir}\n`);
    let uploadWhilePaused: number | undefined;
    let collected: GarbageCollection | undefined;
    const result = await evictUndeclared({
      client,
      registry: storage.host,
      budgetBytes: recentBytes + 1024,
      metrics,
      logger: silentLogger(),
      collectGarbage: async () => {
        collected = await collectWhilePaused(
          {
            pause: async () => {
              await storage.stop();
              // Read-only by environment, as a patched StatefulSet would set it.
              storage = await startRegistry({ ...storageOptions({ port }), env: READ_ONLY_REGISTRY_ENV });
              const upload = await request(`${storage.url}/v2/acme/late/blobs/uploads/`, { method: "POST" });
              await upload.body.dump();
              uploadWhilePaused = upload.statusCode;
            },
            resume: async () => {
              await storage.stop();
              storage = await startRegistry(storageOptions({ port }));
            },
          },
          () => garbageCollect({ configPath: gcConfig }),
        );
      },
    });

    expect(result.evicted.map((e) => `${e.repository}@${e.digest}`)).toEqual([
      `${segment}/acme/old@${old.digest}`,
    ]);
    // Read-only meanwhile: no upload could start beside the collection.
    expect(uploadWhilePaused).toBe(405);
    const layersOf = (image: PushedImage) => image.image.blobs.map((b) => b.descriptor.digest);
    expect(collected?.blobs).toEqual(expect.arrayContaining(layersOf(old)));
    for (const digest of [...layersOf(declared), ...layersOf(recent)])
      expect(collected?.blobs).not.toContain(digest);
    const blobStatus = async (repository: string, digest: string) => {
      const response = await request(`${storage.url}/v2/${segment}/${repository}/blobs/${digest}`, {
        method: "HEAD",
      });
      await response.body.dump();
      return response.statusCode;
    };
    for (const digest of layersOf(old)) expect(await blobStatus("acme/old", digest)).toBe(404);
    for (const digest of layersOf(recent)) expect(await blobStatus("acme/recent", digest)).toBe(200);
    for (const digest of layersOf(declared)) expect(await blobStatus("acme/declared", digest)).toBe(200);
    expect(
      await client.headManifest({ registry: storage.host, repository: `${segment}/acme/old` }, old.digest),
    ).toBeUndefined();
    expect(
      (
        await client.headManifest(
          { registry: storage.host, repository: `${segment}/acme/recent` },
          recent.digest,
        )
      )?.digest,
    ).toBe(recent.digest);
    expect(
      (await client.headManifest({ registry: storage.host, repository: `${segment}/acme/declared` }, "v1"))
        ?.digest,
    ).toBe(declared.digest);
    // The registry knows the collected blobs are gone: the evicted manifest cannot come back
    // without them.
    const putBack = await request(`${storage.url}/v2/${segment}/acme/old/manifests/${old.digest}`, {
      method: "PUT",
      headers: { "content-type": old.mediaType },
      body: old.image.manifest.bytes,
    });
    expect(putBack.statusCode).toBe(400);
    expect(await putBack.body.text()).toContain("MANIFEST_BLOB_UNKNOWN");
    const text = await metricsRegistry.metrics();
    expect(text).toContain("stowage_cache_evictions_total 1");
    expect(text).toMatch(/stowage_cache_evicted_bytes_total \d{7}/);

    // Under budget now: a second pass evicts nothing.
    const again = await evictUndeclared({
      client,
      registry: storage.host,
      budgetBytes: recentBytes + 1024,
      metrics,
      logger: silentLogger(),
    });
    expect(again.evicted).toEqual([]);
  }, 120_000);
});

describe("images ModelImages declare by digest", () => {
  let cache: RunningRegistry;
  let client: RegistryClient;

  beforeAll(async () => {
    cache = await startRegistry();
    client = new RegistryClient({ insecureHosts: [cache.host], retry: { attempts: 1 } });
  });

  afterAll(async () => {
    await client?.close();
    await cache?.stop();
  });

  it("are kept though untagged and least recently pulled, named by ModelImage status", async () => {
    const repository = "docker.io/acme/pinned";
    const images: PushedImage[] = [];
    for (const tag of ["by-digest", "other"]) {
      const image = await pushSinglePlatformImage(client, { registry: cache.host, repository }, tag);
      // As the controller stores a digest-only source, and the front what it fetched: no tag.
      const manifest = await client.getManifest({ registry: cache.host, repository }, image.digest);
      await client.deleteManifest({ registry: cache.host, repository }, image.digest);
      await client.putManifest({ registry: cache.host, repository }, image.digest, manifest);
      images.push(image);
    }
    const [declared, other] = images;
    let now = 10;
    const pulls = new PullLog({
      client,
      registry: cache.host,
      instance: "front-0",
      clock: { now: () => now, sleep: systemClock.sleep },
      logger: silentLogger(),
    });
    pulls.record(repository, declared.digest);
    now = 20;
    pulls.record(repository, other.digest);
    await pulls.flush();
    const modelImages = [
      { metadata: { name: "node" }, status: { conditions: [] } },
      {
        metadata: { name: "tools", namespace: "ml" },
        status: {
          variants: [
            {
              name: "default",
              image: `docker.io/acme/pinned@${declared.digest}`,
              cacheDigest: declared.digest,
            },
          ],
        },
      },
    ];
    expect(declaredImages(modelImages)).toEqual([{ repository, digest: declared.digest }]);
    const result = await evictUndeclared({
      client,
      registry: cache.host,
      budgetBytes: 0,
      metrics: createEvictionMetrics(createRegistry()),
      logger: silentLogger(),
      declared: () => declaredImages(modelImages),
    });
    expect(result.evicted.map((e) => e.digest)).toEqual([other.digest]);
    expect((await client.headManifest({ registry: cache.host, repository }, declared.digest))?.digest).toBe(
      declared.digest,
    );
  });
});
