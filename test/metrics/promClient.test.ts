import * as promClientIndex from "prom-client";
import { describe, expect, it } from "vitest";
import { createRegistry, createRuntimeMetrics, promClient } from "../../src/metrics.ts";

// src/metrics.ts requires prom-client's classes from their own files to keep its index (and
// @opentelemetry/api) out of the agent; an upgrade that moves or splits them must fail here.
describe("prom-client loaded file by file", () => {
  it("gives the very classes the package's index exports", () => {
    expect(promClient.Registry).toBe(promClientIndex.Registry);
    expect(promClient.Counter).toBe(promClientIndex.Counter);
    expect(promClient.Gauge).toBe(promClientIndex.Gauge);
    expect(promClient.Histogram).toBe(promClientIndex.Histogram);
  });

  it("collects Node's default process metrics on a registry", async () => {
    const registry = createRegistry();
    promClient.collectDefaultMetrics({ register: registry });
    const text = await registry.metrics();
    expect(text).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(text).toMatch(/^nodejs_heap_size_used_bytes \d/m);
  });

  it("exposes Stowage's metrics in the Prometheus text format", async () => {
    const metrics = createRuntimeMetrics();
    metrics.reconcileTotal.inc({ controller: "modelimage", result: "success" });
    expect(await metrics.registry.metrics()).toContain(
      'controller_reconcile_total{controller="modelimage",result="success"} 1',
    );
  });
});
