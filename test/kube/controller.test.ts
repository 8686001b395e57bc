import { pino } from "pino";
import { describe, expect, it } from "vitest";
import {
  budgetReason,
  Controller,
  done,
  type EventHandler,
  type EventSource,
  type KeyedObject,
  requeueAfter,
} from "../../src/kube/controller.ts";
import { createRuntimeMetrics, type RuntimeMetrics } from "../../src/metrics.ts";
import { StowageError } from "../../src/util/errors.ts";
import { FakeClock, settle } from "./fakeClock.ts";

/** An in-memory event source shaped like an informer. */
class TestSource<T> implements EventSource<T> {
  handlers = new Set<EventHandler<T>>();
  addEventHandler(handler: EventHandler<T>): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }
  add(obj: T) {
    for (const h of this.handlers) h.add?.(obj);
  }
}

function obj(name: string, namespace?: string): KeyedObject {
  return { metadata: { name, namespace } };
}

async function counter(
  metrics: RuntimeMetrics,
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const metric = await metrics.registry.getSingleMetric(name)?.get();
  return (
    metric?.values
      .filter((v) => Object.entries(labels).every(([k, value]) => v.labels[k] === value))
      .reduce((sum, v) => sum + v.value, 0) ?? 0
  );
}

describe("controller loop", () => {
  it("reconciles every object the primary source reports, by namespace/name key", async () => {
    const metrics = createRuntimeMetrics();
    const seen: string[] = [];
    const source = new TestSource<KeyedObject>();
    const controller = new Controller({
      name: "test",
      workers: 3,
      metrics,
      reconcile: async (key) => {
        seen.push(key);
        return done();
      },
    }).watches(source);
    controller.start();
    source.add(obj("a", "ns1"));
    source.add(obj("b", "ns2"));
    source.add(obj("node-1"));
    await settle();
    await controller.stop();
    expect(seen.sort()).toEqual(["node-1", "ns1/a", "ns2/b"]);
    expect(
      await counter(metrics, "controller_reconcile_total", { controller: "test", result: "success" }),
    ).toBe(3);
    const time = await metrics.registry.getSingleMetric("controller_reconcile_time_seconds")?.get();
    expect(
      (time?.values as { metricName?: string; value: number }[] | undefined)?.find(
        (v) => v.metricName === "controller_reconcile_time_seconds_count",
      )?.value,
    ).toBe(3);
  });

  it("maps a secondary source's objects to the primary keys they affect", async () => {
    const seen: string[] = [];
    const primary = new TestSource<KeyedObject>();
    const nodes = new TestSource<KeyedObject>();
    const controller = new Controller({
      name: "fanout",
      metrics: createRuntimeMetrics(),
      reconcile: async (key) => {
        seen.push(key);
        return done();
      },
    })
      .watches(primary)
      .watches(nodes, () => ["ml/llama", "ml/mistral"]);
    controller.start();
    nodes.add(obj("gpu-node-7"));
    await settle();
    await controller.stop();
    expect(seen.sort()).toEqual(["ml/llama", "ml/mistral"]);
  });

  it("retries a failing reconcile with growing backoff and records the error result", async () => {
    const clock = new FakeClock();
    const metrics = createRuntimeMetrics();
    const logLines: Record<string, unknown>[] = [];
    const log = pino({ level: "info" }, { write: (line: string) => logLines.push(JSON.parse(line)) });
    let attempts = 0;
    const controller = new Controller({
      name: "failing",
      workers: 1,
      clock,
      metrics,
      log,
      reconcile: async () => {
        attempts++;
        if (attempts <= 3)
          throw new StowageError("UpstreamUnavailable", "registry down", { retryable: true });
        return done();
      },
    });
    controller.start();
    controller.enqueue("ns/x");
    await settle();
    expect(attempts).toBe(1);
    expect(clock.pendingSleeps()).toEqual([5]);
    await clock.advance(5);
    expect(attempts).toBe(2);
    expect(clock.pendingSleeps()).toEqual([10]);
    await clock.advance(9);
    expect(attempts).toBe(2);
    await clock.advance(1);
    expect(attempts).toBe(3);
    expect(clock.pendingSleeps()).toEqual([20]);
    await clock.advance(20);
    expect(attempts).toBe(4);
    expect(clock.pendingSleeps()).toEqual([]);
    expect(
      await counter(metrics, "controller_reconcile_total", { controller: "failing", result: "error" }),
    ).toBe(3);
    expect(
      await counter(metrics, "controller_reconcile_total", { controller: "failing", result: "success" }),
    ).toBe(1);
    expect(await counter(metrics, "workqueue_retries_total", { name: "failing" })).toBe(3);
    const failures = logLines.filter((l) => l.msg === "reconcile failed");
    expect(failures).toHaveLength(3);
    expect(failures[0]).toMatchObject({ key: "ns/x", reason: "UpstreamUnavailable", error: "registry down" });
    await controller.stop();
  });

  it("reconciles again after the delay a requeueAfter result asks for", async () => {
    const clock = new FakeClock();
    const metrics = createRuntimeMetrics();
    let calls = 0;
    const controller = new Controller({
      name: "periodic",
      clock,
      metrics,
      reconcile: async () => {
        calls++;
        return requeueAfter(60_000);
      },
    });
    controller.start();
    controller.enqueue("k");
    await settle();
    expect(calls).toBe(1);
    await clock.advance(59_999);
    expect(calls).toBe(1);
    await clock.advance(1);
    expect(calls).toBe(2);
    expect(
      await counter(metrics, "controller_reconcile_total", {
        controller: "periodic",
        result: "requeue_after",
      }),
    ).toBe(2);
    await controller.stop();
  });

  it("lets an in-flight reconcile finish on stop, and aborts one that outlives the deadline", async () => {
    const clock = new FakeClock();
    let finished = false;
    let aborted = false;
    let release: () => void = () => {};
    const controller = new Controller({
      name: "slow",
      clock,
      metrics: createRuntimeMetrics(),
      reconcile: async (key, ctx) => {
        if (key === "quick") {
          await new Promise<void>((resolve) => {
            release = resolve;
          });
          finished = true;
          return done();
        }
        await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
        aborted = true;
        return done();
      },
    });
    controller.start();
    controller.enqueue("quick");
    await settle();
    const stopping = controller.stop({ deadlineMs: 1000 });
    release();
    await stopping;
    expect(finished).toBe(true);

    controller.start();
    controller.enqueue("stuck");
    await settle();
    const stoppingStuck = controller.stop({ deadlineMs: 1000 });
    await settle();
    expect(aborted).toBe(false);
    await clock.advance(1000);
    await stoppingStuck;
    expect(aborted).toBe(true);
  });

  it("aborts a reconcile's budget at its deadline or on cancel, leaving its write signal alone", async () => {
    const clock = new FakeClock();
    const why: string[] = [];
    const source = new TestSource<KeyedObject>();
    const controller = new Controller({
      name: "budget",
      clock,
      workers: 2,
      reconcileTimeoutMs: 1_000,
      reconcile: async (_key, ctx) => {
        await new Promise<void>((resolve) => ctx.budget.addEventListener("abort", () => resolve()));
        why.push(`${budgetReason(ctx)} signal=${ctx.signal.aborted}`);
        return done();
      },
    }).watches(source);
    controller.start();
    source.add(obj("slow", "ns"));
    source.add(obj("deleted", "ns"));
    await settle();
    expect(controller.cancel("ns/deleted", "cancelled: the object is being deleted")).toBe(true);
    await settle();
    expect(why).toEqual(["cancelled signal=false"]);
    expect(controller.stuck()).toEqual([]);
    await clock.advance(1_000);
    expect(why).toEqual(["cancelled signal=false", "timeout signal=false"]);
    expect(controller.cancel("ns/slow")).toBe(false); // nothing in flight any more
    await controller.stop({ deadlineMs: 10 });
  });
});
