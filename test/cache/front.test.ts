import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RegistryClient } from "../../src/oci/registry.ts";
import { MediaType } from "../../src/oci/types.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { eventually } from "../support/eventually.ts";
import { type CacheRig, fetchFrom, metricValue, rigClient, startRig, upstreamBlobGets } from "./support.ts";

let rig: CacheRig;
let client: RegistryClient;
let image: PushedImage;

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

beforeAll(async () => {
  rig = await startRig();
  client = rigClient(rig);
  image = await pushSinglePlatformImage(
    client,
    { registry: rig.upstream.host, repository: "acme/app" },
    "v1",
    { layerSizes: [3 * 1024 * 1024, 200 * 1024] },
  );
});

afterAll(async () => {
  await client?.close();
  await rig?.stop();
});

describe("stowage cache: the read-only distribution API", () => {
  it("answers the API root and refuses writes with UNSUPPORTED", async () => {
    const root = await fetchFrom(rig.front.url, "/v2/");
    expect(root.status).toBe(200);
    expect(root.headers["docker-distribution-api-version"]).toBe("registry/2.0");
    const { request } = await import("undici");
    const put = await request(`${rig.front.url}${rig.prefix("acme/app")}/manifests/v2`, {
      method: "PUT",
      body: "{}",
    });
    expect(put.statusCode).toBe(405);
    expect((await put.body.json()) as object).toMatchObject({ errors: [{ code: "UNSUPPORTED" }] });
    const upload = await request(`${rig.front.url}${rig.prefix("acme/app")}/blobs/uploads/`, {
      method: "POST",
    });
    expect(upload.statusCode).toBe(405);
    await upload.body.dump();
  });

  it("serves an undeclared image on first pull, then from storage without reading upstream blobs again", async () => {
    const prefix = rig.prefix("acme/app");
    const head = await fetchFrom(
      rig.front.url,
      `${prefix}/manifests/v1`,
      { accept: MediaType.OciManifest },
      "HEAD",
    );
    expect(head.status).toBe(200);
    expect(head.headers["docker-content-digest"]).toBe(image.digest);
    const manifest = await fetchFrom(rig.front.url, `${prefix}/manifests/${image.digest}`);
    expect(manifest.status).toBe(200);
    expect(sha256(manifest.body)).toBe(image.digest);
    expect(manifest.headers["content-type"]).toBe(MediaType.OciManifest);
    for (const blob of image.image.blobs) {
      const got = await fetchFrom(rig.front.url, `${prefix}/blobs/${blob.descriptor.digest}`);
      expect(got.status).toBe(200);
      expect(got.complete).toBe(true);
      expect(sha256(got.body)).toBe(blob.descriptor.digest);
    }
    const upstreamGetsAfterFirst = upstreamBlobGets(rig.proxy).length;
    expect(upstreamGetsAfterFirst).toBe(image.image.blobs.length);
    // Storage now holds every blob, committed by digest.
    const cacheRepo = { registry: rig.storage.host, repository: `${prefix.slice(4)}` };
    for (const blob of image.image.blobs) {
      // Callers finish once the blob is verified; storage's commit follows a moment later.
      await eventually(
        `blob ${blob.descriptor.digest} committed to storage`,
        async () => (await client.hasBlob(cacheRepo, blob.descriptor.digest)) === blob.descriptor.size,
        10_000,
        50,
      );
    }
    // With every blob committed, the manifest is promoted into distribution's manifest store
    // (what its garbage collection and eviction count as in use).
    await eventually(
      "the manifest in storage's manifest store",
      async () => {
        const stored = await client.getManifest(cacheRepo, image.digest).catch(() => undefined);
        return stored?.digest === image.digest;
      },
      10_000,
      50,
    );
    const misses = await metricValue(rig.front, "stowage_cache_misses_total", { kind: "blob" });
    for (const blob of image.image.blobs) {
      const again = await fetchFrom(rig.front.url, `${prefix}/blobs/${blob.descriptor.digest}`);
      expect(sha256(again.body)).toBe(blob.descriptor.digest);
    }
    const manifestAgain = await fetchFrom(rig.front.url, `${prefix}/manifests/${image.digest}`);
    expect(sha256(manifestAgain.body)).toBe(image.digest);
    expect(upstreamBlobGets(rig.proxy).length).toBe(upstreamGetsAfterFirst);
    expect(
      rig.proxy.seen().filter((seen) => seen.method === "GET" && seen.path.includes("/manifests/")),
    ).toHaveLength(1);
    expect(await metricValue(rig.front, "stowage_cache_misses_total", { kind: "blob" })).toBe(misses);
    expect(await metricValue(rig.front, "stowage_cache_hits_total", { kind: "blob" })).toBeGreaterThanOrEqual(
      image.image.blobs.length,
    );
    expect(
      await metricValue(rig.front, "stowage_cache_served_bytes_total", { source: "storage" }),
    ).toBeGreaterThan(3 * 1024 * 1024);
  });

  it("leaves what was pulled through it to survive distribution's garbage collection", async () => {
    const repository = rig.prefix("acme/app").slice("/v2/".length);
    const config = join(rig.spoolDir, "gc.yml");
    await writeFile(
      config,
      `version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ${rig.storage.storageDir}\n`,
    );
    // --dry-run only reads: it says what it keeps (marks) and what it would delete.
    const { stdout } = await promisify(execFile)("/usr/bin/docker-registry", [
      "garbage-collect",
      "--dry-run",
      config,
    ]);
    expect(stdout).toContain(`${repository}: marking manifest ${image.digest}`);
    for (const blob of image.image.blobs) {
      expect(stdout).toContain(`${repository}: marking blob ${blob.descriptor.digest}`);
    }
  });

  it("accepts the plain-mirror form /v2/<repository>/...?ns=<host> that containerd sends without a path", async () => {
    const layer = image.image.layers[1].descriptor;
    const got = await fetchFrom(rig.front.url, `/v2/acme/app/blobs/${layer.digest}?ns=${rig.proxy.host}`);
    expect(got.status).toBe(200);
    expect(sha256(got.body)).toBe(layer.digest);
    const overridePath = await fetchFrom(
      rig.front.url,
      `${rig.prefix("acme/app")}/manifests/${image.digest}?ns=${rig.proxy.host}`,
    );
    expect(overridePath.status).toBe(200);
    expect(sha256(overridePath.body)).toBe(image.digest);
  });

  it("answers Range requests with exactly the bytes asked for, on a miss and on a hit", async () => {
    const ranged = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/ranged" },
      "v1",
      { layerSizes: [1024 * 1024] },
    );
    const layer = ranged.image.layers[0];
    const whole: Buffer[] = [];
    for await (const chunk of layer.open()) whole.push(chunk as Buffer);
    const bytes = Buffer.concat(whole);
    const path = `${rig.prefix("acme/ranged")}/blobs/${layer.descriptor.digest}`;
    for (const attempt of ["miss", "hit"]) {
      const got = await fetchFrom(rig.front.url, path, { range: "bytes=1000-1999" });
      expect(got.status, attempt).toBe(206);
      expect(got.headers["content-range"], attempt).toBe(`bytes 1000-1999/${bytes.length}`);
      expect(got.body.equals(bytes.subarray(1000, 2000)), attempt).toBe(true);
    }
  });

  it("says BLOB_UNKNOWN, MANIFEST_UNKNOWN and NAME_UNKNOWN in OCI error bodies", async () => {
    const missingBlob = await fetchFrom(
      rig.front.url,
      `${rig.prefix("acme/app")}/blobs/sha256:${"0".repeat(64)}`,
    );
    expect(missingBlob.status).toBe(404);
    expect(JSON.parse(missingBlob.body.toString())).toMatchObject({ errors: [{ code: "BLOB_UNKNOWN" }] });
    const missingTag = await fetchFrom(rig.front.url, `${rig.prefix("acme/app")}/manifests/nope`);
    expect(missingTag.status).toBe(404);
    expect(JSON.parse(missingTag.body.toString())).toMatchObject({ errors: [{ code: "MANIFEST_UNKNOWN" }] });
    const otherHost = await fetchFrom(rig.front.url, `/v2/elsewhere.example/acme/app/manifests/v1`);
    expect(otherHost.status).toBe(404);
    expect(JSON.parse(otherHost.body.toString())).toMatchObject({ errors: [{ code: "NAME_UNKNOWN" }] });
    const noHost = await fetchFrom(rig.front.url, `/v2/acme/app/manifests/v1`);
    expect(noHost.status).toBe(404);
    expect(JSON.parse(noHost.body.toString())).toMatchObject({ errors: [{ code: "NAME_UNKNOWN" }] });
  });
});

