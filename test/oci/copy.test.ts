import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Copier, type CopyResult } from "../../src/oci/copy.ts";
import { parsePlatform } from "../../src/oci/platforms.ts";
import { type ImageReference, parseReference } from "../../src/oci/reference.ts";
import { RegistryClient, type RepoRef } from "../../src/oci/registry.ts";
import { type ImageIndex, MediaType } from "../../src/oci/types.ts";
import { StowageError } from "../../src/util/errors.ts";
import { settle, unsettle } from "../../src/util/settle.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import {
  ModelConfigMediaType,
  pushArtifact,
  pushMultiArchIndex,
  pushReferrer,
  pushSharedBaseImages,
  pushSinglePlatformImage,
} from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { eventually } from "../support/eventually.ts";

let source: RunningRegistry;
let target: RunningRegistry;
let secured: RunningRegistry;
let proxy: FaultProxy;
let client: RegistryClient;
let copier: Copier;

const repo = (registry: RunningRegistry | FaultProxy, repository: string): RepoRef => ({
  registry: registry.host,
  repository,
});
const ref = (registry: RunningRegistry | FaultProxy, path: string): ImageReference =>
  parseReference(`${registry.host}/${path}`);

async function rejection(promise: Promise<unknown>): Promise<StowageError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof StowageError) return err;
    throw err;
  }
  throw new Error("expected the copy to fail");
}

/** A Copier whose client also reaches `extra` (a proxy started by the test) over plain HTTP. */
function copierReaching(extra: FaultProxy): { copier: Copier; client: RegistryClient } {
  const reaching = new RegistryClient({
    insecureHosts: [source.host, target.host, proxy.host, extra.host],
    retry: { attempts: 1 },
  });
  return { copier: new Copier({ client: reaching }), client: reaching };
}

/** What `seen` was asked after its `before`-th request, as "METHOD path" lines. */
const askedSince = (seen: FaultProxy, before: number) =>
  seen
    .seen()
    .slice(before)
    .map((r) => `${r.method} ${r.path}`);

function total(result: CopyResult): number {
  return result.bytes.transferred + result.bytes.mounted + result.bytes.skipped;
}

beforeAll(async () => {
  [source, target, secured] = await Promise.all([
    startRegistry(),
    startRegistry(),
    startRegistry({ auth: "htpasswd" }),
  ]);
  proxy = await startFaultProxy(source.url);
  client = new RegistryClient({
    insecureHosts: [source.host, target.host, secured.host, proxy.host],
    retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 50 },
  });
  copier = new Copier({ client });
});

afterAll(async () => {
  await client?.close();
  await proxy?.stop();
  await Promise.all([source?.stop(), target?.stop(), secured?.stop()]);
});

