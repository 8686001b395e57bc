/**
 * Helpers for tests that check PromQL the chart ships: metric names an expression reads, the
 * metric names the code defines, and running promtool.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { collectDefaultMetrics, Registry } from "prom-client";
import { root } from "../e2e/helpers.ts";

const keywords = new Set([
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "bool",
  "and",
  "or",
  "unless",
  "offset",
  "inf",
  "nan",
  "le",
]);

/** Metric names an expression selects (identifiers that are not functions, keywords or labels). */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // string literals
    .replace(/\{[^}]*\}/g, "") // label matchers
    .replace(/\[[^\]]*\]/g, "") // ranges
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ""); // label lists
  const names = new Set<string>();
  for (const match of stripped.matchAll(/[A-Za-z_:][\w:]*(?=\s*(\(|\b))/g)) {
    const after = stripped.slice((match.index ?? 0) + match[0].length).trimStart();
    if (after.startsWith("(")) continue; // function or aggregation
    if (keywords.has(match[0].toLowerCase())) continue;
    names.add(match[0]);
  }
  return [...names];
}

/** Every metric name the code defines: src/metrics.ts plus prom-client's default process metrics. */
export function definedMetricNames(): Set<string> {
  const source = readFileSync(join(root, "src/metrics.ts"), "utf8");
  const names = new Set([...source.matchAll(/name:\s*"([A-Za-z_:][\w:]*)"/g)].map((m) => m[1]));
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  for (const metric of registry.getMetricsAsArray()) names.add(metric.name);
  return names;
}

/** Whether `name` is a defined metric or a histogram/summary series of one; `up` is Prometheus's own. */
export function isDefined(name: string, defined: Set<string>): boolean {
  if (name === "up" || defined.has(name)) return true;
  const base = name.replace(/_(bucket|sum|count)$/, "");
  return defined.has(base);
}

export function promtool(args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile("/usr/bin/promtool", args, { timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}
