import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlobFlights } from "../../src/cache/flights.ts";
import type { CacheTarget } from "../../src/cache/layout.ts";
import { Spool } from "../../src/cache/spool.ts";
import { Storage } from "../../src/cache/storage.ts";
import { createCacheMetrics, createRegistry } from "../../src/metrics.ts";
import { cacheRepository } from "../../src/oci/reference.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { silentLogger } from "../../src/util/log.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { eventually } from "../support/eventually.ts";
import { type CacheRig, fetchFrom, metricValue, rigClient, startRig, upstreamBlobGets } from "./support.ts";

let rig: CacheRig;
let client: RegistryClient;

beforeAll(async () => {
  rig = await startRig();
  client = rigClient(rig);
});

afterAll(async () => {
  await client?.close();
  await rig?.stop();
});

describe("stowage cache: single flight", () => {
  it("fetches a cold blob upstream once for eight concurrent callers, each getting the right bytes", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/popular" },
      "v1",
      { layerSizes: [6 * 1024 * 1024] },
    );
    const layer = pushed.image.layers[0].descriptor;
    // Hold the upstream's answer back a moment so that all eight arrive while it is cold.
    rig.proxy.addRule({ match: { method: "GET", path: /\/blobs\// }, action: { kind: "delay", ms: 1500 } });
    const path = `${rig.prefix("acme/popular")}/blobs/${layer.digest}`;
    const results = await Promise.all(Array.from({ length: 8 }, () => fetchFrom(rig.front.url, path)));
    for (const result of results) {
      expect(result.status).toBe(200);
      expect(result.complete).toBe(true);
      expect(`sha256:${createHash("sha256").update(result.body).digest("hex")}`).toBe(layer.digest);
    }
    const gets = upstreamBlobGets(rig.proxy).filter((seen) => seen.includes(layer.digest));
    expect(gets).toHaveLength(1);
    expect(await metricValue(rig.front, "stowage_cache_upstream_bytes_total")).toBe(layer.size);
    expect(await metricValue(rig.front, "stowage_cache_singleflight_joined_total", { kind: "blob" })).toBe(7);
    // A caller has its bytes a moment before the front's side of the response is done.
    await eventually(
      "no caller left waiting on a flight",
      async () => (await metricValue(rig.front, "stowage_cache_singleflight_waiters")) === 0,
      10_000,
      50,
    );
    await eventually(
      "the spool file removed once everyone is done",
      async () => (await readdir(rig.spoolDir)).filter((name) => name.endsWith(".part")).length === 0,
      10_000,
      50,
    );
  });
});

describe("stowage cache: callers of one flight at their own pace", () => {
  it("serves the others to the end while one caller stops reading and another disconnects mid-blob", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/uneven" },
      "v1",
      { layerSizes: [12 * 1024 * 1024] },
    );
    const layer = pushed.image.layers[0].descriptor;
    // A slow upstream, so every caller joins while the blob is still arriving.
    rig.proxy.addRule({
      match: { method: "GET", path: /\/blobs\// },
      action: { kind: "throttle", bytesPerSecond: 4 * 1024 * 1024, latencyMs: 0 },
      times: Number.POSITIVE_INFINITY,
    });
    const upstreamBefore = await metricValue(rig.front, "stowage_cache_upstream_bytes_total");
    const url = `${rig.front.url}${rig.prefix("acme/uneven")}/blobs/${layer.digest}`;
    // One caller reads its first bytes, then nothing more until the others are done (its socket
    // buffers fill up and its writes wait).
    const stalled = await request(url);
    const stalledReader = stalled.body[Symbol.asyncIterator]();
    const stalledChunks: Buffer[] = [(await stalledReader.next()).value as Buffer];
    // Another reads its first bytes and goes away.
    const quitter = new AbortController();
    const gone = await request(url, { signal: quitter.signal });
    await gone.body[Symbol.asyncIterator]().next();
    quitter.abort();
    const path = `${rig.prefix("acme/uneven")}/blobs/${layer.digest}`;
    const results = await Promise.all(Array.from({ length: 3 }, () => fetchFrom(rig.front.url, path)));
    for (const result of results) {
      expect(result.status).toBe(200);
      expect(result.complete).toBe(true);
      expect(`sha256:${createHash("sha256").update(result.body).digest("hex")}`).toBe(layer.digest);
    }
    // The stalled caller, reading again, gets exactly the digest's bytes, from where it stopped.
    for (let next = await stalledReader.next(); !next.done; next = await stalledReader.next())
      stalledChunks.push(next.value as Buffer);
    const stalledBody = Buffer.concat(stalledChunks);
    expect(stalledBody.length).toBe(layer.size);
    expect(`sha256:${createHash("sha256").update(stalledBody).digest("hex")}`).toBe(layer.digest);
    // All five were one read of the upstream.
    expect((await metricValue(rig.front, "stowage_cache_upstream_bytes_total")) - upstreamBefore).toBe(
      layer.size,
    );
    rig.proxy.clearRules();
    await eventually(
      "no caller left waiting on a flight",
      async () => (await metricValue(rig.front, "stowage_cache_singleflight_waiters")) === 0,
      10_000,
      50,
    );
  });
});