describe("stowage cache: a repository the upstream hides behind 404", () => {
  it("answers an anonymous caller 404 like the upstream does, even when storage holds the image", async () => {
    const hidden = await pushSinglePlatformImage(
      client,
      {
        registry: rig.storage.host,
        repository: rig.prefix("acme/hidden").slice("/v2/".length),
      },
      "v1",
      { layerSizes: [16 * 1024] },
    );
    const prefix = rig.prefix("acme/hidden");
    const manifest = await fetchFrom(rig.front.url, `${prefix}/manifests/${hidden.digest}`);
    expect(manifest.status).toBe(404);
    expect(manifest.body.includes(hidden.image.manifest.bytes.subarray(0, 32))).toBe(false);
    const layer = hidden.image.layers[0].descriptor;
    const blob = await fetchFrom(rig.front.url, `${prefix}/blobs/${layer.digest}`);
    expect(blob.status).toBe(404);
    expect(JSON.parse(blob.body.toString())).toMatchObject({ errors: [{ code: "BLOB_UNKNOWN" }] });
  });
});

describe("stowage cache: digests are verified before anyone gets the whole blob", () => {
  it("cuts the response short and stores nothing when the upstream's bytes do not match the digest", async () => {
    const bad = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/corrupt" },
      "v1",
      { layerSizes: [2 * 1024 * 1024] },
    );
    const layer = bad.image.layers[0].descriptor;
    const path = `${rig.prefix("acme/corrupt")}/blobs/${layer.digest}`;
    // Every attempt flips a byte (the client resumes and retries): the upstream is simply wrong.
    rig.proxy.addRule({
      match: { method: "GET", path: /acme\/corrupt\/blobs\// },
      times: 10,
      action: { kind: "flipByte", offset: 4096 },
    });
    const got = await fetchFrom(rig.front.url, path);
    // Cut short: after the headers (200 and a short body), or before them when the fetch
    // failed before this response began.
    expect([0, 200]).toContain(got.status);
    expect(got.complete).toBe(false);
    expect(got.body.length).toBeLessThan(layer.size);
    const cacheRepo = { registry: rig.storage.host, repository: rig.prefix("acme/corrupt").slice(4) };
    expect(await client.hasBlob(cacheRepo, layer.digest)).toBeUndefined();
    expect(
      await metricValue(rig.front, "stowage_cache_fetch_failures_total", { reason: "DigestMismatch" }),
    ).toBe(1);
    rig.proxy.clearRules();
    const healed = await fetchFrom(rig.front.url, path);
    expect(healed.complete).toBe(true);
    expect(sha256(healed.body)).toBe(layer.digest);
    await eventually(
      "the healed blob committed to storage",
      async () => (await client.hasBlob(cacheRepo, layer.digest)) === layer.size,
      10_000,
      50,
    );
  });
});

