import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rangedChunks } from "../../src/oci/rangedDownload.ts";
import { digestOf, RegistryClient, type RepoRef } from "../../src/oci/registry.ts";
import { type Descriptor, MediaType } from "../../src/oci/types.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type VirtualTime, virtualTime } from "../support/virtualTime.ts";

const KiB = 1024;
const rangeBytes = 256 * KiB;
const concurrency = 3;

let source: RunningRegistry;
let proxy: FaultProxy;
let objectStore: FaultProxy;
let direct: RegistryClient;
let ranged: RegistryClient;

beforeAll(async () => {
  source = await startRegistry();
  [proxy, objectStore] = await Promise.all([startFaultProxy(source.url), startFaultProxy(source.url)]);
  direct = new RegistryClient({ insecureHosts: [source.host] });
  ranged = new RegistryClient({
    insecureHosts: [proxy.host, objectStore.host],
    retry: { attempts: 4, baseDelayMs: 10, maxDelayMs: 50 },
    // Ranges from the first byte (rangedStream.test.ts covers the stream a blob starts as).
    rangedDownload: { minBlobBytes: 512 * KiB, rangeBytes, concurrency, streamFirst: false },
  });
});

afterAll(async () => {
  await Promise.all([direct?.close(), ranged?.close()]);
  await Promise.all([proxy?.stop(), objectStore?.stop()]);
  await source?.stop();
});

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

function blobGets(from: FaultProxy, since: number) {
  return from
    .seen()
    .slice(since)
    .filter((r) => r.method === "GET" && /\/blobs\/sha256:/.test(r.path));
}

/** The inclusive byte ranges a blob of `size` splits into. */
function expectedRanges(size: number): string[] {
  const ranges: string[] = [];
  for (let start = 0; start < size; start += rangeBytes)
    ranges.push(`bytes=${start}-${Math.min(size, start + rangeBytes) - 1}`);
  return ranges;
}

const via = (front: FaultProxy, repository: string): RepoRef => ({ registry: front.host, repository });

describe("parallel ranged blob downloads", () => {
  it("downloads a large blob as one Range request per slice, reassembled in order and verified", async () => {
    const size = 3 * 1024 * KiB + 12_345;
    const { descriptor, bytes } = await seedBlob("ranged/whole", size);
    const since = proxy.seen().length;
    const received = await readAll(ranged.getBlob(via(proxy, "ranged/whole"), descriptor));
    expect(received.equals(bytes)).toBe(true);
    const ranges = blobGets(proxy, since).map((r) => r.range);
    expect([...ranges].sort()).toEqual(expectedRanges(size).sort());
    expect(blobGets(proxy, since).every((r) => r.status === 206)).toBe(true);
  });

  it("downloads small blobs as one stream without Range", async () => {
    const { descriptor, bytes } = await seedBlob("ranged/small", 300 * KiB);
    const since = proxy.seen().length;
    expect((await readAll(ranged.getBlob(via(proxy, "ranged/small"), descriptor))).equals(bytes)).toBe(true);
    expect(blobGets(proxy, since).map((r) => r.range)).toEqual([undefined]);
  });

  it("falls back to one stream when the upstream answers the first range with the whole blob", async () => {
    const size = 2 * 1024 * KiB;
    const { descriptor, bytes } = await seedBlob("ranged/norange", size);
    proxy.addRule({ match: { path: /\/blobs\/sha256:/ }, action: { kind: "ignoreRange" } });
    const since = proxy.seen().length;
    expect((await readAll(ranged.getBlob(via(proxy, "ranged/norange"), descriptor))).equals(bytes)).toBe(
      true,
    );
    const gets = blobGets(proxy, since);
    expect(gets.map((r) => [r.fault, r.status])).toEqual([
      ["ignoreRange", 200],
      [undefined, 200],
    ]);
    expect(gets[1].range).toBeUndefined();
  });

  it("resumes a dropped range from its own last byte, without fetching the other ranges again", async () => {
    const size = 2 * 1024 * KiB;
    const { descriptor, bytes } = await seedBlob("ranged/drop", size);
    // The first blob GET is range 0: cut it 100,000 bytes in.
    proxy.addRule({
      match: { path: /\/blobs\/sha256:/ },
      action: { kind: "dropAfterBytes", bytes: 100_000 },
    });
    const since = proxy.seen().length;
    expect((await readAll(ranged.getBlob(via(proxy, "ranged/drop"), descriptor))).equals(bytes)).toBe(true);
    const ranges = blobGets(proxy, since).map((r) => r.range);
    expect(ranges[0]).toBe(`bytes=0-${rangeBytes - 1}`);
    expect(ranges).toContain(`bytes=100000-${rangeBytes - 1}`);
    expect(ranges.length).toBe(expectedRanges(size).length + 1);
  });

  it("fails with DigestMismatch when a byte of a middle range is corrupted", async () => {
    const size = 2 * 1024 * KiB;
    const { descriptor } = await seedBlob("ranged/corrupt", size);
    proxy.addRule({
      match: { path: /\/blobs\/sha256:/ },
      action: { kind: "flipByte", offset: 10 },
      times: 1,
    });
    await expect(readAll(ranged.getBlob(via(proxy, "ranged/corrupt"), descriptor))).rejects.toMatchObject({
      reason: "DigestMismatch",
    });
  });

  it("takes later ranges straight from object storage once the registry redirected the first", async () => {
    const size = 2 * 1024 * KiB;
    const { descriptor, bytes } = await seedBlob("ranged/redirect", size);
    proxy.addRule({
      match: { path: /\/blobs\/sha256:/ },
      action: { kind: "redirect", to: objectStore.url },
    });
    const sinceFront = proxy.seen().length;
    const sinceStore = objectStore.seen().length;
    expect((await readAll(ranged.getBlob(via(proxy, "ranged/redirect"), descriptor))).equals(bytes)).toBe(
      true,
    );
    expect(blobGets(proxy, sinceFront).map((r) => r.status)).toEqual([307]);
    const stored = blobGets(objectStore, sinceStore);
    expect(stored.map((r) => r.range).sort()).toEqual(expectedRanges(size).sort());
    expect(stored.some((r) => r.authorized)).toBe(false);
  });

  it("keeps only a window of ranges ahead of a reader that stops reading", async () => {
    const size = 4 * 1024 * KiB;
    const { descriptor } = await seedBlob("ranged/window", size);
    const since = proxy.seen().length;
    const stream = ranged.getBlob(via(proxy, "ranged/window"), descriptor);
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();
    // Unbounded, all 16 ranges would be requested by now; bounded, never more than the window
    // plus what the stream's own read-ahead buffer lets the reader's position advance.
    await sleep(300);
    const requested = blobGets(proxy, since).length;
    expect(requested).toBeLessThan(expectedRanges(size).length);
    stream.destroy();
  });
});

