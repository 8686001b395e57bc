/**
 * When and how the controller runs the registry's garbage collection (src/controller/cachegc/loop.ts,
 * collect.ts): the order pause → collect → resume, writes resumed whatever failed, failures
 * counted, reported and retried, a pause left by a stopped controller undone. The cluster side
 * (rollouts, the Job) runs for real in test/real/cache-gc-on-kubelet.test.ts; here a scripted
 * RegistryGc stands in for it so each failure can be placed exactly.
 */
import { afterEach, describe, expect, it } from "vitest";
import { collectWhilePaused } from "../../src/controller/cachegc/collect.ts";
import {
  type RegistryGc,
  type RegistryGcLoop,
  startRegistryGcLoop,
} from "../../src/controller/cachegc/loop.ts";
import { createRegistry, createRegistryGcMetrics } from "../../src/metrics.ts";
import { StowageError } from "../../src/util/errors.ts";
import { silentLogger } from "../../src/util/log.ts";
import { FakeClock, settle } from "../kube/fakeClock.ts";

type Step = "pause" | "collect" | "resume";

/** A registry that is writable or read-only, and steps that fail when told to. */
class ScriptedGc implements RegistryGc {
  steps: Step[] = [];
  readOnly = false;
  failures: Partial<Record<Step, StowageError[]>> = {};

  #fail(step: Step) {
    const failure = this.failures[step]?.shift();
    if (failure) throw failure;
  }

  async pause() {
    this.steps.push("pause");
    // a rollout that did not finish still leaves replicas read-only
    this.readOnly = true;
    this.#fail("pause");
  }

  async collect() {
    this.steps.push("collect");
    if (!this.readOnly) throw new Error("collected while the registry takes writes");
    this.#fail("collect");
  }

  async resume() {
    this.steps.push("resume");
    this.#fail("resume");
    this.readOnly = false;
  }

  async paused() {
    return this.readOnly;
  }
}

const value = async (
  registry: ReturnType<typeof createRegistry>,
  name: string,
  labels: Record<string, string> = {},
) => {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  const sample = (metric?.values ?? []).find((v) =>
    Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want),
  );
  return sample?.value ?? 0;
};

let loop: RegistryGcLoop | undefined;
afterEach(async () => {
  await loop?.stop();
  loop = undefined;
});

function setup(options: { intervalMs?: number; leader?: () => boolean } = {}) {
  const gc = new ScriptedGc();
  const clock = new FakeClock();
  const registry = createRegistry();
  const reported: StowageError[] = [];
  loop = startRegistryGcLoop({
    gc,
    intervalMs: options.intervalMs ?? 0,
    retryMs: 5 * 60_000,
    recoverEveryMs: 60_000,
    isLeader: options.leader ?? (() => true),
    clock,
    metrics: createRegistryGcMetrics(registry),
    logger: silentLogger(),
    onFailure: async (failure) => {
      reported.push(failure);
    },
  });
  return { gc, clock, registry, reported, loop };
}

