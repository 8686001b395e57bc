/**
 * The hit path read from the storage registry's own files (`--storage-root`): the same bytes,
 * statuses and headers distribution gives for the blob, whole and by Range, without asking
 * distribution for it; only blobs linked into the asked repository. Real distribution
 * registries (their filesystem layout is the one read), the front in-process.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlobFiles, parseRange } from "../../src/cache/blobFiles.ts";
import { startCache } from "../../src/cache/command.ts";
import { cacheRepository } from "../../src/oci/reference.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { eventually } from "../support/eventually.ts";
import { type CacheRig, fetchFrom, frontConfig, metricValue, rigClient, startRig } from "./support.ts";

let rig: CacheRig;
let client: RegistryClient;

beforeAll(async () => {
  rig = await startRig({ readStorageFiles: true });
  client = rigClient(rig);
});

afterAll(async () => {
  await client?.close();
  await rig?.stop();
});

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Blob GETs and HEADs storage's access log shows for `digest`. */
async function storageReadsOf(digest: string): Promise<number> {
  return (await rig.storage.requests()).filter(
    (line) => (line.method === "GET" || line.method === "HEAD") && line.path.endsWith(`/blobs/${digest}`),
  ).length;
}

describe("stowage cache: hits read from the registry's files", () => {
  it("serves a stored blob from the files with distribution's bytes, status and headers, whole and by Range", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/filed" },
      "v1",
      // Larger than two send buffers, and not a multiple of them.
      { layerSizes: [3 * 1024 * 1024 + 12_345] },
    );
    const layer = pushed.image.layers[0].descriptor;
    const path = `${rig.prefix("acme/filed")}/blobs/${layer.digest}`;
    const repository = cacheRepository({ registry: rig.proxy.host, repository: "acme/filed" });
    const direct = `${rig.storage.url}/v2/${repository}/blobs/${layer.digest}`;
    const miss = await fetchFrom(rig.front.url, path);
    expect(miss.status).toBe(200);
    await eventually(
      "the blob committed in storage",
      async () =>
        (await client.hasBlob({ registry: rig.storage.host, repository }, layer.digest)) === layer.size,
      10_000,
      50,
    );
    const readsBefore = await storageReadsOf(layer.digest);
    const hitsBefore = await metricValue(rig.front, "stowage_cache_hits_total", { kind: "blob" });

    const whole = await fetchFrom(rig.front.url, path);
    expect(whole.status).toBe(200);
    expect(whole.complete).toBe(true);
    expect(sha256(whole.body)).toBe(layer.digest);
    expect(whole.headers["content-length"]).toBe(String(layer.size));
    expect(whole.headers["docker-content-digest"]).toBe(layer.digest);
    const head = await fetchFrom(rig.front.url, path, {}, "HEAD");
    expect(head.status).toBe(200);
    expect(head.headers["content-length"]).toBe(String(layer.size));

    for (const range of [
      "bytes=1000-1999",
      "bytes=-100",
      `bytes=${layer.size - 10}-`,
      "bytes=5-99999999999",
    ]) {
      const fromFront = await fetchFrom(rig.front.url, path, { range });
      const fromDistribution = await fetchFrom(direct, "", { range });
      expect(fromFront.status, range).toBe(206);
      expect(fromFront.status, range).toBe(fromDistribution.status);
      expect(fromFront.headers["content-range"], range).toBe(fromDistribution.headers["content-range"]);
      expect(fromFront.body.equals(fromDistribution.body), range).toBe(true);
    }
    const beyond = await fetchFrom(rig.front.url, path, { range: `bytes=${layer.size}-` });
    expect(beyond.status).toBe(416);
    expect(beyond.headers["content-range"]).toBe(`bytes */${layer.size}`);

    // None of it asked distribution: the hits came from the files (the direct GETs above are
    // the test's own, one per Range).
    expect((await storageReadsOf(layer.digest)) - readsBefore).toBe(4);
    expect((await metricValue(rig.front, "stowage_cache_hits_total", { kind: "blob" })) - hitsBefore).toBe(7);
  });

  it("reads a blob only through a repository it is linked into, as distribution does", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.storage.host, repository: "127.0.0.1_1/team-a/private" },
      "v1",
      { layerSizes: [64 * 1024] },
    );
    const layer = pushed.image.layers[0].descriptor;
    const files = new BlobFiles(rig.storage.storageDir);
    const linked = await files.open("127.0.0.1_1/team-a/private", layer.digest);
    expect(linked?.size).toBe(layer.size);
    await linked?.handle.close();
    // Same registry, same blob file on disk, another repository: not served from there.
    expect(await files.open("127.0.0.1_1/team-b/public", layer.digest)).toBeUndefined();
    expect(await files.open("127.0.0.1_1/team-a/../team-a/private", layer.digest)).toBeUndefined();
    expect(await files.open("127.0.0.1_1/team-a/private", "sha256:not-a-digest")).toBeUndefined();
  });
});

describe("stowage cache --storage-root", () => {
  it("refuses to start on a storage root that is not a directory, saying what to give", async () => {
    const config = frontConfig(rig.storage.url, rig.proxy.host, rig.spoolDir);
    const missing = join(rig.spoolDir, "no-such-registry-root");
    await expect(startCache({ ...config, storageRoot: missing })).rejects.toMatchObject({
      reason: "InvalidArgument",
      message: expect.stringContaining("storage.filesystem.rootdirectory"),
    });
  });
});

describe("parseRange", () => {
  it("reads the single-range forms and leaves the rest to distribution", () => {
    expect(parseRange(undefined, 100)).toEqual({ kind: "whole" });
    expect(parseRange("bytes=10-19", 100)).toEqual({ kind: "partial", start: 10, end: 19 });
    expect(parseRange("bytes=90-", 100)).toEqual({ kind: "partial", start: 90, end: 99 });
    expect(parseRange("bytes=-10", 100)).toEqual({ kind: "partial", start: 90, end: 99 });
    expect(parseRange("bytes=-1000", 100)).toEqual({ kind: "partial", start: 0, end: 99 });
    expect(parseRange("bytes=50-5000", 100)).toEqual({ kind: "partial", start: 50, end: 99 });
    expect(parseRange("bytes=100-", 100)).toEqual({ kind: "unsatisfiable" });
    expect(parseRange("bytes=-0", 100)).toEqual({ kind: "unsatisfiable" });
    expect(parseRange("bytes=0-1,5-6", 100)).toEqual({ kind: "unsupported" });
    expect(parseRange("items=0-1", 100)).toEqual({ kind: "unsupported" });
    expect(parseRange("bytes=20-10", 100)).toEqual({ kind: "unsupported" });
  });
});
