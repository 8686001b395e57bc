/**
 * Pull records (src/cache/pulls.ts) in a real storage registry: one per front replica, written
 * when something changed, read back by the replica after a restart and by anyone else.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PullLog, parsePullRecord, pullRecordTag, readPullRecord } from "../../src/cache/pulls.ts";
import { RegistryClient } from "../../src/oci/registry.ts";
import { systemClock } from "../../src/util/clock.ts";
import { silentLogger } from "../../src/util/log.ts";
import { type RunningRegistry, startRegistry } from "../../testkit/registry.ts";

describe("pull records", () => {
  let storage: RunningRegistry;
  let client: RegistryClient;
  let now = 5_000;
  const clock = { now: () => now, sleep: systemClock.sleep };

  beforeAll(async () => {
    storage = await startRegistry();
    client = new RegistryClient({ insecureHosts: [storage.host], retry: { attempts: 1 } });
  });

  afterAll(async () => {
    await client?.close();
    await storage?.stop();
  });

  const log = (instance: string) =>
    new PullLog({ client, registry: storage.host, instance, clock, logger: silentLogger() });

  it("survive a restart of the replica that wrote them, and replicas keep one record each", async () => {
    const first = log("cache-0");
    first.record("docker.io/acme/a", "sha256:aa");
    await first.flush();
    now = 6_000;
    const other = log("cache-1");
    other.record("docker.io/acme/a", "sha256:aa");
    await other.flush();

    const restarted = log("cache-0");
    await restarted.load();
    expect(restarted.lastPulled("docker.io/acme/a", "sha256:aa")).toBe(5_000);
    now = 7_000;
    restarted.record("docker.io/acme/b", "sha256:bb");
    await restarted.flush();

    const mine = await readPullRecord(client, storage.host, "cache-0");
    expect(Object.fromEntries(mine ?? [])).toEqual({
      "docker.io/acme/a@sha256:aa": 5_000,
      "docker.io/acme/b@sha256:bb": 7_000,
    });
    expect(Object.fromEntries((await readPullRecord(client, storage.host, "cache-1")) ?? [])).toEqual({
      "docker.io/acme/a@sha256:aa": 6_000,
    });
    expect(await readPullRecord(client, storage.host, "cache-2")).toBeUndefined();
  });

  it("keep the repositories the upstream last served anonymously, and forget one it stopped serving", async () => {
    now = 8_000;
    const first = log("cache-public");
    first.notePublic("docker.io", "library/alpine", true);
    first.notePublic("ghcr.io", "acme/private-now", true);
    now = 9_000;
    first.notePublic("ghcr.io", "acme/private-now", false);
    first.notePublic("nvcr.io", "never/seen", false);
    first.record("docker.io/library/alpine", "sha256:aa");
    await first.flush();

    const restarted = log("cache-public");
    await restarted.load();
    expect(restarted.knownPublic()).toEqual([
      { upstream: "docker.io", repository: "library/alpine", at: 8_000 },
    ]);
    // Readers of pulls (the controller's eviction) see only pulls.
    expect(Object.fromEntries((await readPullRecord(client, storage.host, "cache-public")) ?? [])).toEqual({
      "docker.io/library/alpine@sha256:aa": 9_000,
    });
  });

  it("name a replica by a tag-safe form of its name and ignore entries that are not pulls", () => {
    expect(pullRecordTag("stowage-cache-7d9f/x:1")).toBe("stowage-cache-7d9f-x-1");
    expect(pullRecordTag("..")).toBe("front");
    const parsed = parsePullRecord(
      Buffer.from(JSON.stringify({ version: 1, pulls: { "r@sha256:1": 10, nokey: 5, "r@sha256:2": "x" } })),
    );
    expect([...parsed]).toEqual([["r@sha256:1", 10]]);
    expect(parsePullRecord(Buffer.from("not json")).size).toBe(0);
  });
});
