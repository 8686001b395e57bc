import { describe, expect, it } from "vitest";
import { ExponentialBackoff, WorkQueue } from "../../src/kube/workqueue.ts";
import { createRuntimeMetrics } from "../../src/metrics.ts";
import { FakeClock, settle } from "./fakeClock.ts";

function newQueue(clock = new FakeClock()) {
  const metrics = createRuntimeMetrics();
  return { queue: new WorkQueue({ name: "test", clock, metrics }), metrics, clock };
}

async function metricValue(metrics: ReturnType<typeof createRuntimeMetrics>, name: string): Promise<number> {
  const metric = await metrics.registry.getSingleMetric(name)?.get();
  return metric?.values.find((v) => v.labels.name === "test" && !("le" in v.labels))?.value ?? 0;
}

describe("work queue", () => {
  it("hands out a key added many times while waiting only once", async () => {
    const { queue, metrics } = newQueue();
    for (let i = 0; i < 5; i++) queue.add("ns/a");
    queue.add("ns/b");
    expect(queue.len()).toBe(2);
    expect((await queue.get()).key).toBe("ns/a");
    expect((await queue.get()).key).toBe("ns/b");
    expect(queue.len()).toBe(0);
    expect(await metricValue(metrics, "workqueue_adds_total")).toBe(2);
  });

  it("never hands one key to two workers at once, and re-queues a key re-added during processing", async () => {
    const { queue, metrics } = newQueue();
    const keys = ["a", "b", "c", "d"];
    const active = new Set<string>();
    let overlaps = 0;
    const processed: string[] = [];
    let adds = 0;
    const worker = async () => {
      for (;;) {
        const item = await queue.get();
        if (item.shutdown) return;
        if (active.has(item.key)) overlaps++;
        active.add(item.key);
        processed.push(item.key);
        // Re-add other keys (and this one) while it is being processed.
        if (adds < 200) {
          adds++;
          queue.add(item.key);
          queue.add(keys[adds % keys.length]);
        }
        await new Promise((resolve) => setImmediate(resolve));
        active.delete(item.key);
        queue.done(item.key);
      }
    };
    for (const key of keys) queue.add(key);
    const workers = Array.from({ length: 6 }, worker);
    while (adds < 200 || queue.len() > 0) await new Promise((resolve) => setImmediate(resolve));
    await queue.shutDownWithDrain();
    await Promise.all(workers);
    expect(overlaps).toBe(0);
    expect(processed.length).toBeGreaterThan(100);
    const histogramCount = async (name: string) => {
      const samples = (await metrics.registry.getSingleMetric(name)?.get())?.values ?? [];
      return (samples as { metricName?: string; value: number }[]).find(
        (v) => v.metricName === `${name}_count`,
      )?.value;
    };
    expect(await histogramCount("workqueue_queue_duration_seconds")).toBe(processed.length);
    expect(await histogramCount("workqueue_work_duration_seconds")).toBe(processed.length);
    // Every key re-added while processing came back after done.
    for (const key of keys) expect(processed.filter((k) => k === key).length).toBeGreaterThan(1);
  });

  it("backs off 5, 10, 20 ms... per key up to a cap, and starts over after forget", () => {
    const backoff = new ExponentialBackoff({ baseMs: 5, maxMs: 5 * 60_000 });
    const delays = Array.from({ length: 18 }, () => backoff.when("k"));
    expect(delays.slice(0, 5)).toEqual([5, 10, 20, 40, 80]);
    expect(delays[15]).toBe(163_840);
    expect(delays[16]).toBe(300_000);
    expect(delays[17]).toBe(300_000);
    expect(backoff.when("other")).toBe(5);
    expect(backoff.numRequeues("k")).toBe(18);
    backoff.forget("k");
    expect(backoff.when("k")).toBe(5);
  });

  it("makes a rate-limited key available only after its backoff has elapsed on the clock", async () => {
    const { queue, clock, metrics } = newQueue();
    queue.addRateLimited("k");
    queue.addRateLimited("k"); // second failure: 10 ms, but the earlier 5 ms schedule wins
    expect(clock.pendingSleeps()).toEqual([5]);
    await clock.advance(4);
    expect(queue.len()).toBe(0);
    await clock.advance(1);
    expect(queue.len()).toBe(1);
    expect((await queue.get()).key).toBe("k");
    queue.done("k");
    queue.addRateLimited("k"); // third failure
    expect(clock.pendingSleeps()).toEqual([20]);
    queue.forget("k");
    queue.addRateLimited("k");
    expect(clock.pendingSleeps()).toContain(5);
    expect(await metricValue(metrics, "workqueue_retries_total")).toBe(4);
  });

  it("adds a key after the delay given to addAfter, the earliest schedule winning", async () => {
    const { queue, clock } = newQueue();
    queue.addAfter("k", 1000);
    queue.addAfter("k", 300);
    queue.addAfter("k", 2000);
    await clock.advance(299);
    expect(queue.len()).toBe(0);
    await clock.advance(1);
    expect(queue.len()).toBe(1);
    await clock.advance(2000);
    expect(queue.len()).toBe(1);
    expect((await queue.get()).key).toBe("k");
  });

  it("hands out waiting keys and waits for in-flight ones when shut down with drain", async () => {
    const { queue } = newQueue();
    queue.add("a");
    queue.add("b");
    const first = await queue.get();
    const drained = queue.shutDownWithDrain();
    let isDrained = false;
    drained.then(() => {
      isDrained = true;
    });
    queue.add("c"); // refused: shutting down
    const second = await queue.get();
    expect(second.key).toBe("b");
    expect((await queue.get()).shutdown).toBe(true);
    queue.done("a");
    await settle();
    expect(isDrained).toBe(false);
    queue.done(second.key!);
    await drained;
    expect(first.key).toBe("a");
  });

  it("drops waiting keys and releases every waiting worker on shutDown", async () => {
    const { queue } = newQueue();
    const waiting = queue.get();
    queue.shutDown();
    expect((await waiting).shutdown).toBe(true);
    queue.add("a");
    expect((await queue.get()).shutdown).toBe(true);
  });
});
