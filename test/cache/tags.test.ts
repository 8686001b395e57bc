import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startCache } from "../../src/cache/command.ts";
import { cacheRepository } from "../../src/oci/reference.ts";
import type { RegistryClient } from "../../src/oci/registry.ts";
import { type Clock, systemClock } from "../../src/util/clock.ts";
import { pushSinglePlatformImage } from "../../testkit/images.ts";
import { type CacheRig, fetchFrom, frontConfig, metricValue, rigClient, startRig } from "./support.ts";

let rig: CacheRig;
let client: RegistryClient;
let offsetMs = 0;
const clock: Clock = { now: () => Date.now() + offsetMs, sleep: systemClock.sleep };

beforeAll(async () => {
  rig = await startRig({ clock, config: { tagTtlMs: 30_000, accessTtlMs: 60_000 } });
  client = rigClient(rig);
});

afterAll(async () => {
  await client?.close();
  await rig?.stop();
});

const manifestHeads = () =>
  rig.proxy.seen().filter((seen) => seen.method === "HEAD" && seen.path.includes("/manifests/latest"));

/**
 * A declared image: pushed upstream, and mirrored by the controller into storage under the cache
 * layout, tagged v1.
 */
async function declareImage(repository: string, seed: string) {
  await pushSinglePlatformImage(client, { registry: rig.upstream.host, repository }, "v1", {
    seed,
    layerSizes: [8192],
  });
  return pushSinglePlatformImage(
    client,
    { registry: rig.storage.host, repository: cacheRepository({ registry: rig.proxy.host, repository }) },
    "v1",
    { seed, layerSizes: [8192] },
  );
}

describe("stowage cache: tags", () => {
  it("trusts a tag's upstream digest for the TTL, then asks again and follows a moved tag", async () => {
    const repo = { registry: rig.upstream.host, repository: "acme/moving" };
    const first = await pushSinglePlatformImage(client, repo, "latest", {
      seed: "moving-1",
      layerSizes: [4096],
    });
    const path = `${rig.prefix("acme/moving")}/manifests/latest`;
    const a = await fetchFrom(rig.front.url, path, {}, "HEAD");
    expect(a.headers["docker-content-digest"]).toBe(first.digest);
    const headsAfterFirst = manifestHeads().length;
    const second = await pushSinglePlatformImage(client, repo, "latest", {
      seed: "moving-2",
      layerSizes: [4096],
    });
    expect(second.digest).not.toBe(first.digest);
    offsetMs += 10_000;
    const b = await fetchFrom(rig.front.url, path, {}, "HEAD");
    expect(b.headers["docker-content-digest"]).toBe(first.digest);
    expect(manifestHeads().length).toBe(headsAfterFirst);
    offsetMs += 25_000;
    const c = await fetchFrom(rig.front.url, path);
    expect(c.status).toBe(200);
    expect(c.headers["docker-content-digest"]).toBe(second.digest);
    expect(manifestHeads().length).toBeGreaterThan(headsAfterFirst);
  });

  it("serves the last known digest while the upstream is down, and counts the tag as stale", async () => {
    const path = `${rig.prefix("acme/moving")}/manifests/latest`;
    const before = await fetchFrom(rig.front.url, path);
    const known = before.headers["docker-content-digest"];
    offsetMs += 31_000;
    rig.proxy.addRule({
      match: { path: /\/manifests\// },
      times: 100,
      action: { kind: "status", status: 503 },
    });
    try {
      const stale = await fetchFrom(rig.front.url, path);
      expect(stale.status).toBe(200);
      expect(stale.headers["docker-content-digest"]).toBe(known);
      expect(await metricValue(rig.front, "stowage_cache_stale_tags_total")).toBe(1);
    } finally {
      rig.proxy.clearRules();
    }
  });

  it("after a restart with the upstream down, still serves anonymous callers a repository the upstream served them before (kept in its pull record)", async () => {
    const declared = await declareImage("acme/outage", "outage");
    const path = `${rig.prefix("acme/outage")}/manifests/v1`;
    const spoolDir = await mkdtemp(join(tmpdir(), "stowage-spool-"));
    const config = (instance: string) => ({
      ...frontConfig(rig.storage.url, rig.proxy.host, spoolDir),
      pullRecordIntervalMs: 60_000,
      instance,
    });
    try {
      // With the upstream up: the anonymous access check says public; stop() writes the record.
      const before = await startCache(config("front-outage"));
      try {
        expect((await fetchFrom(before.url, path)).status).toBe(200);
      } finally {
        await before.stop();
      }
      rig.proxy.addRule({ times: 1000, action: { kind: "status", status: 503 } });
      const restarted = await startCache(config("front-outage"));
      // Another replica never saw the repository served: it has nothing to stand on.
      const stranger = await startCache(config("front-stranger"));
      try {
        const got = await fetchFrom(restarted.url, path);
        expect(got.status).toBe(200);
        expect(got.headers["docker-content-digest"]).toBe(declared.digest);
        expect((await fetchFrom(stranger.url, path)).status).not.toBe(200);
      } finally {
        await Promise.all([restarted.stop(), stranger.stop()]);
      }
    } finally {
      rig.proxy.clearRules();
      await rm(spoolDir, { recursive: true, force: true });
    }
  });

  it("after a restart with the upstream down, serves the digest storage holds under the tag (a declared image)", async () => {
    const declared = await declareImage("acme/declared", "declared");
    const spoolDir = await mkdtemp(join(tmpdir(), "stowage-spool-"));
    const fresh = await startCache(frontConfig(rig.storage.url, rig.proxy.host, spoolDir));
    // The upstream answers the access check (a HEAD: the repository is public), then no more.
    rig.proxy.addRule({
      match: { method: "HEAD", path: /\/manifests\/v1$/ },
      times: 1,
      action: { kind: "delay", ms: 0 },
    });
    rig.proxy.addRule({
      match: { path: /\/manifests\// },
      times: 100,
      action: { kind: "status", status: 503 },
    });
    try {
      const got = await fetchFrom(fresh.url, `${rig.prefix("acme/declared")}/manifests/v1`);
      expect(got.status).toBe(200);
      expect(got.headers["docker-content-digest"]).toBe(declared.digest);
      expect(await metricValue(fresh, "stowage_cache_stale_tags_total")).toBe(1);
      expect(await metricValue(fresh, "stowage_cache_hits_total", { kind: "manifest" })).toBe(1);
    } finally {
      rig.proxy.clearRules();
      await fresh.stop();
      await rm(spoolDir, { recursive: true, force: true });
    }
  });
});
