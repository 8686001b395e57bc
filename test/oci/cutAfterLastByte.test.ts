/**
 * Issue 16: a connection cut after the last byte of a blob body (a chunked response whose end
 * marker never came) must not fail the download. Every byte arrived, so the body is verified
 * against its digest and used; asking for the rest (`Range: bytes=<end+1>-`) gets a 416.
 * Against real distribution, through the fault proxy.
 */
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Copier } from "../../src/oci/copy.ts";
import { digestOf, RegistryClient, type RepoRef } from "../../src/oci/registry.ts";
import { type Descriptor, MediaType } from "../../src/oci/types.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";

const KiB = 1024;
const rangeBytes = 256 * KiB;
const retry = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };

let source: RunningRegistry;
let target: RunningRegistry;
let proxy: FaultProxy;
let direct: RegistryClient;

beforeAll(async () => {
  [source, target] = await Promise.all([startRegistry(), startRegistry()]);
  proxy = await startFaultProxy(source.url);
  direct = new RegistryClient({ insecureHosts: [source.host] });
});

afterAll(async () => {
  await direct?.close();
  await proxy?.stop();
  await Promise.all([source?.stop(), target?.stop()]);
});

function client(ranges: boolean): RegistryClient {
  return new RegistryClient({
    insecureHosts: [proxy.host, target.host],
    retry,
    // Ranges from the first byte: these cases are about ranges, not the stream a blob starts as.
    rangedDownload: ranges
      ? { minBlobBytes: 512 * KiB, rangeBytes, concurrency: 2, streamFirst: false }
      : false,
  });
}

async function seedBlob(
  repository: string,
  size: number,
): Promise<{ descriptor: Descriptor; bytes: Buffer }> {
  const bytes = randomBytes(size);
  const descriptor = { mediaType: MediaType.OciLayerTar, digest: digestOf(bytes), size };
  await direct.pushBlob({ registry: source.host, repository }, descriptor, () => Readable.from([bytes]));
  return { descriptor, bytes };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function blobGets(since: number) {
  return proxy
    .seen()
    .slice(since)
    .filter((r) => r.method === "GET" && /\/blobs\/sha256:/.test(r.path));
}

const viaProxy = (repository: string): RepoRef => ({ registry: proxy.host, repository });

describe("a connection cut after the last byte of a blob", () => {
  it("keeps every range whose connection was cut after its last byte, without asking past its end", async () => {
    const size = 4 * rangeBytes;
    const { descriptor, bytes } = await seedBlob("cut/ranged", size);
    // Every range is cut right after its last byte, the last range (ending at the blob's end) too.
    proxy.addRule({
      match: { path: /\/blobs\/sha256:/ },
      action: { kind: "dropAfterBytes", bytes: rangeBytes, unframed: true },
      times: 4,
    });
    const ranged = client(true);
    try {
      const since = proxy.seen().length;
      expect((await readAll(ranged.getBlob(viaProxy("cut/ranged"), descriptor))).equals(bytes)).toBe(true);
      const gets = blobGets(since);
      expect(gets.map((r) => r.fault)).toEqual(Array(4).fill("dropAfterBytes"));
      expect(gets.map((r) => r.status)).toEqual(Array(4).fill(206));
    } finally {
      proxy.clearRules();
      await ranged.close();
    }
  });

  it("still fails with DigestMismatch when a wrong byte came in a blob whose other ranges were cut after their last byte", async () => {
    const size = 4 * rangeBytes;
    const { descriptor } = await seedBlob("cut/corrupt", size);
    proxy.addRule({ match: { path: /\/blobs\/sha256:/ }, action: { kind: "flipByte", offset: 7 } });
    proxy.addRule({
      match: { path: /\/blobs\/sha256:/ },
      action: { kind: "dropAfterBytes", bytes: rangeBytes, unframed: true },
      times: 3,
    });
    const ranged = client(true);
    try {
      await expect(readAll(ranged.getBlob(viaProxy("cut/corrupt"), descriptor))).rejects.toMatchObject({
        reason: "DigestMismatch",
      });
    } finally {
      proxy.clearRules();
      await ranged.close();
    }
  });

  it("keeps a whole single-stream body cut after its last byte, with no second request", async () => {
    const size = 300 * KiB;
    const { descriptor, bytes } = await seedBlob("cut/single", size);
    proxy.addRule({
      match: { path: /\/blobs\/sha256:/ },
      action: { kind: "dropAfterBytes", bytes: size, unframed: true },
    });
    const single = client(false);
    try {
      const since = proxy.seen().length;
      expect((await readAll(single.getBlob(viaProxy("cut/single"), descriptor))).equals(bytes)).toBe(true);
      expect(blobGets(since).map((r) => [r.fault, r.range])).toEqual([["dropAfterBytes", undefined]]);
    } finally {
      proxy.clearRules();
      await single.close();
    }
  });

  it("mirrors an image whose layer download is cut after the last byte of every range", async () => {
    const image = await pushSinglePlatformImage(
      direct,
      { registry: source.host, repository: "cut/image" },
      "v1",
      {
        layers: [{ seed: "cut/image/0", size: 3 * rangeBytes }],
      },
    );
    const layer = image.image.layers[0].descriptor;
    proxy.addRule({
      match: { path: new RegExp(`/blobs/${layer.digest}`) },
      action: { kind: "dropAfterBytes", bytes: rangeBytes, unframed: true },
      times: 3,
    });
    const copying = client(true);
    try {
      const since = proxy.seen().length;
      const result = await new Copier({ client: copying }).copy(
        { registry: proxy.host, repository: "cut/image", tag: "v1" },
        { registry: target.host, repository: "cut/image", tag: "v1" },
      );
      expect(result.bytes.transferred).toBe(image.image.blobs.reduce((sum, b) => sum + b.descriptor.size, 0));
      // One GET per range (the first three cut after their last byte), none asking again.
      const layerGets = blobGets(since).filter((r) => r.path.includes(layer.digest));
      expect(layerGets.map((r) => r.status)).toEqual(Array(Math.ceil(layer.size / rangeBytes)).fill(206));
      expect(layerGets.filter((r) => r.fault === "dropAfterBytes")).toHaveLength(3);
      const checker = new RegistryClient({ insecureHosts: [target.host] });
      try {
        const copied = await readAll(
          checker.getBlob({ registry: target.host, repository: "cut/image" }, layer),
        );
        expect(copied.length).toBe(layer.size);
      } finally {
        await checker.close();
      }
    } finally {
      proxy.clearRules();
      await copying.close();
    }
  });
});