describe("rangedChunks' window", () => {
  const noRetry = {
    attempts: 1,
    sleep: async () => {},
    toError: (caught: unknown) => caught as never,
  };

  /**
   * An upstream whose every range arrives in 4 pieces, `pieceDelayMs` apart (virtual ms on `time`,
   * else real ones); counts ranges open at once.
   */
  function slowUpstream(pieceDelayMs: number, time?: VirtualTime) {
    let open = 0;
    let maxOpen = 0;
    const openRange = async (start: number, end: number) => {
      open++;
      maxOpen = Math.max(maxOpen, open);
      const length = end - start + 1;
      const body = Readable.from(
        (async function* pieces() {
          try {
            for (let i = 0; i < 4; i++) {
              if (time) await time.until(time.now() + pieceDelayMs);
              else await sleep(pieceDelayMs);
              const from = Math.floor((i * length) / 4);
              yield Buffer.alloc(Math.floor(((i + 1) * length) / 4) - from, 1);
            }
          } finally {
            open--;
          }
        })(),
      );
      return { partial: true, body };
    };
    return { openRange, maxOpen: () => maxOpen };
  }

  it("opens more ranges at once while the reader waits on a slow link", async () => {
    const time = virtualTime();
    const upstream = slowUpstream(20, time);
    let total = 0;
    for await (const chunk of rangedChunks(64 * KiB, upstream.openRange, noRetry, {
      rangeBytes: 4 * KiB,
      concurrency: 4,
      streamFirst: false,
      clock: time.now,
    }))
      total += chunk.length;
    expect(total).toBe(64 * KiB);
    expect(upstream.maxOpen()).toBe(4);
  });

  it("keeps to one range at a time when the reader, not the link, is the slow side", async () => {
    const upstream = slowUpstream(0);
    let total = 0;
    for await (const chunk of rangedChunks(64 * KiB, upstream.openRange, noRetry, {
      rangeBytes: 4 * KiB,
      concurrency: 4,
      streamFirst: false,
    })) {
      total += chunk.length;
      await sleep(10);
    }
    expect(total).toBe(64 * KiB);
    expect(upstream.maxOpen()).toBe(1);
  });
});
