/**
 * The hostile suite, cache side: `stowage mirror` and the copy API from a real CNCF
 * distribution (the upstream) into another (the cache) behind testkit/faultProxy.ts, which
 * refuses, cuts and stalls uploads. Cache faults are retried like upstream faults and
 * reported as CacheUnavailable; the cache verifier reads the whole cache after every case.
 */
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Copier } from "../../src/oci/copy.ts";
import { parseReference } from "../../src/oci/reference.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { verifyCache } from "../../testkit/cacheVerifier.ts";
import { type FaultProxy, startFaultProxy } from "../../testkit/faultProxy.ts";
import { type PushedImage, pushSinglePlatformImage } from "../../testkit/images.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";
import { failure } from "../support/failure.ts";
import { stowage } from "../support/run.ts";

const run = promisify(execFile);

let upstream: RunningRegistry;
let cache: RunningRegistry;
let front: FaultProxy;
let pushed: PushedImage;
let client: RegistryClient;

const layerHex = () => pushed.image.layers[0].descriptor.digest.slice("sha256:".length);
/** The monolithic PUT of the big layer (its digest is in the query, URL-encoded). */
const layerPut = () => ({ method: "PUT", path: new RegExp(`digest=sha256%3A${layerHex()}`) });

function mirror(tag: string, ...flags: string[]) {
  return stowage([
    "mirror",
    "--no-blob-index",
    "--quiet",
    "--insecure-registry",
    upstream.host,
    "--insecure-registry",
    front.host,
    ...flags,
    `${upstream.host}/m/app:v1`,
    `${front.host}/m/${tag}:v1`,
  ]);
}

/** Upload data files the cache still holds under _uploads (whole blobs a failed upload left). */
async function leftoverUploads(): Promise<string[]> {
  const { stdout } = await run("find", [cache.storageDir, "-path", "*/_uploads/*", "-name", "data"]);
  return stdout.split("\n").filter((line) => line.length > 0);
}

beforeAll(async () => {
  [upstream, cache] = await Promise.all([startRegistry(), startRegistry()]);
  front = await startFaultProxy(cache.url);
  client = new RegistryClient({ insecureHosts: [upstream.host, cache.host, front.host], proxy: false });
  pushed = await pushSinglePlatformImage(client, { registry: upstream.host, repository: "m/app" }, "v1", {
    layerSizes: [3_000_000],
  });
});

afterEach(async () => {
  front.clearRules();
  const report = await verifyCache(cache.host);
  expect(report.problems).toEqual([]);
});

afterAll(async () => {
  await client?.close();
  await front?.stop();
  await Promise.all([upstream?.stop(), cache?.stop()]);
});

describe("cache faults during stowage mirror", () => {
  it("retries a 503 on a blob upload and cancels the refused upload session", async () => {
    front.addRule({ match: layerPut(), action: { kind: "status", status: 503 } });
    const since = front.seen().length;
    const result = await mirror("503");
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const puts = front
      .seen()
      .slice(since)
      .filter((r) => layerPut().path.test(r.path));
    expect(puts.map((r) => r.status)).toEqual([503, 201]);
    // The session the 503 answered was cancelled: no blob data is left under _uploads.
    expect(await leftoverUploads()).toEqual([]);
  });

  it("retries an upload the cache cut mid-body and finishes the mirror", async () => {
    front.addRule({ match: layerPut(), action: { kind: "resetAfterRequestBytes", bytes: 1_000_000 } });
    const since = front.seen().length;
    const result = await mirror("reset");
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(
      front
        .seen()
        .slice(since)
        .filter((r) => layerPut().path.test(r.path) && r.status === 201),
    ).toHaveLength(1);
  });

  it("ends with CacheUnavailable naming the cache when the cache keeps failing", async () => {
    front.addRule({
      match: { method: "PUT", path: /\/blobs\/uploads\// },
      times: Number.POSITIVE_INFINITY,
      action: { kind: "status", status: 503 },
    });
    const result = await mirror("down");
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(new RegExp(`^stowage: CacheUnavailable: cache registry ${front.host}: `));
    expect(result.stderr).not.toContain("UpstreamUnavailable");
  });

  it("refuses a malformed --stall-timeout with exit code 2", async () => {
    const result = await mirror("flags", "--stall-timeout", "soon");
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(
      '--stall-timeout must be a positive duration up to 596h like 30s or 5m, got "soon"',
    );
  });
});

describe("a cache that stops reading", () => {
  it("abandons an upload the cache does not take within the stall timeout, as CacheUnavailable", async () => {
    front.addRule({
      match: layerPut(),
      times: Number.POSITIVE_INFINITY,
      action: { kind: "delay", ms: 60_000 },
    });
    const stalled = new RegistryClient({
      insecureHosts: [upstream.host, front.host],
      cacheRegistries: [front.host],
      // The upstream's reads share this timeout: long enough that a busy machine's pause in
      // them is not a stall, while the front's PUT is held for a minute.
      stallTimeoutMs: 1_500,
      commitTimeoutMs: 1_000,
      retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 50 },
      proxy: false,
    });
    try {
      const err = await failure(
        new Copier({ client: stalled }).copy(
          parseReference(`${upstream.host}/m/app:v1`),
          parseReference(`${front.host}/m/stall:v1`),
        ),
      );
      expect(err.reason).toBe("CacheUnavailable");
      expect(err.message).toMatch(
        /stalled: the upload was not taken|did not answer within 1s of the upload's last byte/,
      );
    } finally {
      await stalled.close();
    }
  });
});

describe("corruption in the cache", () => {
  it("finds a flipped byte in a cached blob with --verify, re-copies it, and fails when the registry keeps the bad bytes", async () => {
    expect((await mirror("corrupt")).code).toBe(0);
    const hex = layerHex();
    const dataPath = `${cache.storageDir}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
    const bytes = await readFile(dataPath);
    bytes[1000] ^= 0xff;
    await writeFile(dataPath, bytes);
    try {
      // The up-to-date check reads manifests only: without --verify the corruption goes unseen.
      const unseen = await mirror("corrupt");
      expect(unseen.code).toBe(0);
      const before = (await cache.requests()).length;
      const verified = await mirror("corrupt", "--verify");
      expect(verified.code).toBe(1);
      expect(verified.stderr).toContain("stowage: DigestMismatch: ");
      expect(verified.stderr).toContain(`blob sha256:${hex}`);
      expect(verified.stderr).toContain("still serves corrupt content after re-copying it");
      // It unlinked the blob and uploaded it again before concluding.
      const requests = (await cache.requests()).slice(before);
      expect(requests.some((r) => r.method === "DELETE" && r.path.endsWith(`/blobs/sha256:${hex}`))).toBe(
        true,
      );
      expect(
        requests.some((r) => r.method === "PUT" && r.path.includes(`sha256%3A${hex}`) && r.status === 201),
      ).toBe(true);
      const report = await verifyCache(cache.host);
      expect(report.problems.join("\n")).toContain(`sha256:${hex}`);
    } finally {
      bytes[1000] ^= 0xff;
      await writeFile(dataPath, bytes);
    }
    expect((await mirror("corrupt", "--verify")).code).toBe(0);
  });
});
