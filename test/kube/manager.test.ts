import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KubeClient } from "../../src/kube/client.ts";
import { done } from "../../src/kube/controller.ts";
import { Manager } from "../../src/kube/manager.ts";
import { createRuntimeMetrics } from "../../src/metrics.ts";
import {
  createNamespace,
  createWidgetCrd,
  eventually,
  startCluster,
  type TestCluster,
  WidgetType,
} from "./helpers.ts";

let cluster: TestCluster;
let client: KubeClient;

beforeAll(async () => {
  ({ cluster, client } = await startCluster());
  await createNamespace(client, "health");
});

afterAll(async () => {
  await cluster?.stop();
});

describe("manager", () => {
  it("serves /healthz, /readyz once informers synced, and /metrics from its registry", async () => {
    const reconciled: string[] = [];
    const manager = new Manager({
      client,
      metrics: createRuntimeMetrics(),
      healthPort: 0,
      healthHost: "127.0.0.1",
    });
    // The Widget CRD does not exist yet: the informer's list fails and it keeps retrying.
    const widgets = manager.addInformer({
      type: WidgetType,
      namespace: "health",
      backoff: { initialMs: 20, maxMs: 200 },
    });
    manager
      .addController({
        name: "health-test",
        reconcile: async (key) => {
          reconciled.push(key);
          return done();
        },
      })
      .watches(widgets);
    await manager.start();
    const { port } = manager.healthAddress!;
    const get = (path: string) => fetch(`http://127.0.0.1:${port}${path}`);
    expect((await get("/healthz")).status).toBe(200);
    const notReady = await get("/readyz");
    expect(notReady.status).toBe(503);
    expect(await notReady.text()).toContain("widgets.test.stowage.dev");

    await createWidgetCrd(client);
    await client.resource(WidgetType).create({ metadata: { name: "w1", namespace: "health" } });
    await eventually("ready", async () => (await get("/readyz")).status === 200);
    await eventually("reconciled", () => reconciled.includes("health/w1"));
    const metrics = await (await get("/metrics")).text();
    expect(metrics).toContain('controller_reconcile_total{controller="health-test",result="success"} 1');
    expect(metrics).toMatch(/stowage_informer_restarts_total\{resource="widgets.test.stowage.dev"\} [1-9]/);
    expect(metrics).toContain('workqueue_adds_total{name="health-test"} 1');
    await manager.stop();
    await expect(get("/healthz")).rejects.toThrow();
  });

  it("reports not ready while a reconcile ignores its deadline and holds a worker, and ready once it ends", async () => {
    await client.resource(WidgetType).create({ metadata: { name: "wedged", namespace: "health" } });
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let started = false;
    const manager = new Manager({
      client,
      metrics: createRuntimeMetrics(),
      healthPort: 0,
      healthHost: "127.0.0.1",
    });
    const widgets = manager.addInformer({ type: WidgetType, namespace: "health" });
    manager
      .addController({
        name: "wedge-test",
        reconcileTimeoutMs: 100,
        stuckGraceMs: 100,
        // Ignores ctx.budget: as a call without a deadline into a peer that never answers would.
        reconcile: async (key) => {
          if (key !== "health/wedged") return done();
          started = true;
          await held;
          return done();
        },
      })
      .watches(widgets);
    await manager.start();
    const get = (path: string) => fetch(`http://127.0.0.1:${manager.healthAddress!.port}${path}`);
    await eventually("the reconcile started", () => started);
    await eventually(
      "readiness reports the wedged reconcile",
      async () => (await get("/readyz")).status === 503,
    );
    expect(await (await get("/readyz")).text()).toContain("wedge-test health/wedged");
    expect((await get("/healthz")).status).toBe(200);
    release();
    await eventually("ready again", async () => (await get("/readyz")).status === 200);
    await manager.stop();
  });
});
