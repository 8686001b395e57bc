import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { definedMetricNames, isDefined, metricNames, promtool } from "../alerts/promql.ts";
import { root } from "../e2e/helpers.ts";

interface Panel {
  title: string;
  type: string;
  panels?: Panel[];
  targets?: { expr: string; refId: string }[];
}
const dashboard = JSON.parse(
  readFileSync(join(root, "charts/stowage/files/dashboards/stowage.json"), "utf8"),
) as {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; query?: string | { query: string } }[] };
};
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const queries = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
const dir = mkdtempSync(join(tmpdir(), "stowage-dashboard-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Grafana's variables replaced by what Grafana would send Prometheus. */
const expand = (expr: string) =>
  expr
    .replaceAll("$__rate_interval", "5m")
    .replaceAll("$__interval", "1m")
    .replaceAll("$namespace", "ml|default")
    .replaceAll("$node", "gpu-1");

describe("Grafana dashboard", () => {
  it("has every query parse as PromQL (promtool check rules on a rule file of the queries)", async () => {
    expect(queries.length).toBeGreaterThan(15);
    const file = join(dir, "dashboard-queries.yaml");
    writeFileSync(
      file,
      stringify({
        groups: [
          {
            name: "dashboard-queries",
            rules: queries.map((q, i) => ({ record: `dashboard:query_${i}`, expr: expand(q.expr) })),
          },
        ],
      }),
    );
    const result = await promtool(["check", "rules", file]);
    expect(result.output).toContain(`SUCCESS: ${queries.length} rules found`);
  });

  it("reads only metrics the code defines, including variable queries", () => {
    const defined = definedMetricNames();
    const variableQueries = dashboard.templating.list
      .map((v) => (typeof v.query === "object" ? v.query.query : undefined))
      .filter((q): q is string => q?.startsWith("label_values(") ?? false)
      .map((q) => /label_values\(([\w:]+)/.exec(q)?.[1] ?? "");
    const used = [...queries.flatMap((q) => metricNames(expand(q.expr))), ...variableQueries];
    expect(used.filter((name) => !isDefined(name, defined))).toEqual([]);
  });

  it("shows sync lag, sync throughput, pre-warm progress per ModelImage and node, and queue health", () => {
    const reads = (metric: string) => queries.filter((q) => q.expr.includes(metric)).map((q) => q.panel);
    expect(reads("stowage_modelimage_sync_lag_seconds")).not.toEqual([]);
    expect(reads("stowage_sync_bytes_total")).not.toEqual([]);
    expect(reads("stowage_sync_total")).not.toEqual([]);
    expect(
      queries.some((q) => /stowage_prewarm_nodes/.test(q.expr) && /by \(namespace, name/.test(q.expr)),
    ).toBe(true);
    expect(queries.some((q) => /stowage_nodecache_images/.test(q.expr) && /by \(node/.test(q.expr))).toBe(
      true,
    );
    expect(reads("workqueue_depth")).not.toEqual([]);
    expect(reads("workqueue_retries_total")).not.toEqual([]);
  });

  it("shows the cache front's hits and misses by kind, bytes by source, single flight, stale tags, eviction and garbage collection", () => {
    const reads = (metric: string) => queries.filter((q) => q.expr.includes(metric)).map((q) => q.panel);
    for (const metric of [
      "stowage_cache_hits_total",
      "stowage_cache_misses_total",
      "stowage_cache_served_bytes_total",
      "stowage_cache_upstream_bytes_total",
      "stowage_cache_singleflight_waiters",
      "stowage_cache_stale_tags_total",
      "stowage_cache_fetch_failures_total",
      "stowage_cache_undeclared_bytes",
      "stowage_cache_registry_gc_runs_total",
      "stowage_cache_registry_read_only",
    ])
      expect(reads(metric), metric).not.toEqual([]);
    expect(queries.some((q) => /stowage_cache_hits_total/.test(q.expr) && /by \(kind\)/.test(q.expr))).toBe(
      true,
    );
    expect(
      queries.some((q) => /stowage_cache_served_bytes_total/.test(q.expr) && /by \(source\)/.test(q.expr)),
    ).toBe(true);
  });

  it("shows per node the pre-warmed images something other than the agent evicted, and which are pinned", () => {
    for (const metric of ["stowage_agent_images_evicted_total", "stowage_agent_images_pinned"])
      expect(
        queries.some((q) => q.expr.includes(metric) && /by \(node/.test(q.expr)),
        metric,
      ).toBe(true);
  });

  it("is shipped in a ConfigMap the Grafana sidecar picks up", () => {
    const template = readFileSync(join(root, "charts/stowage/templates/dashboard-configmap.yaml"), "utf8");
    expect(template).toContain('.Files.Get "files/dashboards/stowage.json"');
    expect(template.split("\n")[0]).toContain(".Values.dashboard.enabled");
    const values = readFileSync(join(root, "charts/stowage/values.yaml"), "utf8");
    expect(values).toMatch(/labels:\n\s+grafana_dashboard: "1"/);
  });
});
