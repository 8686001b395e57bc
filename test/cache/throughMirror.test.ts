/**
 * Pre-warm through the front (`--prewarm-through-cache`): the controller's mirror of a declared
 * image reads its blobs through the cache front, so a node pulling the same image through the
 * front at the same time and the mirror share one upstream read, and the front's stored copy
 * is the one the mirror's image uses (no second upload). Real registries (upstream behind the
 * fault proxy, which records every upstream request; storage with its access log), the front
 * in-process, the controller's own Registries and Copier.
 */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { controllerConfig } from "../../src/controller/config.ts";
import { createRegistries, type Registries } from "../../src/controller/modelimage/registries.ts";
import { cacheRepository } from "../../src/oci/reference.ts";
import type { CredentialLookup, RegistryClient } from "../../src/oci/registry.ts";
import { silentLogger } from "../../src/util/log.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { freePort } from "../../testkit/ports.ts";
import { eventually } from "../support/eventually.ts";
import { type CacheRig, fetchFrom, metricValue, rigClient, startRig, upstreamBlobGets } from "./support.ts";

const USER = { username: "stowage", password: "s3cret" };

let rig: CacheRig;
let client: RegistryClient;
let registries: Registries | undefined;

beforeAll(async () => {
  // A private upstream: the front serves only a caller whose credentials the upstream accepts.
  rig = await startRig({ upstream: { auth: "htpasswd", users: [USER] } });
  client = rigClient(rig, USER);
});

afterAll(async () => {
  await registries?.client.close();
  await client?.close();
  await rig?.stop();
});

/** Storage's access log: uploads (the PUT that commits) of `digest`. */
async function storageCommits(digest: string): Promise<number> {
  return (await rig.storage.requests()).filter(
    (line) =>
      line.method === "PUT" &&
      line.path.includes("/blobs/uploads/") &&
      line.path.includes(`digest=${encodeURIComponent(digest)}`),
  ).length;
}

describe("stowage cache: the mirror reads through the front", () => {
  it("shares one upstream read of each blob between a node's pull through the front and the mirror, which uploads nothing twice", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/trainer" },
      "v1",
      { layerSizes: [12 * 1024 * 1024] },
    );
    const layer = pushed.image.layers[0].descriptor;
    // The upstream holds the layer back, so the mirror asks for it while the node's fetch runs.
    rig.proxy.addRule({
      match: { method: "GET", path: new RegExp(`/blobs/${layer.digest}`) },
      action: { kind: "delay", ms: 3000 },
    });
    const upstreamCredentials: CredentialLookup = (registry) =>
      registry === rig.proxy.host ? USER : undefined;
    registries = createRegistries({
      config: controllerConfig(
        { registry: rig.storage.host, insecure: true },
        { insecureRegistries: [rig.proxy.host] },
      ),
      cacheCredentials: () => undefined,
      logger: silentLogger(),
      throughCache: rig.front.url,
    });
    const mirror = registries;
    const storedRepository = cacheRepository({ registry: rig.proxy.host, repository: "acme/trainer" });
    const authorization = `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString("base64")}`;

    const nodePull = fetchFrom(rig.front.url, `${rig.prefix("acme/trainer")}/blobs/${layer.digest}`, {
      authorization,
    });
    await eventually(
      "the node's pull is waiting on the front's flight",
      async () => (await metricValue(rig.front, "stowage_cache_singleflight_waiters")) === 1,
      10_000,
      20,
    );
    const copied = await mirror.withUpstreamCredentials(upstreamCredentials, () =>
      mirror.copier.copy(
        { registry: rig.proxy.host, repository: "acme/trainer", digest: pushed.digest },
        { registry: rig.storage.host, repository: storedRepository, tag: "v1" },
      ),
    );
    const pulled = await nodePull;

    expect(pulled.status).toBe(200);
    expect(`sha256:${createHash("sha256").update(pulled.body).digest("hex")}`).toBe(layer.digest);
    expect(copied.targetDigest).toBe(pushed.digest);
    // Every blob of the image (config and layer) came from the upstream exactly once.
    const gets = upstreamBlobGets(rig.proxy);
    for (const blob of [pushed.image.config.descriptor, layer]) {
      expect(gets.filter((path) => path.includes(blob.digest))).toHaveLength(1);
    }
    expect(await metricValue(rig.front, "stowage_cache_singleflight_joined_total", { kind: "blob" })).toBe(1);
    // The image is whole in storage: its tag, and the layer with the right size.
    const stored = await client.headManifest(
      { registry: rig.storage.host, repository: storedRepository },
      "v1",
    );
    expect(stored?.digest).toBe(pushed.digest);
    await eventually(
      "the layer committed in storage",
      async () =>
        (await client.hasBlob({ registry: rig.storage.host, repository: storedRepository }, layer.digest)) ===
        layer.size,
      10_000,
      50,
    );
    // The layer was uploaded into storage once: by the front's flight, not again by the mirror.

    expect(await storageCommits(layer.digest)).toBe(1);
  });

  it("still mirrors, reading the upstream itself, when the front cannot be reached", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/offline-front" },
      "v1",
      { layerSizes: [2 * 1024 * 1024] },
    );
    const upstreamCredentials: CredentialLookup = (registry) =>
      registry === rig.proxy.host ? USER : undefined;
    const unreachable = `http://127.0.0.1:${await freePort()}`;
    const mirror = createRegistries({
      config: controllerConfig(
        { registry: rig.storage.host, insecure: true },
        { insecureRegistries: [rig.proxy.host] },
      ),
      cacheCredentials: () => undefined,
      logger: silentLogger(),
      throughCache: unreachable,
      options: { retry: { attempts: 1 } },
    });
    try {
      const storedRepository = cacheRepository({
        registry: rig.proxy.host,
        repository: "acme/offline-front",
      });
      const copied = await mirror.withUpstreamCredentials(upstreamCredentials, () =>
        mirror.copier.copy(
          { registry: rig.proxy.host, repository: "acme/offline-front", digest: pushed.digest },
          { registry: rig.storage.host, repository: storedRepository, tag: "v1" },
        ),
      );
      expect(copied.targetDigest).toBe(pushed.digest);
      const layer = pushed.image.layers[0].descriptor;
      expect(
        await client.hasBlob({ registry: rig.storage.host, repository: storedRepository }, layer.digest),
      ).toBe(layer.size);
      expect(upstreamBlobGets(rig.proxy).filter((path) => path.includes(layer.digest))).toHaveLength(1);
    } finally {
      await mirror.client.close();
    }
  });
});