describe("a registry garbage collection", () => {
  it("collects only while writes are paused, and counts the success", async () => {
    const { gc, registry, loop } = setup();
    expect(await loop.runOnce()).toBe(true);
    expect(gc.steps).toEqual(["pause", "collect", "resume"]);
    expect(gc.readOnly).toBe(false);
    expect(await value(registry, "stowage_cache_registry_gc_runs_total", { result: "ok" })).toBe(1);
    expect(await value(registry, "stowage_cache_registry_gc_last_success_timestamp_seconds")).toBeGreaterThan(
      0,
    );
    expect(await value(registry, "stowage_cache_registry_read_only")).toBe(0);
  });

  it("resumes writes when the collection fails, and reports the failure with its reason", async () => {
    const { gc, registry, reported, loop } = setup();
    gc.failures.collect = [
      new StowageError("Timeout", "registry garbage-collect Job did not finish within 3600s"),
    ];
    expect(await loop.runOnce()).toBe(false);
    expect(gc.steps).toEqual(["pause", "collect", "resume"]);
    expect(gc.readOnly).toBe(false);
    expect(reported.map((f) => f.reason)).toEqual(["Timeout"]);
    expect(await value(registry, "stowage_cache_registry_gc_runs_total", { result: "failed" })).toBe(1);
    expect(await value(registry, "stowage_cache_registry_gc_consecutive_failures")).toBe(1);
    expect(await value(registry, "stowage_cache_registry_read_only")).toBe(0);
  });

  it("resumes writes when the read-only rollout itself failed half-way, without collecting", async () => {
    const { gc, reported, loop } = setup();
    gc.failures.pause = [
      new StowageError("Timeout", "did not roll out read-only within 600s (0 of 1 replicas)"),
    ];
    expect(await loop.runOnce()).toBe(false);
    expect(gc.steps).toEqual(["pause", "resume"]);
    expect(gc.readOnly).toBe(false);
    expect(reported[0].message).toContain("roll out read-only");
  });

  it("says the registry is still read-only when resuming fails, and undoes it on the next check", async () => {
    const { gc, clock, registry, reported, loop } = setup();
    gc.failures.collect = [new StowageError("CacheUnavailable", "Job failed")];
    gc.failures.resume = [new StowageError("Timeout", "did not roll out writable within 600s")];
    expect(await loop.runOnce()).toBe(false);
    expect(gc.readOnly).toBe(true);
    // the resume's failure is the news (writes refused), the collection's is kept in its message
    expect(reported[0].reason).toBe("Timeout");
    expect(reported[0].message).toContain("Job failed");
    expect(await value(registry, "stowage_cache_registry_read_only")).toBe(1);

    await clock.advance(60_000);
    await settle();
    expect(gc.readOnly).toBe(false);
    expect(gc.steps.slice(-1)).toEqual(["resume"]);
    expect(await value(registry, "stowage_cache_registry_read_only")).toBe(0);
  });

  it("when both the collection and the resume fail, throws the resume's failure naming both", async () => {
    const gc = new ScriptedGc();
    gc.failures.collect = [new StowageError("CacheUnavailable", "garbage-collect exited 1")];
    gc.failures.resume = [new StowageError("Denied", "statefulsets is forbidden")];
    const failure = await collectWhilePaused(gc, () => gc.collect()).then(
      () => new StowageError("Internal", "collectWhilePaused resolved"),
      (err: StowageError) => err,
    );
    expect(failure).toBeInstanceOf(StowageError);
    expect(failure.reason).toBe("Denied");
    expect(failure.message).toContain("statefulsets is forbidden");
    expect(failure.message).toContain("garbage-collect exited 1");
  });
});

describe("the registry garbage collection loop", () => {
  it("collects once an eviction pass asks, one run for requests made together, only on the leader", async () => {
    let leader = false;
    const { gc, clock } = setup({ leader: () => leader });
    loop?.request();
    loop?.request();
    await settle();
    expect(gc.steps).toEqual([]);
    leader = true;
    await clock.advance(60_000);
    await settle();
    expect(gc.steps).toEqual(["pause", "collect", "resume"]);
    // nothing more without a new request (no interval set)
    await clock.advance(60 * 60_000);
    await settle();
    expect(gc.steps.filter((s) => s === "collect")).toHaveLength(1);
  });

  it("retries a failed collection after the retry delay, doubling, and after a success waits the interval", async () => {
    const { gc, clock } = setup({ intervalMs: 60 * 60_000 });
    gc.failures.collect = [
      new StowageError("CacheUnavailable", "one"),
      new StowageError("CacheUnavailable", "two"),
    ];
    const collections = () => gc.steps.filter((s) => s === "collect").length;
    const advanceMinutes = async (minutes: number) => {
      for (let i = 0; i < minutes; i++) {
        await clock.advance(60_000);
        await settle();
      }
    };
    await advanceMinutes(60);
    expect(collections()).toBe(1); // the interval: fails
    await advanceMinutes(4);
    expect(collections()).toBe(1);
    await advanceMinutes(1);
    expect(collections()).toBe(2); // 5 minutes later: fails again
    await advanceMinutes(9);
    expect(collections()).toBe(2);
    await advanceMinutes(1);
    expect(collections()).toBe(3); // 10 minutes later: succeeds
    await advanceMinutes(59);
    expect(collections()).toBe(3);
    await advanceMinutes(1);
    expect(collections()).toBe(4); // then the interval again
  });

  it("makes a registry writable that a stopped controller left read-only, without collecting", async () => {
    const { gc, clock } = setup();
    gc.readOnly = true;
    await clock.advance(60_000);
    await settle();
    expect(gc.steps).toEqual(["resume"]);
    expect(gc.readOnly).toBe(false);
  });
});