describe("stowage cache: storage down", () => {
  let downRig: CacheRig;
  let upstreamClient: RegistryClient;

  beforeAll(async () => {
    downRig = await startRig();
    upstreamClient = rigClient(downRig);
  });

  afterAll(async () => {
    await upstreamClient?.close();
    await downRig?.stop();
  });

  it("still serves pulls, verified, straight from the upstream while the storage registry is down", async () => {
    const pushed = await pushSinglePlatformImage(
      upstreamClient,
      { registry: downRig.upstream.host, repository: "acme/nostorage" },
      "v1",
      { layerSizes: [512 * 1024] },
    );
    await downRig.storage.stop();
    const prefix = downRig.prefix("acme/nostorage");
    const manifest = await fetchFrom(downRig.front.url, `${prefix}/manifests/v1`);
    expect(manifest.status).toBe(200);
    expect(sha256(manifest.body)).toBe(pushed.digest);
    for (const blob of pushed.image.blobs) {
      const got = await fetchFrom(downRig.front.url, `${prefix}/blobs/${blob.descriptor.digest}`);
      expect(got.status).toBe(200);
      expect(got.complete).toBe(true);
      expect(sha256(got.body)).toBe(blob.descriptor.digest);
    }
    const ready = await fetchFrom(downRig.front.healthUrl as string, "/readyz");
    expect(ready.status).toBe(503);
  });
});