describe("Copier against real registries", () => {
  it("pushes a filtered index with only the selected platform and reports both digests", async () => {
    const pushed = await pushMultiArchIndex(client, repo(source, "multi/app"), "v1", { cuda: true });
    const result = await copier.copy(ref(source, "multi/app:v1"), ref(target, "filtered/app:v1"), {
      platforms: [parsePlatform("linux/amd64")],
    });
    expect(result.sourceDigest).toBe(pushed.digest);
    expect(result.targetDigest).not.toBe(pushed.digest);
    expect(result.platforms).toEqual(["linux/amd64"]);
    expect(result.mediaType).toBe(MediaType.OciIndex);

    const copied = await client.getManifest(repo(target, "filtered/app"), "v1");
    expect(copied.digest).toBe(result.targetDigest);
    const index = JSON.parse(copied.bytes.toString()) as ImageIndex;
    expect(index.manifests.map((d) => d.platform?.architecture)).toEqual(["amd64"]);
    expect(index.annotations).toEqual(JSON.parse(pushed.index.bytes.toString()).annotations);

    const [amd64, arm64] = pushed.images;
    for (const blob of amd64.blobs) {
      expect(await client.hasBlob(repo(target, "filtered/app"), blob.descriptor.digest)).toBe(
        blob.descriptor.size,
      );
    }
    for (const blob of arm64.layers) {
      expect(await client.hasBlob(repo(target, "filtered/app"), blob.descriptor.digest)).toBeUndefined();
    }
    expect(result.blobs.transferred).toBe(amd64.blobs.length);
  });

  it("keeps the upstream index byte-exact with allPlatforms, whatever the platform filter says", async () => {
    const pushed = await pushMultiArchIndex(client, repo(source, "multi/all"), "v1");
    const result = await copier.copy(ref(source, "multi/all:v1"), ref(target, "all/app:v1"), {
      allPlatforms: true,
      platforms: [parsePlatform("linux/arm64")],
    });
    expect(result.targetDigest).toBe(pushed.digest);
    expect(result.sourceDigest).toBe(pushed.digest);
    expect(result.platforms).toEqual(["linux/amd64", "linux/arm64/v8"]);
    const copied = await client.getManifest(repo(target, "all/app"), "v1");
    expect(copied.bytes.equals(pushed.index.bytes)).toBe(true);
    for (const image of pushed.images) {
      const child = await client.getManifest(repo(target, "all/app"), image.manifest.digest);
      expect(child.bytes.equals(image.manifest.bytes)).toBe(true);
    }
  });

  it("copies Docker schema2 manifests and manifest lists byte-exact", async () => {
    const single = await pushSinglePlatformImage(client, repo(source, "docker/single"), "v2", {
      format: "docker",
      layers: [{ seed: "docker-single", size: 50_000, format: "tar+gzip" }],
    });
    const list = await pushMultiArchIndex(client, repo(source, "docker/list"), "v2", { format: "docker" });

    const singleResult = await copier.copy(ref(source, "docker/single:v2"), ref(target, "docker/single:v2"));
    expect(singleResult.targetDigest).toBe(single.digest);
    expect(singleResult.mediaType).toBe(MediaType.DockerManifest);
    expect(singleResult.platforms).toEqual(["linux/amd64"]);
    const copiedSingle = await client.getManifest(repo(target, "docker/single"), "v2");
    expect(copiedSingle.bytes.equals(single.image.manifest.bytes)).toBe(true);

    const listResult = await copier.copy(ref(source, "docker/list:v2"), ref(target, "docker/list:v2"));
    expect(listResult.targetDigest).toBe(list.digest);
    expect(listResult.mediaType).toBe(MediaType.DockerManifestList);
    const copiedList = await client.getManifest(repo(target, "docker/list"), "v2");
    expect(copiedList.bytes.equals(list.index.bytes)).toBe(true);
  });

  it("copies an OCI image byte-exact and pushes by digest when the target has no tag", async () => {
    const pushed = await pushSinglePlatformImage(client, repo(source, "oci/single"), "1.0");
    const target_ = parseReference(`${target.host}/oci/by-digest@${pushed.digest}`);
    const result = await copier.copy(ref(source, "oci/single:1.0"), { ...target_, tag: undefined });
    expect(result.targetDigest).toBe(pushed.digest);
    const copied = await client.getManifest(repo(target, "oci/by-digest"), pushed.digest);
    expect(copied.bytes.equals(pushed.image.manifest.bytes)).toBe(true);
    expect(await client.headManifest(repo(target, "oci/by-digest"), "1.0")).toBeUndefined();
    expect(await client.headManifest(repo(target, "oci/by-digest"), "latest")).toBeUndefined();
  });

  it("reads every blob of a single-platform image from the source once, the config included", async () => {
    const pushed = await pushSinglePlatformImage(client, repo(source, "oci/read-once"), "1.0");
    await copier.copy(ref(source, "oci/read-once:1.0"), ref(target, "oci/read-once:1.0"));
    const blobGets = (await source.requests()).filter(
      (r) => r.method === "GET" && r.path.startsWith("/v2/oci/read-once/blobs/"),
    );
    const perDigest = new Map<string, number>();
    for (const r of blobGets) perDigest.set(r.path, (perDigest.get(r.path) ?? 0) + 1);
    expect(perDigest.size).toBe(pushed.image.blobs.length);
    expect([...perDigest.values()].every((n) => n === 1)).toBe(true);
    const copied = await client.getManifest(repo(target, "oci/read-once"), "1.0");
    expect(copied.digest).toBe(pushed.digest);
  });

  it("asks the target for a named tag while the source's manifest is still coming, and for blobs while the config is", async () => {
    await pushSinglePlatformImage(client, repo(source, "oci/overlap"), "1.0");
    const targetProxy = await startFaultProxy(target.url);
    const reaching = copierReaching(targetProxy);
    // The source's answers are held until the target's HEADs arrive: done one after the other,
    // the HEADs would wait for the held answers and never come (the checks time out).
    const manifest = Promise.withResolvers<void>();
    const config = Promise.withResolvers<void>();
    try {
      proxy.addRule({
        match: { method: "GET", path: /\/oci\/overlap\/manifests\// },
        action: { kind: "hold", until: manifest.promise },
      });
      proxy.addRule({
        match: { method: "GET", path: /\/oci\/overlap\/blobs\// },
        action: { kind: "hold", until: config.promise },
      });
      const planning = settle(
        reaching.copier.plan(ref(proxy, "oci/overlap:1.0"), ref(targetProxy, "oci/overlap:1.0")),
      );
      await eventually(
        "the target's manifest HEAD while the source's manifest is held",
        () => targetProxy.seen().some((r) => r.method === "HEAD" && r.path.includes("/manifests/1.0")),
        10_000,
        20,
      );
      manifest.resolve();
      await eventually(
        "the target's blob HEADs while the source's config is held",
        () => targetProxy.seen().some((r) => r.method === "HEAD" && r.path.includes("/blobs/")),
        10_000,
        20,
      );
      config.resolve();
      const plan = unsettle(await planning);
      expect(plan.platforms).toEqual(["linux/amd64"]);
      expect(plan.upToDate).toBe(false);
      expect(plan.present.size).toBe(0);
      expect(plan.fetched.size).toBe(1);
    } finally {
      manifest.resolve();
      config.resolve();
      proxy.clearRules();
      await reaching.client.close();
      await targetProxy.stop();
    }
  });

  it("reports the source's failure, not the target's, when both fail while planning", async () => {
    const targetProxy = await startFaultProxy(target.url);
    const reaching = copierReaching(targetProxy);
    // The source's 404 is held until the target's 403 is in: the report must not follow the
    // order the answers arrive in.
    const held = Promise.withResolvers<void>();
    try {
      targetProxy.addRule({
        times: Number.POSITIVE_INFINITY,
        match: { method: "HEAD" },
        action: { kind: "status", status: 403 },
      });
      proxy.addRule({
        match: { method: "GET", path: /\/multi\/app\/manifests\/no-such-tag/ },
        action: { kind: "hold", until: held.promise },
      });
      const copying = rejection(
        reaching.copier.copy(ref(proxy, "multi/app:no-such-tag"), ref(targetProxy, "x/y:z")),
      );
      await eventually(
        "the target's refused HEAD while the source's answer is held",
        () => targetProxy.seen().some((r) => r.method === "HEAD" && r.status === 403),
        10_000,
        20,
      );
      held.resolve();
      const error = await copying;
      expect(error.reason).toBe("ImageNotFound");
    } finally {
      held.resolve();
      proxy.clearRules();
      await reaching.client.close();
      await targetProxy.stop();
    }
  });

  it("copies an artifact with a non-image config media type and arbitrary layer media types", async () => {
    const pushed = await pushArtifact(client, repo(source, "models/tiny"), "weights");
    const result = await copier.copy(ref(source, "models/tiny:weights"), ref(target, "models/tiny:weights"));
    expect(result.targetDigest).toBe(pushed.digest);
    expect(result.platforms).toEqual([]);
    const copied = await client.getManifest(repo(target, "models/tiny"), "weights");
    expect(copied.bytes.equals(pushed.image.manifest.bytes)).toBe(true);
    expect(JSON.parse(copied.bytes.toString()).config.mediaType).toBe(ModelConfigMediaType);
    for (const blob of pushed.image.blobs) {
      expect(await client.hasBlob(repo(target, "models/tiny"), blob.descriptor.digest)).toBe(
        blob.descriptor.size,
      );
    }
  });

  it("transfers nothing when re-run on an image the target already holds", async () => {
    await pushMultiArchIndex(client, repo(source, "resync/app"), "v1", { layerSizes: [300_000, 20_000] });
    const first = await copier.copy(ref(source, "resync/app:v1"), ref(target, "resync/app:v1"));
    expect(first.blobs.transferred).toBeGreaterThan(0);
    const writesBefore = (await target.requests()).filter(
      (r) => r.method !== "GET" && r.method !== "HEAD",
    ).length;

    const again = await copier.copy(ref(source, "resync/app:v1"), ref(target, "resync/app:v1"));
    expect(again.blobs).toEqual({ transferred: 0, mounted: 0, skipped: first.blobs.transferred });
    expect(again.bytes.transferred).toBe(0);
    expect(again.bytes.skipped).toBe(total(first));
    expect(again.manifests.pushed).toBe(0);
    expect(again.targetDigest).toBe(first.targetDigest);
    const writesAfter = (await target.requests()).filter(
      (r) => r.method !== "GET" && r.method !== "HEAD",
    ).length;
    expect(writesAfter).toBe(writesBefore);
  });

  it("re-syncs an unchanged image asking the source one HEAD, its manifests read from the target", async () => {
    await pushMultiArchIndex(client, repo(source, "headonly/app"), "v1", { layerSizes: [50_000] });
    const first = await copier.copy(ref(proxy, "headonly/app:v1"), ref(target, "headonly/app:v1"));
    expect(first.blobs.transferred).toBeGreaterThan(0);
    const before = proxy.seen().length;

    const again = await copier.copy(ref(proxy, "headonly/app:v1"), ref(target, "headonly/app:v1"));
    // A manifest GET is what registries such as Docker Hub count as a pull.
    expect(askedSince(proxy, before)).toEqual(["HEAD /v2/headonly/app/manifests/v1"]);
    const { durationMs: _a, ...firstResult } = first;
    const { durationMs: _b, ...againResult } = again;
    expect(againResult).toEqual({
      ...firstResult,
      bytes: { transferred: 0, mounted: 0, skipped: total(first) },
      blobs: { transferred: 0, mounted: 0, skipped: first.blobs.transferred },
      manifests: { pushed: 0, skipped: first.manifests.pushed },
    });
  });

  it("reads the source's manifest when the source's HEAD does not name a digest", async () => {
    await pushSinglePlatformImage(client, repo(source, "headonly/nodigest"), "v1");
    const first = await copier.copy(ref(proxy, "headonly/nodigest:v1"), ref(target, "headonly/nodigest:v1"));
    const before = proxy.seen().length;
    proxy.addRule({
      match: { method: "HEAD", path: /\/headonly\/nodigest\/manifests\/v1$/ },
      times: 1,
      action: { kind: "status", status: 200, body: "" },
    });
    try {
      const again = await copier.copy(
        ref(proxy, "headonly/nodigest:v1"),
        ref(target, "headonly/nodigest:v1"),
      );
      expect(again.targetDigest).toBe(first.targetDigest);
      expect(again.bytes.transferred).toBe(0);
    } finally {
      proxy.clearRules();
    }
    expect(askedSince(proxy, before)).toEqual([
      "HEAD /v2/headonly/nodigest/manifests/v1",
      "GET /v2/headonly/nodigest/manifests/v1",
    ]);
  });

  it("reads the source's manifest when the target's copy does not hash to its digest", async () => {
    const targetProxy = await startFaultProxy(target.url);
    const reaching = copierReaching(targetProxy);
    try {
      const pushed = await pushSinglePlatformImage(client, repo(source, "headonly/corrupt"), "v1");
      await reaching.copier.copy(ref(proxy, "headonly/corrupt:v1"), ref(targetProxy, "headonly/corrupt:v1"));
      const before = proxy.seen().length;
      targetProxy.addRule({
        match: { method: "GET", path: new RegExp(`/headonly/corrupt/manifests/${pushed.digest}$`) },
        times: 1,
        action: { kind: "flipByte", offset: 10 },
      });
      const again = await reaching.copier.copy(
        ref(proxy, "headonly/corrupt:v1"),
        ref(targetProxy, "headonly/corrupt:v1"),
      );
      expect(again.targetDigest).toBe(pushed.digest);
      expect(again.bytes.transferred).toBe(0);
      expect(targetProxy.seen().some((r) => r.fault === "flipByte")).toBe(true);
      expect(askedSince(proxy, before)).toEqual([
        "HEAD /v2/headonly/corrupt/manifests/v1",
        "GET /v2/headonly/corrupt/manifests/v1",
      ]);
    } finally {
      await reaching.client.close();
      await targetProxy.stop();
    }
  });

  it("skips blobs the target repository already has and copies only the rest", async () => {
    const v1 = await pushSinglePlatformImage(client, repo(source, "partial/app"), "v1", {
      layers: [
        { seed: "partial/base", size: 200_000 },
        { seed: "partial/v1", size: 10_000 },
      ],
    });
    await pushSinglePlatformImage(client, repo(source, "partial/app"), "v2", {
      layers: [
        { seed: "partial/base", size: 200_000 },
        { seed: "partial/v2", size: 10_000 },
      ],
    });
    await copier.copy(ref(source, "partial/app:v1"), ref(target, "partial/app:v1"));
    const v2 = await copier.copy(ref(source, "partial/app:v2"), ref(target, "partial/app:v2"));
    expect(v2.blobs.skipped).toBe(1);
    expect(v2.bytes.skipped).toBe(v1.image.layers[0].descriptor.size);
    expect(v2.blobs.transferred).toBe(2); // its own config and top layer
  });

  it("transfers a blob shared by two images once and mounts it into the second repository", async () => {
    const images = await pushSharedBaseImages(client, source.host, {
      prefix: "shared/app",
      count: 2,
      baseSize: 1_000_000,
    });
    const baseDigest = images[0].image.layers[0].descriptor.digest;
    const results = await copier.copyMany([
      { source: ref(source, "shared/app-0:v1"), target: ref(target, "copied/app-0:v1") },
      { source: ref(source, "shared/app-1:v1"), target: ref(target, "copied/app-1:v1") },
    ]);
    expect(results[0].blobs).toEqual({ transferred: 3, mounted: 0, skipped: 0 });
    expect(results[1].blobs).toEqual({ transferred: 2, mounted: 1, skipped: 0 });
    expect(results[1].bytes.mounted).toBe(images[0].image.layers[0].descriptor.size);
    expect(await client.hasBlob(repo(target, "copied/app-1"), baseDigest)).toBeGreaterThan(0);

    const targetLog = (await target.requests()).map((r) => ({ ...r, path: decodeURIComponent(r.path) }));
    const mount = targetLog.find((r) => r.method === "POST" && r.path.includes(`mount=${baseDigest}`));
    expect(mount?.path).toContain("/v2/copied/app-1/blobs/uploads/");
    expect(mount?.path).toContain("from=copied/app-0");
    expect(mount?.status).toBe(201);
    const baseUploads = targetLog.filter(
      (r) => r.method === "PUT" && r.path.includes(`digest=${baseDigest}`),
    );
    expect(baseUploads).toHaveLength(1);
    const baseDownloads = (await source.requests()).filter(
      (r) => r.method === "GET" && r.path.endsWith(`/blobs/${baseDigest}`),
    );
    expect(baseDownloads).toHaveLength(1);
  });

  it("mounts a blob that an earlier copy by the same Copier put into another repository", async () => {
    const images = await pushSharedBaseImages(client, source.host, {
      prefix: "later/app",
      count: 2,
      baseSize: 300_000,
    });
    const base = images[0].image.layers[0].descriptor;
    const first = await copier.copy(ref(source, "later/app-0:v1"), ref(target, "later-copy/app-0:v1"));
    const second = await copier.copy(ref(source, "later/app-1:v1"), ref(target, "later-copy/app-1:v1"));
    expect(first.blobs.mounted).toBe(0);
    expect(second.blobs.mounted).toBe(1);
    expect(second.bytes.mounted).toBe(base.size);
  });

  it("copies referrers with their blobs and lists them under the fallback tag", async () => {
    const image = await pushSinglePlatformImage(client, repo(source, "signed/app"), "v1");
    const signature = await pushReferrer(client, repo(source, "signed/app"), image.image.descriptor);
    const result = await copier.copy(ref(source, "signed/app:v1"), ref(target, "signed/app:v1"), {
      referrers: true,
    });
    expect(result.referrers).toEqual({ copied: 1 });
    const copiedSignature = await client.getManifest(repo(target, "signed/app"), signature.digest);
    expect(copiedSignature.bytes.equals(signature.image.manifest.bytes)).toBe(true);
    for (const blob of signature.image.blobs) {
      expect(await client.hasBlob(repo(target, "signed/app"), blob.descriptor.digest)).toBe(
        blob.descriptor.size,
      );
    }
    const listed = await client.referrers(repo(target, "signed/app"), image.digest);
    expect(listed.map((d) => d.digest)).toEqual([signature.digest]);

    const again = await copier.copy(ref(source, "signed/app:v1"), ref(target, "signed/app:v1"), {
      referrers: true,
    });
    expect(again.referrers).toEqual({ copied: 0 });
  });

  it("fails with DigestMismatch on a flipped byte and leaves neither the blob nor the manifest in the target", async () => {
    const pushed = await pushSinglePlatformImage(client, repo(source, "corrupt/app"), "v1", {
      layers: [{ seed: "corrupt/layer", size: 400_000 }],
    });
    const layer = pushed.image.layers[0].descriptor.digest;
    proxy.addRule({
      match: { method: "GET", path: new RegExp(`/blobs/${layer}$`) },
      times: 100,
      action: { kind: "flipByte", offset: 300_000 },
    });
    try {
      const error = await rejection(copier.copy(ref(proxy, "corrupt/app:v1"), ref(target, "corrupt/app:v1")));
      expect(error.reason).toBe("DigestMismatch");
    } finally {
      proxy.clearRules();
    }
    expect(proxy.seen().some((r) => r.fault === "flipByte")).toBe(true);
    expect(await client.hasBlob(repo(target, "corrupt/app"), layer)).toBeUndefined();
    expect(await client.headManifest(repo(target, "corrupt/app"), "v1")).toBeUndefined();
  });

  it("resumes a source download that drops mid-blob and still copies the image byte-exact", async () => {
    const pushed = await pushSinglePlatformImage(client, repo(source, "flaky/app"), "v1", {
      layers: [{ seed: "flaky/layer", size: 600_000 }],
    });
    const layer = pushed.image.layers[0].descriptor;
    proxy.addRule({
      match: { method: "GET", path: new RegExp(`/blobs/${layer.digest}$`) },
      times: 1,
      action: { kind: "dropAfterBytes", bytes: 250_000 },
    });
    try {
      const result = await copier.copy(ref(proxy, "flaky/app:v1"), ref(target, "flaky/app:v1"));
      expect(result.targetDigest).toBe(pushed.digest);
      expect(result.bytes.transferred).toBe(
        pushed.image.blobs.reduce((sum, b) => sum + b.descriptor.size, 0),
      );
    } finally {
      proxy.clearRules();
    }
    const layerGets = proxy
      .seen()
      .filter((r) => r.method === "GET" && r.path.endsWith(`/blobs/${layer.digest}`));
    expect(layerGets[0].fault).toBe("dropAfterBytes");
    expect(layerGets[1].range).toMatch(/^bytes=\d+-$/);
    expect(await client.hasBlob(repo(target, "flaky/app"), layer.digest)).toBe(layer.size);
    const copied = await client.getManifest(repo(target, "flaky/app"), "v1");
    expect(copied.bytes.equals(pushed.image.manifest.bytes)).toBe(true);
  });

  it("fails with PlatformNotFound when no platform of the index matches, naming what it has", async () => {
    await pushMultiArchIndex(client, repo(source, "multi/none"), "v1");
    const error = await rejection(
      copier.copy(ref(source, "multi/none:v1"), ref(target, "none/app:v1"), {
        platforms: [parsePlatform("linux/s390x")],
      }),
    );
    expect(error.reason).toBe("PlatformNotFound");
    expect(error.message).toContain("linux/arm64/v8");
    expect(await client.headManifest(repo(target, "none/app"), "v1")).toBeUndefined();
  });

  it("fails with PlatformNotFound when a single-platform image does not match the filter", async () => {
    await pushSinglePlatformImage(client, repo(source, "single/amd64"), "v1");
    const error = await rejection(
      copier.copy(ref(source, "single/amd64:v1"), ref(target, "single/amd64:v1"), {
        platforms: [parsePlatform("linux/arm64")],
      }),
    );
    expect(error.reason).toBe("PlatformNotFound");
  });

  it("fails with ImageNotFound for an unknown tag", async () => {
    const error = await rejection(copier.copy(ref(source, "multi/app:no-such-tag"), ref(target, "x/y:z")));
    expect(error.reason).toBe("ImageNotFound");
  });

  it("fails with AuthFailed when the source credentials are wrong", async () => {
    const wrong = new RegistryClient({
      insecureHosts: [secured.host, target.host],
      credentials: (registry) =>
        registry === secured.host ? { username: "stowage", password: "wrong" } : undefined,
      retry: { attempts: 1 },
    });
    try {
      const error = await rejection(
        new Copier({ client: wrong }).copy(ref(secured, "private/app:v1"), ref(target, "private/app:v1")),
      );
      expect(error.reason).toBe("AuthFailed");
      expect(error.message).toContain(secured.host);
    } finally {
      await wrong.close();
    }
  });
});
