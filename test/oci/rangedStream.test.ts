/**
 * A large blob starts as one request for all of it and is split into ranges only once the reader
 * waits on that stream (rangedDownload.ts): a fast link costs no request per range, a slow one
 * still gets parallel connections, and a split that did not pay goes back to one stream.
 */
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rangedChunks } from "../../src/oci/rangedDownload.ts";
import { digestOf, RegistryClient } from "../../src/oci/registry.ts";
import { MediaType } from "../../src/oci/types.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { type VirtualTime, virtualTime } from "../support/virtualTime.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const noRetry = { attempts: 1, sleep: async () => {}, toError: (caught: unknown) => caught as never };

/** Byte i of every test blob. */
const byteAt = (i: number) => i % 251;

/**
 * An upstream serving the pattern in `pieceBytes` pieces, each `delayMs` after the one before on
 * its connection (virtual ms on `time`, else real ones). `sharedLink`: one piece at a time across
 * every connection (a link that more connections do not make faster). Records each request, the
 * bytes each body produced, and how many were open at once.
 */
function fakeUpstream(options: {
  pieceBytes: number;
  delayMs: number;
  sharedLink?: boolean;
  time?: VirtualTime;
}) {
  const requests: [number, number][] = [];
  let produced = 0;
  let open = 0;
  let maxOpen = 0;
  let link: Promise<void> = Promise.resolve();
  let linkFreeAt = 0;
  const pace = async () => {
    const { time, delayMs } = options;
    if (time) {
      const at = options.sharedLink ? Math.max(linkFreeAt, time.now()) + delayMs : time.now() + delayMs;
      if (options.sharedLink) linkFreeAt = at;
      await time.until(at);
    } else if (options.sharedLink) {
      const turn = link.then(() => sleep(delayMs));
      link = turn;
      await turn;
    } else await sleep(delayMs);
  };
  const openRange = async (start: number, end: number) => {
    requests.push([start, end]);
    open++;
    maxOpen = Math.max(maxOpen, open);
    const body = Readable.from(
      (async function* pieces() {
        try {
          for (let at = start; at <= end; at += options.pieceBytes) {
            if (options.delayMs > 0) await pace();
            const piece = Buffer.alloc(Math.min(options.pieceBytes, end - at + 1));
            for (let i = 0; i < piece.length; i++) piece[i] = byteAt(at + i);
            produced += piece.length;
            yield piece;
          }
        } finally {
          open--;
        }
      })(),
    );
    return { partial: true, body };
  };
  return { openRange, requests, produced: () => produced, maxOpen: () => maxOpen };
}

function expectPattern(chunks: Buffer[], size: number) {
  const all = Buffer.concat(chunks);
  expect(all.length).toBe(size);
  for (let i = 0; i < size; i++) if (all[i] !== byteAt(i)) throw new Error(`byte ${i} is ${all[i]}`);
}

/**
 * Downloads a blob of `size` in `rangeBytes` slices from `upstream` as fast as it comes, checks every byte
 * and that the first request asked for the whole blob; returns the requests after it.
 */
async function downloadFast(
  upstream: ReturnType<typeof fakeUpstream>,
  size: number,
  rangeBytes: number,
  time?: VirtualTime,
) {
  const chunks: Buffer[] = [];
  for await (const chunk of rangedChunks(size, upstream.openRange, noRetry, {
    rangeBytes,
    concurrency: 4,
    ...(time ? { clock: time.now } : {}),
  }))
    chunks.push(chunk);
  expectPattern(chunks, size);
  const [first, ...later] = upstream.requests;
  expect(first).toEqual([0, size - 1]);
  return later;
}