describe("stowage cache: a finished flight", () => {
  it("is not joined once its blob is stored, so a blob storage loses right after is fetched and stored again", async () => {
    const pushed = await pushSinglePlatformImage(
      client,
      { registry: rig.upstream.host, repository: "acme/evicted" },
      "v1",
      { layerSizes: [512 * 1024] },
    );
    const layer = pushed.image.layers[0].descriptor;
    const target: CacheTarget = {
      upstream: rig.proxy.host,
      repository: "acme/evicted",
      cacheRepository: cacheRepository({ registry: rig.proxy.host, repository: "acme/evicted" }),
      kind: "blob",
      reference: layer.digest,
    };
    const storage = new Storage({ url: rig.storage.url });
    const upstream = new RegistryClient({ insecureHosts: [rig.proxy.host], retry: { attempts: 1 } });
    const flights = new BlobFlights({
      upstream,
      storage,
      spoolDir: rig.spoolDir,
      metrics: createCacheMetrics(createRegistry()),
      logger: silentLogger(),
      stallTimeoutMs: 30_000,
    });
    try {
      const { settled } = await flights.join(target, layer.size).flight;
      expect(await settled).toBe(true);
      // Stored: whoever asks from now on is answered by storage (or a new fetch), not this flight.
      expect(flights.running(target)).toBeUndefined();
      expect(
        await storage.client.deleteBlob(
          { registry: storage.registry, repository: target.cacheRepository },
          layer.digest,
        ),
      ).toBe(true);
      const again = await flights.join(target, layer.size).flight;
      expect(await again.settled).toBe(true);
      expect(
        await client.hasBlob(
          { registry: rig.storage.host, repository: target.cacheRepository },
          layer.digest,
        ),
      ).toBe(layer.size);
      expect(upstreamBlobGets(rig.proxy).filter((path) => path.includes(layer.digest))).toHaveLength(2);
    } finally {
      await Promise.all([storage.close(), upstream.close()]);
    }
  });
});

describe("spool", () => {
  it("lets a reader stream bytes as they arrive and holds back the last byte until it is sealed", async () => {
    const dir = await mkdtemp(join(tmpdir(), "stowage-spool-test-"));
    try {
      const spool = await Spool.create(dir, "sha256:abc", 10);
      const reader = spool.tail(0, 10, { holdLast: true })[Symbol.asyncIterator]();
      await spool.append(Buffer.from("hello"));
      const first = await reader.next();
      expect(Buffer.from(first.value as Buffer).toString()).toBe("hello");
      await spool.append(Buffer.from("world"));
      await spool.flush();
      // All ten bytes are written, but only nine may go out before the seal.
      const second = await reader.next();
      expect(Buffer.from(second.value as Buffer).toString()).toBe("worl");
      let sealed = false;
      const last = reader.next().then((result) => {
        expect(sealed).toBe(true);
        return result;
      });
      await new Promise((resolve) => setImmediate(resolve));
      sealed = true;
      spool.seal();
      expect(Buffer.from((await last).value as Buffer).toString()).toBe("d");
      expect((await reader.next()).done).toBe(true);
      await spool.dispose();
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("hands a reader that keeps up the fetched chunks themselves (no read buffers made), and one that fell behind the file's bytes", async () => {
    const dir = await mkdtemp(join(tmpdir(), "stowage-spool-test-"));
    try {
      const chunkSize = 64 * 1024;
      const chunks = Array.from({ length: 64 }, (_, index) => Buffer.alloc(chunkSize, index));
      const size = chunks.length * chunkSize;
      const spool = await Spool.create(dir, "sha256:edge", size);
      let buffersMade = 0;
      const readBuffers = () => {
        buffersMade++;
        return [Buffer.alloc(chunkSize), Buffer.alloc(chunkSize)];
      };
      const edge = spool.tail(0, size, { buffers: readBuffers })[Symbol.asyncIterator]();
      await spool.append(chunks[0]);
      // No file read: the very bytes the fetch appended (and before they reach the file).
      expect(((await edge.next()).value as Buffer).buffer).toBe(chunks[0].buffer);
      for (const chunk of chunks.slice(1)) await spool.append(chunk);
      await spool.flush();
      spool.seal();
      // 4 MiB appended: the first chunks are only in the file now; the last ones still in memory.
      const late: Buffer[] = [];
      for await (const chunk of spool.tail(0, size, { buffers: readBuffers })) late.push(Buffer.from(chunk));
      expect(Buffer.concat(late).equals(Buffer.concat(chunks))).toBe(true);
      expect(buffersMade).toBe(1);
      const fromMemory: Buffer[] = [];
      for await (const chunk of spool.tail(size - chunkSize, size)) fromMemory.push(chunk);
      expect(fromMemory.map((chunk) => chunk.buffer)).toEqual([chunks[63].buffer]);
      const fromFile: Buffer[] = [];
      for await (const chunk of spool.tail(0, chunkSize)) fromFile.push(chunk);
      expect(fromFile.some((chunk) => chunk.buffer === chunks[0].buffer)).toBe(false);
      expect(Buffer.concat(fromFile).equals(chunks[0])).toBe(true);
      // The reader that kept up read the file only for what went past it meanwhile.
      let rest = 0;
      for await (const chunk of edge) rest += chunk.length;
      expect(rest).toBe(size - chunkSize);
      expect(buffersMade).toBe(2);
      await spool.dispose();
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("fails every reader that is waiting when the fetch fails, without the final byte", async () => {
    const dir = await mkdtemp(join(tmpdir(), "stowage-spool-test-"));
    try {
      const spool = await Spool.create(dir, "sha256:def", 4);
      await spool.append(Buffer.from("abcd"));
      await spool.flush();
      const received: string[] = [];
      const reading = (async () => {
        for await (const chunk of spool.tail(0, 4, { holdLast: true })) received.push(chunk.toString());
      })();
      await new Promise((resolve) => setImmediate(resolve));
      spool.fail(new Error("digest mismatch"));
      await expect(reading).rejects.toThrow("digest mismatch");
      expect(received.join("")).toBe("abc");
      await spool.dispose();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