describe("a large blob's download as one stream first", () => {
  it("asks once for the whole blob when the reader is the slow side, and holds only about a MiB unread", async () => {
    const size = 8 * MiB;
    const pieceBytes = 16 * KiB;
    const upstream = fakeUpstream({ pieceBytes, delayMs: 0 });
    const chunks: Buffer[] = [];
    let consumed = 0;
    let maxAhead = 0;
    for await (const chunk of rangedChunks(size, upstream.openRange, noRetry, {
      rangeBytes: 256 * KiB,
      concurrency: 4,
    })) {
      chunks.push(chunk);
      consumed += chunk.length;
      maxAhead = Math.max(maxAhead, upstream.produced() - consumed);
      await sleep(0.2);
    }
    expectPattern(chunks, size);
    expect(upstream.requests).toEqual([[0, size - 1]]);
    // One MiB unread, plus what the body's own stream buffers (16 pieces) and the piece in hand.
    expect(maxAhead).toBeLessThanOrEqual(MiB + 18 * pieceBytes);
  });

  it("splits the rest into ranges fetched in parallel when the reader waits on a slow link", async () => {
    const size = 2 * MiB;
    const rangeBytes = 64 * KiB;
    const time = virtualTime();
    const upstream = fakeUpstream({ pieceBytes: 16 * KiB, delayMs: 3, time });
    const later = await downloadFast(upstream, size, rangeBytes, time);
    expect(later.length).toBeGreaterThan(0);
    // The stream kept the slice it was in; the rest came as whole slices.
    for (const [start, end] of later) {
      expect(start % rangeBytes).toBe(0);
      expect(end).toBe(Math.min(size, start + rangeBytes) - 1);
    }
    expect(upstream.maxOpen()).toBeGreaterThan(2);
  });

  it("goes back to one stream for the rest when more connections did not make the link faster", async () => {
    const size = 2 * MiB;
    const rangeBytes = 64 * KiB;
    const time = virtualTime();
    const upstream = fakeUpstream({ pieceBytes: 16 * KiB, delayMs: 4, sharedLink: true, time });
    const later = await downloadFast(upstream, size, rangeBytes, time);
    // Split into ranges, and then one request again from a slice boundary to the blob's end.
    expect(later.some(([start, end]) => end === start + rangeBytes - 1)).toBe(true);
    expect(
      later.some(
        ([start, end]) =>
          start > 0 && start % rangeBytes === 0 && end === size - 1 && end - start + 1 > rangeBytes,
      ),
    ).toBe(true);
  });
});

describe("the whole-blob stream from a registry", () => {
  let source: RunningRegistry;
  let proxy: FaultProxy;
  let client: RegistryClient;

  beforeAll(async () => {
    source = await startRegistry();
    proxy = await startFaultProxy(source.url);
    client = new RegistryClient({
      insecureHosts: [source.host, proxy.host],
      retry: { attempts: 4, baseDelayMs: 10, maxDelayMs: 50 },
      rangedDownload: { minBlobBytes: 512 * KiB, rangeBytes: 256 * KiB, concurrency: 3 },
    });
  });

  afterAll(async () => {
    await client?.close();
    await proxy?.stop();
    await source?.stop();
  });

  it("resumes a dropped stream from its last byte to the blob's end", async () => {
    const size = 2 * MiB;
    const bytes = randomBytes(size);
    const descriptor = { mediaType: MediaType.OciLayerTar, digest: digestOf(bytes), size };
    await client.pushBlob({ registry: source.host, repository: "stream/drop" }, descriptor, () =>
      Readable.from([bytes]),
    );
    proxy.addRule({
      match: { path: /\/blobs\/sha256:/ },
      action: { kind: "dropAfterBytes", bytes: 100_000 },
      times: 1,
    });
    const since = proxy.seen().length;
    const chunks: Buffer[] = [];
    for await (const chunk of client.getBlob({ registry: proxy.host, repository: "stream/drop" }, descriptor))
      chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
    const ranges = proxy
      .seen()
      .slice(since)
      .filter((r) => r.method === "GET" && /\/blobs\/sha256:/.test(r.path))
      .map((r) => r.range);
    expect(ranges.slice(0, 2)).toEqual([`bytes=0-${size - 1}`, `bytes=100000-${size - 1}`]);
  });
});
